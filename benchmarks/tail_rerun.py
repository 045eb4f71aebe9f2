"""The benchmark's baseline: the cached prefix, then the whole Keras tail on every image at every step.

What a plain cached-prefix sweep costs: the layers up to the pooling layer once, then per step the
tail sub-model on every reference batch (the batches ``model.predict(images, batch_size)`` forms),
the pruned channels masked. Exact for the same reason as the engine's Keras path (``lib.sweep.engine``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from lib.network.models import BATCH_SIZE
from lib.sweep.engine import tail_model


def tail_rerun_predictions(
    model: keras.Model,
    pool_layer: str,
    pooled_sets: Sequence[np.ndarray],
    order: Sequence[int],
    batch_size: int = BATCH_SIZE,
) -> list[np.ndarray]:
    """Predicted classes for each set, (len(order) + 1, n_set): row k with ``order[:k]`` pruned."""
    tail = tail_model(model, pool_layer)
    result = []
    for pooled in pooled_sets:
        keep = np.ones(pooled.shape[-1], dtype=np.float32)
        out = np.empty((len(order) + 1, len(pooled)), dtype=np.int64)
        for k in range(len(order) + 1):
            if k:
                keep[order[k - 1]] = 0.0
            for lo in range(0, len(pooled), batch_size):
                out[k, lo : lo + batch_size] = np.argmax(tail.predict_on_batch(pooled[lo : lo + batch_size] * keep), -1)
        result.append(out)
    return result
