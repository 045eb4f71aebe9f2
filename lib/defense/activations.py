"""Activation analysis: what every channel of the last pooling layer does on clean data.

Channels that stay (near) zero on clean images are "dormant": the network does not use them for
its normal task, and a backdoor can hide in them. The pruning defense removes channels in
increasing order of their mean activation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lib.data.datasets import count_images, iter_image_batches
from lib.network.models import BATCH_SIZE, sub_model


def prefix_model(model: keras.Model, pool_layer: str) -> keras.Model:
    """The sub-network from the input up to ``pool_layer``'s output (built once per model and layer)."""
    return sub_model(model, model.inputs, model.get_layer(pool_layer).output, f"prefix_to_{pool_layer}")


def pool_activations(
    model: keras.Model,
    images: np.ndarray | str | Path,
    pool_layer: str,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    desc: str = "pool activations",
) -> np.ndarray:
    """Output of ``pool_layer`` for every image, float32 (N, H, W, C), computed batch by batch.

    ``images`` is an (N, 55, 47, 3) array or the path of an HDF5 set; from a path only one batch
    of images is in memory at a time.
    """
    prefix = prefix_model(model, pool_layer)
    if isinstance(images, (str, Path)):
        total = count_images(images)
        batches: Iterable[np.ndarray] = iter_image_batches(images, batch_size)
    else:
        total = len(images)
        batches = (images[i : i + batch_size] for i in range(0, total, batch_size))
    out = np.empty((total, *prefix.output.shape[1:]), dtype=np.float32)
    start = 0
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in batches:
            acts = prefix.predict_on_batch(batch)
            out[start : start + len(batch)] = acts
            start += len(batch)
            bar.update(len(batch))
    return out


def mean_channel_activations(activations: np.ndarray) -> np.ndarray:
    """Mean of each channel over images and positions, (C,) float64 (summed in float64: order-independent enough
    to be reproducible).
    """
    return activations.astype(np.float64).mean(axis=tuple(range(activations.ndim - 1)))


def pruning_order(mean_activations: np.ndarray) -> np.ndarray:
    """Channel indices in increasing order of mean activation; ties keep channel order (stable sort)."""
    return np.argsort(np.asarray(mean_activations), kind="stable")


def activation_table(mean_activations: np.ndarray, dormant_below: float = 0.0) -> pd.DataFrame:
    """One row per channel in pruning order: ``rank``, ``channel``, ``mean_activation``, ``dormant``.

    A channel is dormant when its mean activation is ``<= dormant_below`` (0: never fires).
    """
    means = np.asarray(mean_activations, dtype=np.float64)
    order = pruning_order(means)
    return pd.DataFrame(
        {
            "rank": np.arange(len(order)),
            "channel": order,
            "mean_activation": means[order],
            "dormant": means[order] <= dormant_below,
        }
    )
