"""The sweep table (``sweep.csv``) from the engine's predictions, and the steps at which accuracy drops."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lib.core.errors import InputError
from lib.defense.metrics import attack_success_columns

if TYPE_CHECKING:
    from lib.sweep.engine import SweepEngine


@dataclass
class SweepResult:
    """The sweep table (``sweep.csv``) and the predictions behind it."""

    table: pd.DataFrame
    clean_predictions: np.ndarray
    #: Per trigger, (steps + 1, n_images) predicted classes on its triggered validation set.
    triggered_predictions: dict[str, np.ndarray]
    order: np.ndarray
    clean_correct: np.ndarray = field(repr=False)
    n_clean: int = 0
    #: Evaluations whose class the Keras tail settled at the image's reference place (two best scores too close
    #: for any other computation to decide): the only ones another processor's rounding could answer otherwise.
    near_ties: int = 0


def sweep_table(
    clean_predictions: np.ndarray,
    clean_labels: np.ndarray,
    triggered: Mapping[str, tuple[np.ndarray, np.ndarray]],
    order: Sequence[int],
    mean_activations: np.ndarray,
) -> pd.DataFrame:
    """The ``sweep.csv`` table: one row per step, accuracy and attack success rate in percent.

    ``triggered`` maps each trigger to its (steps + 1, n) predictions and its target labels.
    """
    n_channels = len(mean_activations)
    order = np.asarray(order, dtype=np.int64)
    clean_acc = 100.0 * (clean_predictions == clean_labels[None, :]).mean(axis=1)
    steps = np.arange(len(order) + 1)
    return pd.DataFrame(
        {
            "pruned": steps,
            "fraction": steps / n_channels,
            "channel": pd.array([pd.NA, *order.tolist()], dtype="Int64"),
            "mean_activation": [np.nan, *np.asarray(mean_activations, dtype=np.float64)[order].tolist()],
            "clean_accuracy": clean_acc,
            **attack_success_columns({name: (p, np.asarray(y)[None, :]) for name, (p, y) in triggered.items()}),
        }
    )


def run_pruning_sweep(
    engine: SweepEngine,
    clean_pooled: np.ndarray,
    clean_labels: np.ndarray,
    triggered: Mapping[str, tuple[np.ndarray, np.ndarray]],
    mean_activations: np.ndarray,
    order: Sequence[int],
    progress: bool = True,
) -> SweepResult:
    """Sweep clean and every triggered validation set together (one engine pass) and tabulate it.

    ``triggered`` maps each trigger's name to (its cached pooling activations, its target labels);
    it may be empty.
    """
    names = list(triggered)
    run = engine.run([clean_pooled, *(triggered[n][0] for n in names)], order, progress=progress)
    predictions = run.predictions
    clean_preds, triggered_preds = predictions[0], dict(zip(names, predictions[1:], strict=False))
    clean_labels = np.asarray(clean_labels)
    table = sweep_table(
        clean_preds,
        clean_labels,
        {n: (triggered_preds[n], np.asarray(triggered[n][1])) for n in names},
        order,
        mean_activations,
    )
    correct = (clean_preds == clean_labels[None, :]).sum(axis=1)
    return SweepResult(
        table, clean_preds, triggered_preds, np.asarray(order), correct, len(clean_pooled), run.stats.near_ties
    )


def validate_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Accuracy-drop thresholds in percentage points: each in (0, 100), strictly increasing."""
    values = [float(t) for t in thresholds]
    if not values:
        raise InputError("thresholds", "no threshold given", "pass e.g. thresholds=[2, 4, 10]")
    if any(not 0 < t < 100 for t in values):
        raise InputError(
            "thresholds",
            f"{values} has values outside (0, 100)",
            "give accuracy drops in percentage points, e.g. [2, 4, 10]",
        )
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise InputError("thresholds", f"{values} is not strictly increasing", "sort the thresholds, e.g. [2, 4, 10]")
    return values


def threshold_steps(clean_correct: np.ndarray, n_clean: int, thresholds: Sequence[float]) -> dict[float, int | None]:
    """For each threshold t, the first step at which clean accuracy has dropped by at least t points.

    Computed on correct-image counts with exact rational arithmetic, so a drop of exactly t points
    counts (float percentages could put it a hair either side). None where the sweep never gets there.
    """
    base = int(clean_correct[0])
    result: dict[float, int | None] = {}
    for t in validate_thresholds(thresholds):
        needed = Fraction(str(t)) * n_clean / 100  # images lost
        hits = [k for k, c in enumerate(clean_correct) if base - int(c) >= needed]
        result[t] = hits[0] if hits else None
    return result
