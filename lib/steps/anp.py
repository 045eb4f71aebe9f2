"""Step 8: what notebook 08 records (ANP: its masks, its scan of the mask threshold on validation data, each
ANP_t% with its GoodNet on test data, and the models)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import keras
import pandas as pd
from matplotlib.figure import Figure

from lib.core.atomic import write_text
from lib.core.rows import ModelRow
from lib.core.step_names import ANP
from lib.defense.anp import AnpSettings
from lib.defense.goodnet import Evaluated
from lib.report import plots
from lib.report.tables import markdown_table, write_csv
from lib.runs import provenance
from lib.runs.machine import describe
from lib.steps.common import locked
from lib.steps.goodnet import rows_summary, save_repaired_models
from lib.steps.scenario import Scenario


@dataclass
class AnpOutcome:
    table: pd.DataFrame  # anp.csv
    figure: Figure


def record_anp(
    scenario: Scenario,
    settings: AnpSettings,
    masks: pd.DataFrame,
    scan: pd.DataFrame,
    chosen: dict[float, int],
    repaired: dict[ModelRow, keras.Model],
    evaluated: list[Evaluated],
    table: pd.DataFrame,
) -> AnpOutcome:
    """Write notebook 08's results under the run's lock: ``anp_masks.csv``, ``anp_sweep.csv`` (the scan on
    validation data), ``anp.csv`` and ``anp.md`` (test data), the figure, each repaired model as
    ``models/anp_<t>.h5`` with its G as ``models/goodnet_anp_<t>.keras``, and ``anp_trained_on.json``: the masks
    come from gradient steps, which repeat exactly only on the same processor and library versions.
    ``evaluated`` holds B and each repaired model (for the near ties the record keeps)."""
    results = scenario.results
    with locked(scenario, ANP):
        saved = save_repaired_models(scenario, repaired, "anp")
        write_csv(masks, results.anp_masks_csv)
        write_csv(scan, results.anp_sweep_csv)
        write_csv(table, results.anp_csv)
        write_text(results.anp_md, markdown_table(table))
        write_text(results.anp_trained_on, json.dumps({**describe(), "settings": settings.as_dict()}, indent=2) + "\n")
        title = f"{scenario.dataset}: ANP, neurons pruned from the lowest mask up (validation data)"
        x_max = 1.2 * float(scan["fraction"].iloc[-1]) or 1.0
        figure = plots.plot_sweep(scan, chosen, title=title, x_max=x_max, unit="neurons (channels and units)")
        plots.save_figure(figure, results.figure("anp"))
        provenance.record_step(
            results,
            ANP,
            [*scenario.input_files("valid"), *scenario.input_files("test")[1:]],
            [
                results.anp_masks_csv,
                results.anp_sweep_csv,
                results.anp_csv,
                results.anp_md,
                results.anp_trained_on,
                *saved,
                results.figure("anp"),
            ],
            rows_summary(table),
            details={"near_ties": {e.name: e.near_ties for e in evaluated}},
        )
        return AnpOutcome(table, figure)
