"""The DeepID-style BadNet as a Keras model: its architecture, loading and saving, whether it can be pruned, pruning."""
