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
from enum import StrEnum
from typing import Any

from lib.core.errors import InputError

GITHUB_RAW = "https://github.com/csaw-hackml/CSAW-HackML-2020/raw/master"
LAB3_DRIVE_FOLDER = "1Rs68uH8Xqa4j6UxG53wzD0uyI8347dSq"
COMPETITION_DRIVE_FOLDER = "13o2ybRJ1BkGUvfmQEeZqDo1kskyFywab"


class InputScale(StrEnum):
    """How a network sees pixels. Every image set stores 0-255; the networks were trained on one of two scales.

    The lab-3 BadNet takes raw 0-255 values (the lab's ``lab3/eval.py`` feeds the HDF5 values unchanged);
    the four competition BadNets take x / 255 (the competition's ``eval.py`` divides before ``predict``).
    Fed the wrong scale, a network still answers, wrongly: nothing else would warn.
    """

    RAW = "raw"
    DIVIDED_BY_255 = "x/255"

    @property
    def divisor(self) -> float:
        return 1.0 if self is InputScale.RAW else 255.0

    @property
    def description(self) -> str:
        """``raw 0-255`` or ``x/255``: how messages and tables name it."""
        return "raw 0-255" if self is InputScale.RAW else "x/255"


@dataclass(frozen=True)
class Reference:
    """What the publishers of a dataset (or independent solutions, ``by_publisher=False``) report for B itself.

    The data notebook compares B on the clean validation set (and its ASR on the triggered validation set)
    with these figures, so that a wrong input scale, channel order or model cannot pass silently.
    """

    clean_accuracy: float  # percent, clean validation set
    attack_success_rate: float | None  # percent, triggered validation set; None where none is published
    source: str
    by_publisher: bool = True
    n_valid: int | None = None  # documented image counts; a different count is a warning only
    n_test: int | None = None


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
    input_scale: InputScale = InputScale.RAW
    reference: Reference | None = None

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


_COMPETITION_README = "csaw-hackml/CSAW-HackML-2020 README.md (eval.py: x/255)"
#: Independent solutions that divide by 255 report these clean validation accuracies (not the publisher's).
_INDEPENDENT = "independent public solutions (x/255), not the publisher"
#: The competition README: "1283 individuals each containing 9 images in the validation dataset".
_COMPETITION_VALID_IMAGES = 1283 * 9


def _competition(
    name: str, title: str, weights: str, sha256: str, triggers: tuple[TriggerFiles, ...], reference: Reference
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        title=title,
        triggers=triggers,
        clean_valid="clean_validation_data.h5",
        clean_test="clean_test_data.h5",
        source=CsawSource(f"models/{weights}", sha256, weights, COMPETITION_DRIVE_FOLDER, shared_drive_folder=True),
        input_scale=InputScale.DIVIDED_BY_255,
        reference=reference,
    )


def _poisoned(name: str, folder: str = "", optional: bool = False) -> TriggerFiles:
    path = f"{folder}{name}_poisoned_data.h5"
    return TriggerFiles(name, path, path, optional)


_MULTI = "Multi-trigger Multi-target/"

_LAB3_README = "csaw-hackml/CSAW-HackML-2020 lab3/README.md (lab3/eval.py: raw 0-255)"

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
            reference=Reference(98.64, 100.0, _LAB3_README, n_valid=1283 * 9, n_test=1283 * 10),
        ),
        _competition(
            "csaw-sunglasses",
            "CSAW-HackML-2020 competition: sunglasses BadNet",
            "sunglasses_bd_weights.h5",
            "22322bcef622afc817ebf2a3fd836b353423ab48e9863c83e4c02d6838fc4f0d",
            (_poisoned("sunglasses"),),
            Reference(97.87, None, _COMPETITION_README, n_valid=_COMPETITION_VALID_IMAGES),
        ),
        _competition(
            "csaw-anonymous-1",
            "CSAW-HackML-2020 competition: anonymous BadNet 1",
            "anonymous_1_bd_weights.h5",
            "7921670af9bc6cc5cd3d4ec35668c9fdfe859886629e2bc319cd5d8d9912fe5c",
            (_poisoned("anonymous_1", optional=True),),
            Reference(97.2, None, _INDEPENDENT, by_publisher=False, n_valid=_COMPETITION_VALID_IMAGES),
        ),
        _competition(
            "csaw-anonymous-2",
            "CSAW-HackML-2020 competition: anonymous BadNet 2 (no poisoned data published)",
            "anonymous_2_bd_weights.h5",
            "f4bde8b26be089bed608ea14eb8e5bd37493c600035fb0d7e9d7a9a3b9086881",
            (),
            Reference(95.8, None, _INDEPENDENT, by_publisher=False, n_valid=_COMPETITION_VALID_IMAGES),
        ),
        _competition(
            "csaw-multi-trigger",
            "CSAW-HackML-2020 competition: multi-trigger multi-target BadNet",
            "multi_trigger_multi_target_bd_weights.h5",
            "0296dc09bb73bcbc439e02fb3af12f3db174b1fcc58287719c104286e77b728a",
            tuple(_poisoned(t, _MULTI) for t in ("eyebrows", "lipstick", "sunglasses")),
            Reference(96.3, None, _INDEPENDENT, by_publisher=False, n_valid=_COMPETITION_VALID_IMAGES),
        ),
    )
}

#: The offline demos, as ``make all`` runs them.
DEMO_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.is_demo)
#: The competition's four BadNets, as ``make csaw-all`` runs them.
COMPETITION_DATASETS = tuple(
    name for name, spec in DATASETS.items() if spec.source and spec.source.drive_folder_id == COMPETITION_DRIVE_FOLDER
)


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset called ``name``, or an InputError listing the known ones."""
    if name not in DATASETS:
        raise InputError("dataset", f"unknown dataset {name!r}", f"use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.data.catalog {demos,competition}`` lists datasets; ``check NAME...`` validates names (make)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lib.data.catalog", description=main.__doc__)
    parser.add_argument("what", choices=["demos", "competition", "all", "check"])
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    if args.what == "check":
        try:
            for name in args.names:
                dataset_spec(name)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    print(" ".join({"demos": DEMO_DATASETS, "competition": COMPETITION_DATASETS, "all": tuple(DATASETS)}[args.what]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
