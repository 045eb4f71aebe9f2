"""Fixed seeds and deterministic TensorFlow ops: the same command gives the same numbers."""

from __future__ import annotations

import os

DEFAULT_SEED = 1234


def make_deterministic(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and switch TensorFlow to deterministic ops.

    Call once at the top of every notebook and before any training. Op determinism makes
    reductions run in a fixed order, so a rerun reproduces the CSVs byte for byte.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PYTHONHASHSEED"] = str(seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
