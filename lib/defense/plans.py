"""Defenses that prune by a ranking of their own (CLP's Lipschitz z-scores, ANP's masks), held to B's budgets.

A ranking's cut points give nested plans (layer -> neurons to zero). ``scan_plans`` measures each on clean
validation data until the accuracy has dropped by more than the largest budget; ``choose_within_budgets`` keeps,
per budget t, the largest pruning whose drop stays within t points, none at all if need be (B'_t% is the lab's
other rule, the first model whose drop reaches t); ``evaluate_plans`` measures the kept plans on test data.
Test data never chooses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

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

#: A plan: layer name -> the neurons (conv channels or dense units) it zeroes.
Plan = Mapping[str, np.ndarray]


def scan_plans(
    model: keras.Model,
    plans: Iterable[tuple[dict[str, Any], Plan]],
    clean_valid: tuple[np.ndarray, np.ndarray],
    triggered_valid: tuple[np.ndarray, np.ndarray] | None,
    n_neurons: int,
    max_drop: float = 100.0,
    batch_size: int = 1024,
    keep_bias: bool = False,
    desc: str = "scan on validation data",
    total: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per plan, in order: its ``setting`` columns, ``channels_pruned``, ``clean_correct``,
    ``clean_accuracy``, ``attack_success_rate`` and ``fraction`` (of the ``n_neurons`` the ranking covers).

    The plans must be nested, each containing the one before (one working copy is pruned further at each, so
    predict traces once). The scan stops at the first plan whose clean accuracy is more than ``max_drop``
    points below the first plan's (counted in images, exactly). The triggered images are only measured, never
    used to choose; without them (no poisoned data published) the ASR is NaN, as in ``sweep.csv``.
    """
    images, labels = clean_valid
    pruned = copy_model(model)
    rows, base, allowed = [], None, Fraction(str(max_drop)) * len(labels) / 100  # images the scan may lose
    for setting, plan in tqdm(plans, desc=desc, total=total, disable=not progress, leave=False):
        n_pruned = zero_plan(pruned, plan, keep_bias=keep_bias)
        correct = int(np.sum(predict_classes(pruned, images, batch_size) == labels))
        base = correct if base is None else base
        row = {**setting, "channels_pruned": n_pruned}
        row |= {"clean_correct": correct, "clean_accuracy": 100.0 * correct / len(labels)}
        row["attack_success_rate"] = (
            np.nan
            if triggered_valid is None
            else accuracy(predict_classes(pruned, triggered_valid[0], batch_size), triggered_valid[1])
        )
        rows.append(row)
        if base - correct > allowed:
            break
    table = pd.DataFrame(rows)
    table["fraction"] = table["channels_pruned"] / n_neurons
    return table


def choose_within_budgets(scan: pd.DataFrame, thresholds: Sequence[float], n_clean: int) -> dict[float, int]:
    """Per budget t, the row of ``scan`` kept: the last before the clean validation accuracy drop first exceeds
    t points, so the largest pruning whose drop stays within t. On counts of the ``n_clean`` images, exactly: a
    drop of exactly t stays. Row 0 (nothing pruned: B itself) where the first pruning already exceeds t: that is
    the defender's answer then, and a study must count it, not lose the run (only the runs where the defense
    could prune would remain, and its paired contrasts would flatter it)."""
    correct = scan["clean_correct"].to_numpy()
    chosen: dict[float, int] = {}
    for t in thresholds:
        allowed = Fraction(str(t)) * n_clean / 100  # images that may be lost
        over = np.flatnonzero([int(correct[0]) - int(c) > allowed for c in correct])
        chosen[float(t)] = (int(over[0]) - 1) if len(over) else len(scan) - 1
    return chosen


def evaluate_plans(
    model: keras.Model,
    plans: Mapping[ModelRow, Plan],
    test: TestData,
    batch_size: int = 1024,
    keep_bias: bool = False,
) -> list[Evaluated]:
    """Each plan's repaired model on the test sets, as ``row``: one working copy of ``model`` pruned in turn, so
    that Keras traces its predict step once (a model per plan would retrace, with TensorFlow's warnings)."""
    work, original = copy_model(model), model.get_weights()
    evaluated = []
    with no_retracing_advice():  # one trace per batch shape and model still adds up to TensorFlow's warning
        for row, plan in plans.items():
            work.set_weights(original)
            evaluated.append(evaluate(work, row, zero_plan(work, plan, keep_bias=keep_bias), test, batch_size))
    return evaluated
