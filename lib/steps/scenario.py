"""A dataset ready for the defense: its BadNet B loaded as its publisher fed it, and its image sets.

``Scenario`` holds B, loaded safely, given its dataset's input scale (``lib.data.input_scale``) and checked to
have the layers the defense prunes, and loads the run's image sets (``lib.runs.workspace``) validated against
B's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lib.core.errors import InputError
from lib.core.paths import shown
from lib.core.step_names import DATA, notebook_of
from lib.data.catalog import TriggerFiles
from lib.data.datasets import ImageSet, check_clean_validation, check_triggered_labels, load_image_set
from lib.data.input_scale import with_input_scale
from lib.network.architecture import PRUNED_CONV, PRUNED_POOL
from lib.network.models import load_model_file, num_classes_of
from lib.network.prunable import check_prunable
from lib.runs.workspace import Workspace

SPLITS = ("valid", "test")


def _split_path(valid: str, test: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return valid if split == "valid" else test


@dataclass(frozen=True)
class Scenario(Workspace):
    """A run's workspace with its BadNet B loaded, and access to its validated image sets."""

    badnet: keras.Model
    n_classes: int
    conv_layer: str
    pool_layer: str

    def clean_path(self, split: str) -> Path:
        return self.file(_split_path(self.spec.clean_valid, self.spec.clean_test, split))

    def load_clean(self, split: str) -> ImageSet:
        """Clean ``valid`` or ``test`` images, validated against B's classes (validation: at least two classes)."""
        images = load_image_set(self.clean_path(split), num_classes=self.n_classes)
        if split == "valid":
            check_clean_validation(images)
        return images

    @property
    def triggers(self) -> list[TriggerFiles]:
        """The triggers whose poisoned data is here (an optional one may be missing)."""
        return [t for t in self.spec.triggers if self.file(t.valid).is_file() and self.file(t.test).is_file()]

    def triggered_paths(self, split: str) -> dict[str, Path]:
        return {t.name: self.file(_split_path(t.valid, t.test, split)) for t in self.triggers}

    def load_triggered(self, split: str, clean: ImageSet | None = None) -> dict[str, ImageSet]:
        """Each available trigger's ``valid`` or ``test`` images, labelled with the attacker's target.

        A set whose labels do not look like attack targets gets a warning (its ASR would mean nothing);
        where the dataset pairs them with the clean images (loaded if not given), they are compared too.
        """
        sets = {name: load_image_set(p, num_classes=self.n_classes) for name, p in self.triggered_paths(split).items()}
        if self.spec.paired and sets and clean is None:
            clean = self.load_clean(split)
        for s in sets.values():
            check_triggered_labels(s, clean if self.spec.paired else None)
        return sets

    def input_files(self, split: str) -> list[Path]:
        """B and the image sets of one split: what a step reading that split depends on."""
        return [self.badnet_path, self.clean_path(split), *self.triggered_paths(split).values()]

    def limitations(self) -> list[str]:
        """What this dataset cannot show, in words for the notebooks."""
        notes = []
        if not self.spec.triggers:
            notes.append(
                f"{self.dataset}: no poisoned data was published for this BadNet, "
                "so the attack success rate is not measured (NaN)"
            )
        for t in self.spec.triggers:
            if t not in self.triggers:
                notes.append(
                    f"{self.dataset}: the poisoned data of trigger {t.name!r} is not in {shown(self.data)}/, "
                    "so its attack success rate is not measured"
                )
        if any(t.valid == t.test for t in self.triggers):
            notes.append(
                f"{self.dataset}: only one poisoned file per trigger was published, so the sweep's ASR curve reads "
                "the same file as the test table (it chooses nothing: B' is chosen on clean validation accuracy)"
            )
        return notes


def load_scenario(
    ws: Workspace,
    conv_layer: str = PRUNED_CONV,
    pool_layer: str = PRUNED_POOL,
    allow_unsafe_layers: bool = False,
) -> Scenario:
    """Load B from the data folder, fed as its publisher fed it, and check it has the layers the defense prunes."""
    missing = [p for p in ws.required_files() if not p.is_file()]
    if missing:
        raise InputError(
            missing[0],
            "file not found",
            f"run {notebook_of(DATA)} first with {ws.notebook_parameters} (`make data {ws.make_target}`)",
        )
    model = load_model_file(ws.badnet_path, allow_unsafe_layers=allow_unsafe_layers)
    model = with_input_scale(model, ws.spec.input_scale, ws.badnet_path)
    check_prunable(model, conv_layer, pool_layer, ws.badnet_path)
    return Scenario(ws.spec, ws.data, ws.results, model, num_classes_of(model), conv_layer, pool_layer)


def load_all_sets(scenario: Scenario) -> dict[str, ImageSet]:
    """Every image set of the run, validated, by role: ``clean valid``, ``clean test``, ``<trigger> valid``..."""
    sets = {"clean valid": scenario.load_clean("valid"), "clean test": scenario.load_clean("test")}
    for split in SPLITS:
        triggered = scenario.load_triggered(split, sets[f"clean {split}"])
        sets.update({f"{name} {split}": s for name, s in triggered.items()})
    return sets


def image_set_overview(scenario: Scenario, sets: dict[str, ImageSet] | None = None) -> pd.DataFrame:
    """One row per image set: its role, file, number of images and of distinct labels (``sets``: already loaded)."""
    sets = sets if sets is not None else load_all_sets(scenario)
    return pd.DataFrame(
        [
            {
                "set": role,
                "file": s.path.relative_to(scenario.data).as_posix(),
                "images": len(s),
                "distinct labels": len(np.unique(s.labels)),
            }
            for role, s in sets.items()
        ]
    )
