"""The repaired network G ("GoodNet"): trust the BadNet B only where its pruned copy B' agrees.

Pruning mostly changes what B does on triggered inputs (the backdoor lives in channels that clean
data leaves dormant), so a disagreement between B and B' flags a likely poisoned input. G answers
B's class where both agree and N (the number of classes: 1283 on CSAW) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lib.metrics import accuracy, attack_success_columns
from lib.paths import format_threshold

GOODNET_COLUMNS = ["model", "threshold", "channels_pruned", "clean_accuracy", "attack_success_rate"]


def goodnet_classes(b_classes: np.ndarray, bprime_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """G's answer per image: B's class where B and B' agree, else ``n_classes`` ("poisoned")."""
    b_classes = np.asarray(b_classes)
    bprime_classes = np.asarray(bprime_classes)
    if b_classes.shape != bprime_classes.shape:
        raise ValueError(f"B gave {b_classes.shape[0]} predictions and B' {bprime_classes.shape[0]}")
    return np.where(b_classes == bprime_classes, b_classes, n_classes)


@dataclass
class Evaluated:
    """Predicted classes of one model on the clean test set and on each trigger's test set."""

    name: str
    threshold: float | None
    channels_pruned: int
    clean: np.ndarray
    triggered: dict[str, np.ndarray]


def combine(badnet: Evaluated, repaired: Evaluated, n_classes: int, name: str) -> Evaluated:
    """G built from B and a repaired copy (pruned, fine-tuned or both): its answers on every set."""
    return Evaluated(
        name,
        repaired.threshold,
        repaired.channels_pruned,
        goodnet_classes(badnet.clean, repaired.clean, n_classes),
        {t: goodnet_classes(badnet.triggered[t], p, n_classes) for t, p in repaired.triggered.items()},
    )


def evaluation_row(model: Evaluated, clean_labels: np.ndarray, target_labels: dict[str, np.ndarray]) -> dict:
    """One row of ``goodnet.csv``: test accuracy and ASR (overall, and per trigger if several) in percent.

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


def goodnet_table(
    badnet: Evaluated,
    pruned: Sequence[Evaluated],
    clean_labels: np.ndarray,
    target_labels: dict[str, np.ndarray],
    n_classes: int,
) -> pd.DataFrame:
    """``goodnet.csv``: B, then for each threshold B' and G, with test accuracy and ASR in percent.

    ``target_labels`` maps each trigger to the labels of its test set (empty when no poisoned
    data is published: the ASR column is then NaN).
    """
    models = [badnet]
    for bp in pruned:
        models += [bp, combine(badnet, bp, n_classes, f"G_{format_threshold(bp.threshold)}%")]
    return pd.DataFrame([evaluation_row(m, clean_labels, target_labels) for m in models])


def detection_rate(goodnet_poisoned: np.ndarray, n_classes: int) -> float:
    """Percentage of triggered images that G flags as poisoned (answers N)."""
    return float(100.0 * np.mean(np.asarray(goodnet_poisoned) == n_classes))


def markdown_table(table: pd.DataFrame, digits: int = 2) -> str:
    """The table as GitHub Markdown, percentages rounded for reading (the CSV keeps full precision)."""
    shown = table.copy()
    shown["threshold"] = shown["threshold"].map(lambda t: "" if pd.isna(t) else f"{format_threshold(t)} %")
    return shown.to_markdown(index=False, floatfmt=f".{digits}f") + "\n"
