"""Where things live: one place, so notebooks, Makefile, studies and tests agree on the layout.

``data/<dataset>/`` holds a dataset's inputs, in the layout its catalog entry names (``lib.data.catalog``);
the analysis steps never write there. ``results/<dataset>/`` holds what the pipeline computes, every
file named by ``ResultFiles``. A notebook's ``data_dir``/``results_dir`` parameters (and the
``BACKDOOR_DATA_ROOT``/``BACKDOOR_RESULTS_ROOT`` environment variables, which move the whole trees)
point a run elsewhere, so that trying other parameters never disturbs the default results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lib.core.rows import ModelRow, format_threshold

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The genuine CSAW-HackML-2020 weight files, when the project's shared folder lies beside it.
SHARED_CSAW_MODELS = PROJECT_ROOT.parent / "shared" / "csaw-models"
#: Small artifacts published with the project (the demos' BadNets), tracked in git under data/.
PUBLISHED = PROJECT_ROOT / "data" / "published"
#: The committed results (``results_root`` unless ``$BACKDOOR_RESULTS_ROOT`` moves a run's elsewhere).
COMMITTED_RESULTS = PROJECT_ROOT / "results"
#: SHA-256 lock files, one per dataset (``sha256sum`` format).
CHECKSUMS = PROJECT_ROOT / "checksums"
#: The one setting that moves caches and the locks of read-only folders (``cache_root``).
CACHE_ENV = "BACKDOOR_CACHE_DIR"


def data_root() -> Path:
    """``data/`` of the project, or ``$BACKDOOR_DATA_ROOT`` (tests and ``make verify`` point it elsewhere)."""
    return Path(os.environ.get("BACKDOOR_DATA_ROOT", PROJECT_ROOT / "data"))


def results_root() -> Path:
    """``results/`` of the project, or ``$BACKDOOR_RESULTS_ROOT``."""
    return Path(os.environ.get("BACKDOOR_RESULTS_ROOT", COMMITTED_RESULTS))


def cache_root() -> Path:
    """Caches and the locks of read-only folders: ``$BACKDOOR_CACHE_DIR``, else ``data/.cache``.

    One setting moves them all to a writable place when the data tree is on a read-only mount.
    """
    return Path(os.environ.get(CACHE_ENV) or data_root() / ".cache")


def drive_cache() -> Path:
    """Where a Google Drive folder several datasets share is kept once (``<cache>/drive/<folder id>``)."""
    return cache_root() / "drive"


def data_folder(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The folder of a dataset's inputs: ``data_dir`` if given, else ``data/<dataset>``."""
    return Path(data_dir) if data_dir else data_root() / dataset


def checksum_file(dataset: str) -> Path:
    """``checksums/<dataset>.sha256``: the digests every run of the dataset checks its files against."""
    return CHECKSUMS / f"{dataset}.sha256"


def _under_root(name: str, doc: str = "") -> property:
    """A file or folder at ``name`` under the instance's ``root``: the layout is this table of names."""
    return property(lambda self: self.root / name, doc=doc or f"``{name}``")


