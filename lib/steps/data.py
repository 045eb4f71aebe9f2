"""Step 1, notebook 01: the dataset's files in place, checked, and B measured against its publishers' figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.core.paths import checksum_file, drive_cache, shown
from lib.core.step_names import DATA
from lib.data.datasets import ImageSet
from lib.data.download import default_weights_mirror, ensure_csaw
from lib.data.reference import enforce, reference_table
from lib.demo.published import ensure_demo, published_folder
from lib.network.models import BATCH_SIZE, predict_classes
from lib.report import plots
from lib.report.tables import write_csv
from lib.runs import provenance
from lib.runs.workspace import Workspace
from lib.steps.common import locked
from lib.steps.scenario import Scenario, image_set_overview, load_all_sets, load_scenario


@dataclass
class DataOutcome:
    files: pd.DataFrame  # one row per image set: role, file, images, distinct labels
    reference: pd.DataFrame | None  # B against its publishers' figures (CSAW datasets)
    notes: list[str]  # what this dataset cannot show
    figure: Figure | None  # clean and triggered samples


def prepare_data(
    ws: Workspace,
    demo_recipe: dict | None = None,
    use_weights_mirror: bool = True,
    check_reference: bool = True,
    n_samples: int = 8,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> DataOutcome:
    """Get the dataset's files into the data folder (files already there and valid are kept), then check them.

    Demos are built (``demo_recipe`` overrides their recipe); CSAW datasets downloaded, and B measured
    against its publishers' figures (``lib.data.reference``; ``check_reference=False`` only warns).
    """
    with locked(ws, DATA):
        inputs = []
        if ws.spec.is_demo:
            ensure_demo(ws.data, ws.dataset, demo_recipe, progress)
            published = [published_folder(ws.dataset) / ws.spec.badnet, checksum_file(ws.dataset)]
            inputs = [p for p in published if p.is_file()]  # a newly published B reruns the data step
        else:
            mirror = default_weights_mirror() if use_weights_mirror else None
            ensure_csaw(ws.spec, ws.data, weights_mirror=mirror, progress=progress, drive_cache=drive_cache())
        scenario = load_scenario(ws)
        sets = load_all_sets(scenario)  # read and validated once, for the overview, the check and the samples
        files = image_set_overview(scenario, sets)
        outputs = list(dict.fromkeys(scenario.input_files("valid") + scenario.input_files("test")))
        reference = None
        if ws.spec.reference is not None:
            reference = _reference_check(scenario, sets, batch_size)
            write_csv(reference, ws.results.reference_check_csv)
            outputs.append(ws.results.reference_check_csv)
            enforce(reference, shown(ws.badnet_path), ws.dataset, enforced=check_reference)
        figure = _sample_figure(scenario, sets, n_samples)
        if figure is not None:
            outputs.append(plots.save_figure(figure, ws.results.figure("samples")))
        summary = f"{len(files)} image sets, B with {scenario.n_classes} classes"
        if reference is not None:
            summary += f"; B {reference['measured'].iloc[0]:.2f} % clean validation accuracy (reference check)"
        provenance.record_step(ws.results, DATA, inputs, outputs, summary)
        return DataOutcome(files, reference, scenario.limitations(), figure)


def _triggered_valid(scenario: Scenario, sets: dict[str, ImageSet]) -> list[ImageSet]:
    return [sets[f"{t.name} valid"] for t in scenario.triggers]


def _reference_check(scenario: Scenario, sets: dict[str, ImageSet], batch_size: int) -> pd.DataFrame:
    clean = sets["clean valid"]
    accuracy = 100.0 * np.mean(predict_classes(scenario.badnet, clean.images, batch_size) == clean.labels)
    triggered = _triggered_valid(scenario, sets)
    asr = None
    if triggered and scenario.spec.reference.attack_success_rate is not None:
        hits = [predict_classes(scenario.badnet, s.images, batch_size) == s.labels for s in triggered]
        asr = 100.0 * float(np.mean(np.concatenate(hits)))
    return reference_table(scenario.spec.reference, float(accuracy), asr, len(clean), len(sets["clean test"]))


def _sample_figure(scenario: Scenario, sets: dict[str, ImageSet], n: int) -> Figure | None:
    """Clean validation images with their identity over images wearing the (first) trigger, labelled with the target."""
    clean = sets["clean valid"]
    triggered = next(iter(_triggered_valid(scenario, sets)), None)
    if triggered is None:
        return None
    pick_clean = slice(None, None, max(1, len(clean) // n))
    pick_triggered = slice(None, None, max(1, len(triggered) // n))
    return plots.plot_sample_grid(
        clean.images[pick_clean],
        triggered.images[pick_triggered],
        clean.labels[pick_clean],
        triggered.labels[pick_triggered],
        n=n,
    )
