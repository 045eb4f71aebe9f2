"""Clean accuracy and attack success rate, in percent, from predicted classes.

Attack success counts triggered images classified as the attacker's target. A GoodNet answer
of N ("poisoned") is a detected attack, never a success, and on clean data it is an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of images whose predicted class equals the label."""
    predicted = np.asarray(predicted)
    labels = np.asarray(labels)
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.shape[0]} predictions for {labels.shape[0]} labels")
    if labels.size == 0:
        return float("nan")
    return float(100.0 * np.mean(predicted == labels))


#: Relative gap between the two best scores under which a class is a near tie (``lib.sweep.engine`` explains the value).
DEFAULT_TIE_MARGIN = 1e-3


def near_ties(scores: np.ndarray, margin: float = DEFAULT_TIE_MARGIN) -> np.ndarray:
    """Rows whose two best scores s1 >= s2 are within ``margin`` of each other: s1 - s2 <= margin * (|s1| + |s2|).

    Float rounding of another batch layout or another processor moves scores far less than the margin, so
    only these rows' classes could come out otherwise (``lib.sweep.engine`` settles them exactly).
    """
    top2 = -np.partition(-np.asarray(scores), 1, axis=-1)[..., :2].astype(np.float64)
    return top2[..., 0] - top2[..., 1] <= margin * (np.abs(top2[..., 0]) + np.abs(top2[..., 1]))


def attack_success_rate(predicted: np.ndarray, target_labels: np.ndarray) -> float:
    """Percentage of triggered images classified as the attacker's target (their label)."""
    return accuracy(predicted, target_labels)


def attack_success_columns(triggered: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray | float]:
    """ASR in percent over all triggered images together, and per trigger when there are several.

    ``triggered`` maps a trigger's name to (predictions, target labels); predictions may carry a
    leading step axis (images are the last axis). With no triggered data at all (a BadNet whose poisoned data was never
    published) the ASR is NaN: not measured, rather than zero.
    """
    if not triggered:
        return {"attack_success_rate": np.nan}
    hits = {name: (np.asarray(p) == np.asarray(y)) for name, (p, y) in triggered.items()}
    columns: dict[str, np.ndarray | float] = {
        "attack_success_rate": 100.0 * np.concatenate(list(hits.values()), axis=-1).mean(axis=-1)
    }
    if len(hits) > 1:
        columns.update({f"attack_success_rate_{name}": 100.0 * h.mean(axis=-1) for name, h in hits.items()})
    return columns
