"""Where one run of one dataset reads and writes: its catalog entry, its data folder and its results files.

``data/<dataset>`` and ``results/<dataset>`` by default; a notebook's ``data_dir``/``results_dir`` parameters
point a run elsewhere (an exploratory run, a run of a study). Light on purpose (no TensorFlow): the runner,
the locks and ``make`` use it before any network is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib.core.paths import ResultFiles, data_folder, result_files, shown
from lib.core.step_names import notebook_of
from lib.data.catalog import DatasetSpec, dataset_spec


@dataclass(frozen=True)
class Workspace:
    """One run of one dataset: its catalog entry, the folder of its inputs and the files of its results."""

    spec: DatasetSpec
    data: Path
    results: ResultFiles

    @property
    def dataset(self) -> str:
        return self.spec.name

    def file(self, relative: str) -> Path:
        """A dataset file (a path of the catalog entry) in this run's data folder."""
        return self.data / relative

    @property
    def badnet_path(self) -> Path:
        return self.file(self.spec.badnet)

    def required_files(self) -> list[Path]:
        """B and every image set the dataset cannot do without (optional poisoned sets excluded)."""
        optional = self.spec.optional_files()
        return [self.badnet_path, *(self.file(p) for p in self.spec.image_files() if p not in optional)]

    @property
    def is_default(self) -> bool:
        """Whether this run reads and writes the dataset's default folders (``data/<d>``, ``results/<d>``)."""
        return self.data == data_folder(self.dataset) and self.results == result_files(self.dataset)

    @property
    def notebook_parameters(self) -> str:
        """How to name this run to a notebook in fixes: its parameters ``dataset`` and, when not the default, the
        folders (for a reader in Jupyter, Kaggle or Colab, who has no ``make``)."""
        if self.is_default:
            return f"dataset={self.dataset!r}"
        data, results = shown(self.data), shown(self.results.root)
        return f"dataset={self.dataset!r}, data_dir={data!r}, results_dir={results!r}"

    @property
    def make_target(self) -> str:
        """How to name this run to ``make`` in fixes: the dataset, and the folders when not the default."""
        if self.is_default:
            return f"DATASET={self.dataset}"
        return f"DATASET={self.dataset} DATA_DIR={shown(self.data)} RESULTS_DIR={shown(self.results.root)}"


def workspace(dataset: str, data_dir: str | Path | None = None, results_dir: str | Path | None = None) -> Workspace:
    """Where a run of ``dataset`` reads and writes (the defaults: ``data/<dataset>``, ``results/<dataset>``)."""
    spec = dataset_spec(dataset)
    return Workspace(spec, data_folder(spec.name, data_dir), result_files(spec.name, results_dir))


def rerun(ws: Workspace, step: str) -> str:
    """The fix for results of ``step`` that are missing or no longer belong together."""
    return (
        f"rerun {notebook_of(step)} with {ws.notebook_parameters} "
        f"(`make {step.replace('_', '-')} {ws.make_target}`, or `make all`)"
    )
