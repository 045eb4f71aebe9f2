"""Fixed seeds and deterministic TensorFlow ops: the same command gives the same numbers."""

from __future__ import annotations

import contextlib
import os

DEFAULT_SEED = 1234


def make_deterministic(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and switch TensorFlow to deterministic ops.

    Call once at the top of every notebook and before any training. Op determinism makes
    reductions run in a fixed order, so a rerun reproduces the CSVs byte for byte. On a GPU, TF32 is
    switched off and memory is taken as needed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PYTHONHASHSEED"] = str(seed)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    # On recent NVIDIA GPUs TensorFlow multiplies float32 matrices in TF32 (10-bit mantissas) by default: the
    # sweep's exactness and its near-tie margin assume float32 arithmetic.
    tf.config.experimental.enable_tensor_float_32_execution(False)
    # GPU memory taken as needed, so that other notebooks and study workers can share a GPU (a GPU already in use
    # keeps its setting: growth can only be chosen before).
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
