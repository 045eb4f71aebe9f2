"""Every dataset the pipeline knows: the files that make it up and where they come from.

A dataset is a BadNet B (``bd_net.h5``), clean validation and test sets, and for each trigger of
the attack a triggered validation and test set, all under ``data/<dataset>/``:

* ``demo``, ``demo-pruning-aware``: built offline by ``lib.demo`` (the second with the adaptive
  attack of the Fine-Pruning paper), in the lab-3 layout;
* ``csaw-lab3``: the lab-3 BadNet and its four sets (Google Drive + GitHub), lab-3 layout;
* ``csaw-sunglasses``, ``csaw-anonymous-1``, ``csaw-anonymous-2``, ``csaw-multi-trigger``: the
  four BadNets of the CSAW-HackML-2020 competition, in the competition's layout
  (``clean_validation_data.h5``, ``clean_test_data.h5``, ``<trigger>_poisoned_data.h5``).

The competition published one poisoned file per trigger (test images with the trigger), none for
validation: the sweep's ASR curve then reads that file too. It is a diagnostic only: the
pruned models are chosen on clean validation accuracy, so test data still chooses nothing.
The poisoned data of ``csaw-anonymous-1`` may or may not be in the Drive folder (it was added to
it later) and that of ``csaw-anonymous-2`` was never published: the pipeline then measures
clean accuracy only and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.errors import InputError

GITHUB_RAW = "https://github.com/csaw-hackml/CSAW-HackML-2020/raw/master"
LAB3_DRIVE_FOLDER = "1Rs68uH8Xqa4j6UxG53wzD0uyI8347dSq"
COMPETITION_DRIVE_FOLDER = "13o2ybRJ1BkGUvfmQEeZqDo1kskyFywab"


@dataclass(frozen=True)
class TriggerFiles:
    """The triggered validation and test sets of one trigger, relative to the dataset folder."""

    name: str
    valid: str
    test: str
    #: Not part of every copy of the published data: without it the pipeline skips this trigger.
    optional: bool = False


@dataclass(frozen=True)
class CsawSource:
    """Where one real BadNet and its image sets are published."""

    weights_path: str  # path in the public GitHub repository
    weights_sha256: str  # from the repository's files (shared/csaw-models/SHA256SUMS)
    mirror_name: str  # file name in a local mirror folder such as shared/csaw-models
    drive_folder_id: str
    #: Several datasets download the same Drive folder: keep one copy and link its files.
    shared_drive_folder: bool = False

    @property
    def weights_url(self) -> str:
        return f"{GITHUB_RAW}/{self.weights_path}"

    @property
    def drive_folder_url(self) -> str:
        return f"https://drive.google.com/drive/folders/{self.drive_folder_id}"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its files (relative to ``data/<name>/``) and how to obtain them."""

    name: str
    title: str
    triggers: tuple[TriggerFiles, ...]
    clean_valid: str = "cl/valid.h5"
    clean_test: str = "cl/test.h5"
    badnet: str = "bd_net.h5"
    #: Triggered sets are the clean sets with the trigger added, image for image (same sizes).
    paired: bool = False
    demo_recipe: dict[str, Any] | None = field(default=None, hash=False)
    source: CsawSource | None = None

    @property
    def is_demo(self) -> bool:
        return self.demo_recipe is not None

    def image_files(self) -> list[str]:
        """Every image set's relative path, clean first, each once (a poisoned file may serve both splits)."""
        paths = [self.clean_valid, self.clean_test]
        for t in self.triggers:
            paths += [t.valid, t.test]
        return list(dict.fromkeys(paths))

    def optional_files(self) -> set[str]:
        return {p for t in self.triggers if t.optional for p in (t.valid, t.test)}


_LAB_SUNGLASSES = TriggerFiles("sunglasses", "bd/bd_valid.h5", "bd/bd_test.h5")


def _competition(name: str, title: str, weights: str, sha256: str, triggers: tuple[TriggerFiles, ...]) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        title=title,
        triggers=triggers,
        clean_valid="clean_validation_data.h5",
        clean_test="clean_test_data.h5",
        source=CsawSource(f"models/{weights}", sha256, weights, COMPETITION_DRIVE_FOLDER, shared_drive_folder=True),
    )


def _poisoned(name: str, folder: str = "", optional: bool = False) -> TriggerFiles:
    path = f"{folder}{name}_poisoned_data.h5"
    return TriggerFiles(name, path, path, optional)


_MULTI = "Multi-trigger Multi-target/"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "demo", "offline demo: synthetic faces, BadNets sunglasses attack", (_LAB_SUNGLASSES,), demo_recipe={}
        ),
        DatasetSpec(
            "demo-pruning-aware",
            "offline demo: synthetic faces, pruning-aware sunglasses attack",
            (_LAB_SUNGLASSES,),
            demo_recipe={"attack": "pruning-aware"},
        ),
        DatasetSpec(
            "csaw-lab3",
            "CSAW-HackML-2020 lab 3 BadNet (sunglasses)",
            (_LAB_SUNGLASSES,),
            paired=True,
            source=CsawSource(
                "lab3/models/bd_weights.h5",
                "68ec7afdfc570d39acbded72025fe37d4d14e770585001d75a393490d50fc629",
                "lab3_bd_weights.h5",
                LAB3_DRIVE_FOLDER,
            ),
        ),
        _competition(
            "csaw-sunglasses",
            "CSAW-HackML-2020 competition: sunglasses BadNet",
            "sunglasses_bd_weights.h5",
            "22322bcef622afc817ebf2a3fd836b353423ab48e9863c83e4c02d6838fc4f0d",
            (_poisoned("sunglasses"),),
        ),
        _competition(
            "csaw-anonymous-1",
            "CSAW-HackML-2020 competition: anonymous BadNet 1",
            "anonymous_1_bd_weights.h5",
            "7921670af9bc6cc5cd3d4ec35668c9fdfe859886629e2bc319cd5d8d9912fe5c",
            (_poisoned("anonymous_1", optional=True),),
        ),
        _competition(
            "csaw-anonymous-2",
            "CSAW-HackML-2020 competition: anonymous BadNet 2 (no poisoned data published)",
            "anonymous_2_bd_weights.h5",
            "f4bde8b26be089bed608ea14eb8e5bd37493c600035fb0d7e9d7a9a3b9086881",
            (),
        ),
        _competition(
            "csaw-multi-trigger",
            "CSAW-HackML-2020 competition: multi-trigger multi-target BadNet",
            "multi_trigger_multi_target_bd_weights.h5",
            "0296dc09bb73bcbc439e02fb3af12f3db174b1fcc58287719c104286e77b728a",
            tuple(_poisoned(t, _MULTI) for t in ("eyebrows", "lipstick", "sunglasses")),
        ),
    )
}

#: The competition's four BadNets, as ``make csaw-all`` runs them.
COMPETITION_DATASETS = ("csaw-sunglasses", "csaw-anonymous-1", "csaw-anonymous-2", "csaw-multi-trigger")


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset called ``name``, or an InputError listing the known ones."""
    if name not in DATASETS:
        raise InputError("dataset", f"unknown dataset {name!r}", f"use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_folder(spec: DatasetSpec, data_root: Path) -> Path:
    return Path(data_root) / spec.name
