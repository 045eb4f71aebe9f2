"""Step 6: what notebook 06 records (CLP: its scan of u on validation data, CLP_u3 and each CLP_t% with their
GoodNets on test data, and the models)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import pandas as pd
from matplotlib.figure import Figure

from lib.core.atomic import write_text
from lib.core.rows import ModelRow
from lib.core.step_names import CLP
from lib.defense.goodnet import Evaluated
from lib.report import plots
from lib.report.tables import markdown_table, write_csv
from lib.runs import provenance
from lib.steps.common import locked
from lib.steps.goodnet import rows_summary, save_repaired_models
from lib.steps.scenario import Scenario


@dataclass
class ClpOutcome:
    table: pd.DataFrame  # clp.csv
    figure: Figure


def record_clp(
    scenario: Scenario,
    scan: pd.DataFrame,
    chosen: dict[float, int],
    repaired: dict[ModelRow, keras.Model],
    evaluated: list[Evaluated],
    table: pd.DataFrame,
) -> ClpOutcome:
    """Write notebook 06's results under the run's lock: ``clp_sweep.csv`` (the scan on validation data),
    ``clp.csv`` and ``clp.md`` (test data), the figure, each repaired model as ``models/<row>.h5`` (``clp_u3.h5``,
    ``clp_2.h5``) and its G as ``models/goodnet_<row>.keras``. ``evaluated`` holds B and each repaired model
    (for the near ties the record keeps)."""
    results = scenario.results
    with locked(scenario, CLP):
        saved = save_repaired_models(scenario, repaired, "clp")
        write_csv(scan, results.clp_sweep_csv)
        write_csv(table, results.clp_csv)
        write_text(results.clp_md, markdown_table(table))
        title = f"{scenario.dataset}: CLP, u lowered past each channel's Lipschitz z-score (validation data)"
        figure = plots.plot_sweep(scan, chosen, title=title, x_max=1.2 * float(scan["fraction"].iloc[-1]) or 1.0)
        plots.save_figure(figure, results.figure("clp"))
        provenance.record_step(
            results,
            CLP,
            [*scenario.input_files("valid"), *scenario.input_files("test")[1:]],
            [results.clp_sweep_csv, results.clp_csv, results.clp_md, *saved, results.figure("clp")],
            rows_summary(table),
            details={"near_ties": {e.name: e.near_ties for e in evaluated}},
        )
        return ClpOutcome(table, figure)
