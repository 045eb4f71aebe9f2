"""The repaired network G ("GoodNet") and the test-data evaluation of every model the defense compares.

Pruning mostly changes what B does on triggered inputs (the backdoor lives in channels that clean
data leaves dormant), so a disagreement between B and B' flags a likely poisoned input. G answers
B's class where both agree and N (the number of classes: 1283 on CSAW) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from lib.core import rows
from lib.core.rows import ModelRow
from lib.data.datasets import ImageSet
from lib.defense.metrics import accuracy, attack_success_columns, near_ties

#: The columns of goodnet.csv and fine_pruning.csv (a dataset with several triggers adds per-trigger ASR).
MODEL_COLUMNS = ["model", "threshold", "channels_pruned", "clean_accuracy", "attack_success_rate"]


def goodnet_classes(b_classes: np.ndarray, bprime_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """G's answer per image: B's class where B and B' agree, else ``n_classes`` ("poisoned")."""
    b_classes = np.asarray(b_classes)
    bprime_classes = np.asarray(bprime_classes)
    if b_classes.shape != bprime_classes.shape:
        raise ValueError(f"B gave {b_classes.shape[0]} predictions and B' {bprime_classes.shape[0]}")
    return np.where(b_classes == bprime_classes, b_classes, n_classes)


@dataclass
class TestData:
    """The clean test set and each available trigger's test set (labelled with the attacker's target)."""

    clean: ImageSet
    triggered: dict[str, ImageSet]

    @property
    def target_labels(self) -> dict[str, np.ndarray]:
        return {t: s.labels for t, s in self.triggered.items()}


@dataclass
class Evaluated:
    """Predicted classes of one model on the clean test set and on each trigger's test set."""

    name: str
    threshold: float | None
    channels_pruned: int
    clean: np.ndarray
    triggered: dict[str, np.ndarray]
    #: Images whose two best scores were within the tie margin: the classes another processor could flip.
    near_ties: int = 0


def evaluate(model: keras.Model, row: ModelRow, pruned: int, test: TestData, batch_size: int) -> Evaluated:
    """One model's classes on the clean test set and on every trigger's test set, and how many were near ties."""
    scores = {name: model.predict(s.images, batch_size=batch_size, verbose=0) for name, s in test.triggered.items()}
    clean = model.predict(test.clean.images, batch_size=batch_size, verbose=0)
    ties = int(near_ties(clean).sum() + sum(int(near_ties(s).sum()) for s in scores.values()))
    classes = {name: np.argmax(s, axis=-1) for name, s in scores.items()}
    return Evaluated(row.name, row.threshold, pruned, np.argmax(clean, axis=-1), classes, ties)


def combine(badnet: Evaluated, repaired: Evaluated, n_classes: int, name: str) -> Evaluated:
    """G built from B and a repaired copy (pruned, fine-tuned or both): its answers on every set."""
    return Evaluated(
        name,
        repaired.threshold,
        repaired.channels_pruned,
        goodnet_classes(badnet.clean, repaired.clean, n_classes),
        {t: goodnet_classes(badnet.triggered[t], p, n_classes) for t, p in repaired.triggered.items()},
    )


def goodnet_of(badnet: Evaluated, repaired: Evaluated, row: ModelRow, n_classes: int) -> Evaluated:
    """The GoodNet of B and the repaired model evaluated as ``row``, named as its row says."""
    return combine(badnet, repaired, n_classes, row.goodnet_of().name)


def evaluation_row(model: Evaluated, clean_labels: np.ndarray, target_labels: dict[str, np.ndarray]) -> dict:
    """One table row: test accuracy and ASR (overall, and per trigger if several) in percent.

    Attack success counts triggered images classified as the target; G's N answer is a detection.
    """
    asr = attack_success_columns({t: (model.triggered[t], target_labels[t]) for t in target_labels})
    return {
        "model": model.name,
        "threshold": model.threshold,
        "channels_pruned": model.channels_pruned,
        "clean_accuracy": accuracy(model.clean, clean_labels),
        **{k: float(v) for k, v in asr.items()},
    }


def evaluation_table(
    models: Sequence[Evaluated], clean_labels: np.ndarray, target_labels: dict[str, np.ndarray]
) -> pd.DataFrame:
    """``goodnet.csv`` / ``fine_pruning.csv``: one row per model, test accuracy and ASR in percent.

    ``target_labels`` maps each trigger to the labels of its test set (empty when no poisoned data is
    published: the ASR column is then NaN). No models (a run without thresholds): the columns alone.
    """
    if not models:
        return pd.DataFrame(columns=["model", "threshold", "channels_pruned", "clean_accuracy", "attack_success_rate"])
    return pd.DataFrame([evaluation_row(m, clean_labels, target_labels) for m in models])


def goodnet_table(
    badnet: Evaluated,
    pruned: Sequence[Evaluated],
    clean_labels: np.ndarray,
    target_labels: dict[str, np.ndarray],
    n_classes: int,
) -> pd.DataFrame:
    """``goodnet.csv``: B, then for each threshold B' and its GoodNet G (``lib.core.rows`` names them)."""
    models = [badnet]
    for bp in pruned:
        models += [bp, goodnet_of(badnet, bp, rows.pruned(bp.threshold), n_classes)]
    return evaluation_table(models, clean_labels, target_labels)


def detection_rate(goodnet_poisoned: np.ndarray, n_classes: int) -> float:
    """Percentage of triggered images that G flags as poisoned (answers N)."""
    return float(100.0 * np.mean(np.asarray(goodnet_poisoned) == n_classes))
