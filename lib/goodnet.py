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

from lib.metrics import accuracy, attack_success_rate
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
    """Predicted classes of one model on the clean and the triggered test set."""

    name: str
    threshold: float | None
    channels_pruned: int
    clean: np.ndarray
    poisoned: np.ndarray


def goodnet_table(
    badnet: Evaluated, pruned: Sequence[Evaluated], clean_labels: np.ndarray, target_labels: np.ndarray, n_classes: int
) -> pd.DataFrame:
    """``goodnet.csv``: B, then for each threshold B' and G, with test accuracy and ASR in percent.

    Attack success counts triggered images classified as the target; G's N answer is a detection.
    """
    rows = [_row("B", None, 0, badnet.clean, badnet.poisoned, clean_labels, target_labels)]
    for bp in pruned:
        t = format_threshold(bp.threshold)
        rows.append(_row(f"B'_{t}%", bp.threshold, bp.channels_pruned, bp.clean, bp.poisoned, clean_labels, target_labels))
        g_clean = goodnet_classes(badnet.clean, bp.clean, n_classes)
        g_poisoned = goodnet_classes(badnet.poisoned, bp.poisoned, n_classes)
        rows.append(_row(f"G_{t}%", bp.threshold, bp.channels_pruned, g_clean, g_poisoned, clean_labels, target_labels))
    return pd.DataFrame(rows, columns=GOODNET_COLUMNS)


def _row(name, threshold, pruned, clean, poisoned, clean_labels, target_labels) -> dict:
    return {
        "model": name,
        "threshold": threshold,
        "channels_pruned": pruned,
        "clean_accuracy": accuracy(clean, clean_labels),
        "attack_success_rate": attack_success_rate(poisoned, target_labels),
    }


def detection_rate(goodnet_poisoned: np.ndarray, n_classes: int) -> float:
    """Percentage of triggered images that G flags as poisoned (answers N)."""
    return float(100.0 * np.mean(np.asarray(goodnet_poisoned) == n_classes))


def markdown_table(table: pd.DataFrame, digits: int = 2) -> str:
    """The table as GitHub Markdown, percentages rounded for reading (the CSV keeps full precision)."""
    shown = table.copy()
    shown["threshold"] = shown["threshold"].map(lambda t: "" if pd.isna(t) else f"{format_threshold(t)} %")
    return shown.to_markdown(index=False, floatfmt=f".{digits}f") + "\n"
