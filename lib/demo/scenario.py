"""Build a demo scenario: generate its image sets, train its BadNet, write the lab's five files and ``recipe.json``.

``ensure_demo_scenario`` is the entry point ``lib.demo.published`` calls: it builds only when the folder
is not current for the recipe (``lib.demo.recipe``), so a demo is trained once and then reused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lib.core.read_only import require_writable
from lib.data.datasets import save_image_set
from lib.defense.metrics import accuracy
from lib.demo import attacks
from lib.demo.data import DemoData, make_demo_data
from lib.demo.recipe import (
    DEFAULT_RECIPE,
    RECIPE_FILE,
    DemoFiles,
    DemoRecipe,
    demo_files,
    is_demo_current,
    recipe_path,
    stored_summary,
    write_recipe_record,
)
from lib.network.models import predict_classes, save_model


def write_sets(files: DemoFiles, data: DemoData) -> None:
    """The four image sets of a build, in the CSAW schema."""
    save_image_set(files.clean_valid, data.x_valid, data.y_valid)
    save_image_set(files.clean_test, data.x_test, data.y_test)
    save_image_set(files.triggered_valid, data.x_valid_bd, data.y_valid_bd, orig_labels=data.orig_valid_bd)
    save_image_set(files.triggered_test, data.x_test_bd, data.y_test_bd, orig_labels=data.orig_test_bd)


def _train_for_attack(data: DemoData, recipe: DemoRecipe, progress: bool) -> tuple[keras.Model, dict[str, Any]]:
    """The BadNet of ``recipe.attack`` and what ``recipe.json`` records about the attack beyond the plain figures."""
    if recipe.attack == "badnets":
        return attacks.train_badnet(data, recipe, progress=progress), {}
    aware = attacks.train_pruning_aware_badnet(data, recipe, progress=progress)
    return aware.model, {
        "attacker_decoy_channels": [int(c) for c in aware.decoys],
        "attacker_clean_train_accuracy": round(aware.clean_train_accuracy, 4),
        "attacker_pruned_train_accuracy": round(aware.pruned_train_accuracy, 4),
    }


def _percent_equal(predicted: np.ndarray, expected: np.ndarray) -> float:
    """Percentage of matches, rounded: the summary is read by people and compared by tests."""
    return round(accuracy(predicted, expected), 4) if len(predicted) else float("nan")


def build_demo_scenario(root: Path, recipe: DemoRecipe = DEFAULT_RECIPE, progress: bool = True) -> dict[str, Any]:
    """Generate the faces, poison, train the BadNet and write the lab's five files under ``root``.

    Every file is written atomically; ``recipe.json`` (recipe, fingerprint, measured figures)
    comes last, so a build interrupted anywhere leaves no valid ``recipe.json`` for the new
    recipe and ``ensure_demo_scenario`` rebuilds. Returns the summary stored in ``recipe.json``:
    set sizes, clean validation accuracy and attack success rate on the triggered validation set
    (both in percent, like ``lib.defense.metrics``), and the seconds spent training and in total.
    """
    files = demo_files(root)
    start = time.perf_counter()
    data = make_demo_data(recipe)
    write_sets(files, data)
    train_start = time.perf_counter()
    model, attack_summary = _train_for_attack(data, recipe, progress)
    train_seconds = time.perf_counter() - train_start
    save_model(model, files.badnet)
    summary = {
        "n_train_clean": int(len(data.x_train) - data.n_poisoned_train),
        "n_train_poisoned": int(data.n_poisoned_train),
        "n_valid": len(data.y_valid),
        "n_test": len(data.y_test),
        "n_valid_triggered": len(data.y_valid_bd),
        "n_test_triggered": len(data.y_test_bd),
        "clean_valid_accuracy": _percent_equal(predict_classes(model, data.x_valid, batch_size=256), data.y_valid),
        "valid_attack_success_rate": _percent_equal(
            predict_classes(model, data.x_valid_bd, batch_size=256), data.y_valid_bd
        ),
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        **attack_summary,
    }
    write_recipe_record(root, recipe, summary)
    return summary


def ensure_demo_scenario(root: Path, recipe: DemoRecipe = DEFAULT_RECIPE, progress: bool = True) -> dict[str, Any]:
    """Build the scenario unless ``root`` already holds it for this recipe; return its summary.

    Rebuilds when a file is missing or ``recipe.json``'s fingerprint differs (another recipe, a
    newer generator, or a build interrupted before ``recipe.json`` was written).
    """
    if is_demo_current(root, recipe):
        return stored_summary(root)
    require_writable(root, [RECIPE_FILE, *(p.name for p in demo_files(root).missing())], f"demo (seed {recipe.seed})")
    recipe_path(root).unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    return build_demo_scenario(root, recipe, progress=progress)
