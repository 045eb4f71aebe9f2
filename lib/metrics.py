"""Clean accuracy and attack success rate, in percent, from predicted classes.

Attack success counts triggered images classified as the attacker's target. A GoodNet answer
of N ("poisoned") is a detected attack, never a success, and on clean data it is an error.
"""
from __future__ import annotations

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


def attack_success_rate(predicted: np.ndarray, target_labels: np.ndarray) -> float:
    """Percentage of triggered images classified as the attacker's target (their label)."""
    return accuracy(predicted, target_labels)
