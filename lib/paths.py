"""Where things live. One place, so notebooks, Makefile and tests agree on the layout.

``data/<dataset>/`` holds a dataset's inputs (never written by the analysis steps); which files,
``lib.catalog`` says. The demos and lab 3 use the lab's layout (``DatasetFiles``)::

    cl/valid.h5  cl/test.h5  bd/bd_valid.h5  bd/bd_test.h5  bd_net.h5

``results/<dataset>/`` holds what the pipeline computes: ``sweep.csv``, ``goodnet.csv``,
``goodnet.md``, ``activations.csv``, ``fine_pruning.csv``, ``figures/*.png``, the models
(``models/bprime_<t>.h5``, ``models/fp_<t>.h5``, ``models/ft.h5``, the GoodNets
``models/goodnet_*.keras``) and the executed notebooks in ``notebooks/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lib.catalog import DATASETS

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Datasets the pipeline knows how to obtain (``lib.catalog``): the demos are built offline, the rest downloaded.
KNOWN_DATASETS = tuple(DATASETS)


def data_root() -> Path:
    """``data/`` of the project, or ``$BACKDOOR_DATA_ROOT`` (tests point it at a temporary folder)."""
    return Path(os.environ.get("BACKDOOR_DATA_ROOT", PROJECT_ROOT / "data"))


def results_root() -> Path:
    """``results/`` of the project, or ``$BACKDOOR_RESULTS_ROOT``."""
    return Path(os.environ.get("BACKDOOR_RESULTS_ROOT", PROJECT_ROOT / "results"))


@dataclass(frozen=True)
class DatasetFiles:
    """The five input files of one scenario, in the lab's layout."""

    root: Path

    @property
    def clean_valid(self) -> Path:
        return self.root / "cl" / "valid.h5"

    @property
    def clean_test(self) -> Path:
        return self.root / "cl" / "test.h5"

    @property
    def poisoned_valid(self) -> Path:
        return self.root / "bd" / "bd_valid.h5"

    @property
    def poisoned_test(self) -> Path:
        return self.root / "bd" / "bd_test.h5"

    @property
    def badnet(self) -> Path:
        return self.root / "bd_net.h5"

    def all(self) -> dict[str, Path]:
        """Every file by role, in the order the data notebook reports them."""
        return {
            "clean_valid": self.clean_valid,
            "clean_test": self.clean_test,
            "poisoned_valid": self.poisoned_valid,
            "poisoned_test": self.poisoned_test,
            "badnet": self.badnet,
        }

    def missing(self) -> list[Path]:
        return [p for p in self.all().values() if not p.is_file()]


@dataclass(frozen=True)
class ResultFiles:
    """Everything the pipeline writes for one scenario."""

    root: Path

    @property
    def activations_csv(self) -> Path:
        return self.root / "activations.csv"

    @property
    def sweep_csv(self) -> Path:
        return self.root / "sweep.csv"

    @property
    def goodnet_csv(self) -> Path:
        return self.root / "goodnet.csv"

    @property
    def goodnet_md(self) -> Path:
        return self.root / "goodnet.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def fine_pruning_csv(self) -> Path:
        return self.root / "fine_pruning.csv"

    def bprime(self, threshold: float) -> Path:
        """B' saved when clean validation accuracy had dropped by ``threshold`` points."""
        return self.models / f"bprime_{format_threshold(threshold)}.h5"

    def fine_tuned(self, threshold: float | None) -> Path:
        """B fine-tuned (``threshold`` None: ``ft.h5``) or B' fine-pruned (``fp_<t>.h5``) on clean data."""
        return self.models / ("ft.h5" if threshold is None else f"fp_{format_threshold(threshold)}.h5")

    def goodnet_model(self, repaired: Path) -> Path:
        """G of B and the ``repaired`` model file, as one loadable file: ``bprime_2.h5 -> goodnet_bprime_2.keras``."""
        return self.models / f"goodnet_{Path(repaired).stem}.keras"


def format_threshold(threshold: float) -> str:
    """``2.0 -> '2'``, ``2.5 -> '2.5'``: thresholds are written as the user wrote them."""
    return f"{float(threshold):g}"


def result_files(dataset: str) -> ResultFiles:
    return ResultFiles(results_root() / dataset)
