"""The five steps of the defense, one module each; ``lib.pipeline`` lists them."""
