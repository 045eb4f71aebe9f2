"""Channel Lipschitzness-based pruning (CLP): which channels to prune, read from the weights alone.

Zheng, Zhang, Wu and Li, *Data-free backdoor removal based on channel Lipschitzness*, ECCV 2022. A channel
that a trigger drives hard has a large Lipschitz constant; its upper bound is the spectral norm of the channel's
kernel. CLP prunes, in every convolution, the channels whose bound exceeds mean + u x std of their layer.

Adapted to these networks: they have no batch normalisation, so the bound is the spectral norm of the kernel
itself (the paper multiplies in BN's scale), taken as CLP's code does, over the channel's kernel reshaped to
(input channels, kh x kw); the spread is the sample standard deviation (``torch.std``'s). Pruning zeroes the
channel's kernel and bias (``lib.network.pruning.zero_plan``), where the paper zeroes BN's scale and shift.

The paper fixes u = 3 (data-free). Chosen instead on clean validation data with the budgets of B': the channels'
z-scores order them, lowering u prunes them in that order, and each budget t keeps the largest pruning whose
validation accuracy drop stays within t points, scanning until the drop first exceeds it (``lib.defense.plans``,
which ANP shares). Test data never enters.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd

from lib.defense import plans

#: The convolutions of the DeepID networks, every one of which CLP prunes.
CONV_LAYERS = ("conv_1", "conv_2", "conv_3", "conv_4")


def channel_bounds(model: keras.Model, layers: Sequence[str] = CONV_LAYERS) -> pd.DataFrame:
    """One row per channel of each conv layer: ``layer, channel, bound`` (its Lipschitz upper bound) and ``z``
    (``(bound - mean) / std`` over its layer), sorted by ``z`` from the largest: the order CLP prunes in."""
    tables = []
    for name in layers:
        kernel = np.asarray(model.get_layer(name).kernel.numpy(), dtype=np.float64)  # (kh, kw, in, out)
        per_channel = np.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[3], kernel.shape[2], -1)
        bound = np.linalg.norm(per_channel, ord=2, axis=(1, 2))  # largest singular value of each (in, kh*kw)
        z = (bound - bound.mean()) / bound.std(ddof=1)
        tables.append(pd.DataFrame({"layer": name, "channel": np.arange(len(bound)), "bound": bound, "z": z}))
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["z", "layer", "channel"], ascending=[False, True, True], ignore_index=True)


def channels_above(bounds: pd.DataFrame, u: float) -> dict[str, np.ndarray]:
    """Per layer, the channels CLP prunes at ``u``: those with z > u."""
    chosen = bounds[bounds["z"] > u]
    return {
        name: np.sort(chosen.loc[chosen["layer"] == name, "channel"].to_numpy()) for name in bounds["layer"].unique()
    }


def scan_u(
    model: keras.Model,
    bounds: pd.DataFrame,
    clean_valid: tuple[np.ndarray, np.ndarray],
    triggered_valid: tuple[np.ndarray, np.ndarray] | None = None,
    max_drop: float = 100.0,
    batch_size: int = 1024,
    progress: bool = True,
) -> pd.DataFrame:
    """Clean validation accuracy (and, to show, the ASR on triggered validation images) as u is lowered past
    each distinct z-score, from nothing pruned until the accuracy has dropped by more than ``max_drop`` points
    (``lib.defense.plans.scan_plans``). Row k prunes every channel with z above its ``u`` (the next z-score
    down; -inf after the last)."""
    z_values = np.unique(bounds["z"].to_numpy())[::-1]  # distinct, largest first
    cut_points = [np.inf, *z_values[1:], -np.inf]  # u just at the next z: prunes every channel above it
    return plans.scan_plans(
        model,
        (({"u": u}, channels_above(bounds, u)) for u in cut_points),
        clean_valid,
        triggered_valid,
        n_neurons=len(bounds),
        max_drop=max_drop,
        batch_size=batch_size,
        desc="CLP: u on validation data",
        total=len(cut_points),
        progress=progress,
    )