@dataclass(frozen=True)
class ResultFiles:
    """Every file the pipeline writes for one run of one dataset, under ``root``, in step order."""

    root: Path

    run_record = _under_root(
        "run.json", "What each step read and wrote, with digests (lib.runs.provenance); not committed."
    )
    reference_check_csv = _under_root("reference_check.csv", "B against its publishers' figures (CSAW, notebook 01).")
    activations_csv = _under_root("activations.csv")
    sweep_csv = _under_root("sweep.csv")
    thresholds_csv = _under_root("thresholds.csv", "Where each threshold fired, and the channels pruned by then.")
    goodnet_csv = _under_root("goodnet.csv", "B, each B' and each G on test data (notebook 04).")
    goodnet_md = _under_root("goodnet.md")
    fine_pruning_csv = _under_root("fine_pruning.csv", "FT, GFT, each FP and GFP on test data (notebook 05).")
    fine_pruning_md = _under_root("fine_pruning.md", "Every model of both steps in one table, for reading.")
    fine_tuning_history_csv = _under_root("fine_tuning_history.csv", "Per fine-tuned model and epoch: losses, kept.")
    trained_on = _under_root("trained_on.json", "The machine and versions that trained the fine-tuned models.")
    clp_sweep_csv = _under_root("clp_sweep.csv", "CLP's scan of u on clean validation data (notebook 06).")
    clp_csv = _under_root("clp.csv", "CLP_u3, each CLP_t% and each of their GoodNets on test data (notebook 06).")
    clp_md = _under_root("clp.md")
    detection_csv = _under_root("detection.csv", "STRIP, each G, each G+STRIP as detectors on test data (07).")
    strip_scores_csv = _under_root("strip_scores.csv", "STRIP's entropy of every validation and test image it scored.")
    anp_masks_csv = _under_root("anp_masks.csv", "ANP's learnt mask of every neuron, lowest first (notebook 08).")
    anp_sweep_csv = _under_root("anp_sweep.csv", "ANP's scan of the mask threshold on clean validation data.")
    anp_csv = _under_root("anp.csv", "Each ANP_t% and its GoodNet on test data (notebook 08).")
    anp_md = _under_root("anp.md")
    anp_trained_on = _under_root("anp_trained_on.json", "The machine, versions and settings that learnt ANP's masks.")
    figures = _under_root("figures")
    models = _under_root("models")
    notebooks = _under_root("notebooks", "Executed copies of the notebooks, their logs (not committed).")

    def figure(self, name: str) -> Path:
        """``figures/<name>.png``: samples, activations, sweep, goodnet, fine_pruning."""
        return self.figures / f"{name}.png"

    def bprime(self, threshold: float) -> Path:
        """B' saved when clean validation accuracy had dropped by ``threshold`` points."""
        return self.models / f"bprime_{format_threshold(threshold)}.h5"

    def fine_tuned(self, threshold: float | None) -> Path:
        """B fine-tuned (``threshold`` None: ``ft.h5``) or B' fine-pruned (``fp_<t>.h5``) on clean data."""
        return self.models / ("ft.h5" if threshold is None else f"fp_{format_threshold(threshold)}.h5")

    def repaired_model(self, row: ModelRow) -> Path:
        """A repaired model of another defense, named after its row: ``CLP_u3 -> models/clp_u3.h5``."""
        return self.models / f"{row.file_stem}.h5"

    def strip_goodnet_model(self, goodnet: Path) -> Path:
        """G combined with STRIP: ``goodnet_bprime_2.keras -> goodnet_bprime_2_strip.keras``."""
        return self.models / f"{Path(goodnet).stem}_strip.keras"

    def goodnet_model(self, repaired: Path) -> Path:
        """G of B and the ``repaired`` model file, as one loadable file: ``bprime_2.h5 -> goodnet_bprime_2.keras``."""
        return self.models / f"goodnet_{Path(repaired).stem}.keras"


@dataclass(frozen=True)
class StudyFiles:
    """What a multi-seed study writes under ``results/studies/<name>``: its aggregates (committed) and its runs."""

    root: Path

    runs = _under_root("runs", "One folder per (dataset, seed) run, each laid out as ResultFiles (not committed).")
    runs_csv = _under_root("runs.csv")
    sweeps_csv = _under_root("sweeps.csv")
    summary_csv = _under_root("summary.csv")
    summary_md = _under_root("summary.md")
    contrasts_csv = _under_root("contrasts.csv", "Paired differences between models of the same runs, and verdicts.")
    contrasts_md = _under_root("contrasts.md")
    detection_csv = _under_root("detection.csv", "Every run's detectors (notebook 07): FRR, FAR, AUC per seed.")
    detection_contrasts_csv = _under_root("detection_contrasts.csv", "Paired differences between detectors.")
    detection_contrasts_md = _under_root("detection_contrasts.md")

    def figure(self, name: str) -> Path:
        return self.root / "figures" / f"{name}.png"


def studies_root() -> Path:
    """``results/studies``: one folder per study (``studies/<name>.yaml``)."""
    return results_root() / "studies"


def study_files(name: str) -> StudyFiles:
    """The files of the study called ``name``."""
    return StudyFiles(studies_root() / name)


def result_files(dataset: str, results_dir: str | Path | None = None) -> ResultFiles:
    """The results of ``dataset``: in ``results_dir`` if given, else ``results/<dataset>``."""
    return ResultFiles(Path(results_dir) if results_dir else results_root() / dataset)


def shown(path: str | Path) -> str:
    """A path as people and records should read it: relative to the project when inside it."""
    path = Path(path)
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return path.as_posix()
