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
validation accuracy drop stays within t points, scanning until the drop first exceeds it (``choose_u``; B'_t%
is the lab's other rule, the first model whose drop reaches t). Test data never enters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lib.core.quiet import no_retracing_advice
from lib.core.rows import ModelRow
from lib.defense.goodnet import Evaluated, TestData, evaluate
from lib.defense.metrics import accuracy
from lib.network.models import copy_model, predict_classes
from lib.network.pruning import zero_plan

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
    each distinct z-score, from nothing pruned until the accuracy has dropped by more than ``max_drop`` points.

    Row k prunes every channel with z above its ``u`` (the next z-score down; -inf after the last). The
    triggered images are only measured, never used to choose.
    """
    images, labels = clean_valid
    z_values = np.unique(bounds["z"].to_numpy())[::-1]  # distinct, largest first
    cut_points = [np.inf, *z_values[1:], -np.inf]  # u just at the next z: prunes every channel above it
    pruned = copy_model(model)  # one copy, pruned further at each u (the sets are nested): predict traces once
    rows, base, allowed = [], None, Fraction(str(max_drop)) * len(labels) / 100  # images the scan may lose
    for u in tqdm(cut_points, desc="CLP: u on validation data", disable=not progress, leave=False):
        n_pruned = zero_plan(pruned, channels_above(bounds, u))
        correct = int(np.sum(predict_classes(pruned, images, batch_size) == labels))
        base = correct if base is None else base
        row = {"u": u, "channels_pruned": n_pruned}
        row |= {"clean_correct": correct, "clean_accuracy": 100.0 * correct / len(labels)}
        row["attack_success_rate"] = (  # NaN where no poisoned data was published, as in sweep.csv
            np.nan
            if triggered_valid is None
            else accuracy(predict_classes(pruned, triggered_valid[0], batch_size), triggered_valid[1])
        )
        rows.append(row)
        if base - correct > allowed:
            break
    table = pd.DataFrame(rows)
    table["fraction"] = table["channels_pruned"] / len(bounds)
    return table


def choose_u(scan: pd.DataFrame, thresholds: Sequence[float], n_clean: int) -> dict[float, int | None]:
    """Per budget t, the row of ``scan`` CLP keeps: the last before the clean validation accuracy drop first
    exceeds t points, so the largest pruning whose drop stays within t; None where the first channel already
    exceeds it (row 0 is B itself). On counts of the ``n_clean`` images, exactly: a drop of exactly t stays."""
    correct = scan["clean_correct"].to_numpy()
    chosen: dict[float, int | None] = {}
    for t in thresholds:
        allowed = Fraction(str(t)) * n_clean / 100  # images that may be lost
        over = np.flatnonzero([int(correct[0]) - int(c) > allowed for c in correct])
        last = (int(over[0]) - 1) if len(over) else len(scan) - 1
        chosen[float(t)] = last if last > 0 else None
    return chosen


def evaluate_plans(
    model: keras.Model, plans: Mapping[ModelRow, Mapping[str, np.ndarray]], test: TestData, batch_size: int = 1024
) -> list[Evaluated]:
    """Each plan's repaired model on the test sets, as ``row``: one working copy of ``model`` pruned in turn, so
    that Keras traces its predict step once (a model per plan would retrace, with TensorFlow's warnings)."""
    work, original = copy_model(model), model.get_weights()
    evaluated = []
    with no_retracing_advice():  # one trace per batch shape and model still adds up to TensorFlow's warning
        for row, plan in plans.items():
            work.set_weights(original)
            evaluated.append(evaluate(work, row, zero_plan(work, plan), test, batch_size))
    return evaluated
