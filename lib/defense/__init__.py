"""The defense's measurements and repairs: activations, accuracy and ASR, the GoodNet, fine-tuning."""
