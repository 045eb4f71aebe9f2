"""Step 7: what notebook 07 records (STRIP, each G and each G+STRIP as detectors on test data, and the models)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
from matplotlib.figure import Figure

from lib.core.step_names import STRIP
from lib.defense.goodnet_model import save_goodnet
from lib.report import plots
from lib.report.tables import write_csv
from lib.runs import provenance
from lib.steps.common import locked
from lib.steps.scenario import Scenario


@dataclass
class StripOutcome:
    table: pd.DataFrame  # detection.csv
    figure: Figure


def record_strip(
    scenario: Scenario,
    scores: pd.DataFrame,
    roc: pd.DataFrame,
    table: pd.DataFrame,
    threshold: float,
    combined: dict[Path, keras.Model],
    near_threshold: int,
) -> StripOutcome:
    """Write notebook 07's results under the run's lock: ``detection.csv`` (test data), ``strip_scores.csv`` (the
    entropy of every image scored: the validation images the threshold was fixed on, and the test images), the
    figure, and each G combined with STRIP as ``models/goodnet_bprime_<t>_strip.keras`` (``combined`` maps
    the G file each was built from to it). ``near_threshold`` counts the images whose entropy lies within float32
    rounding of the threshold: the decisions another processor could flip."""
    results = scenario.results
    with locked(scenario, STRIP):
        saved = [save_goodnet(model, results.strip_goodnet_model(g)) for g, model in combined.items()]
        for stale in set(results.models.glob("goodnet_*_strip.keras")) - set(saved):
            stale.unlink()
        write_csv(scores, results.strip_scores_csv)
        write_csv(table, results.detection_csv)
        title = f"{scenario.dataset}: STRIP and the GoodNets as detectors (test data)"
        figure = plots.plot_detection(scores, roc, table, threshold, title)
        plots.save_figure(figure, results.figure("detection"))
        provenance.record_step(
            results,
            STRIP,
            [*scenario.input_files("valid")[:2], *scenario.input_files("test")[1:], *combined],
            [results.detection_csv, results.strip_scores_csv, *saved, results.figure("detection")],
            ", ".join(f"{r.detector} FRR {r.FRR:.1f} FAR {r.FAR:.1f}" for r in table.itertuples()),
            details={"threshold": threshold, "near_threshold": near_threshold},
        )
        return StripOutcome(table, figure)
