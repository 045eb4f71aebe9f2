"""Step 5: what notebook 05 records (B and each B' fine-tuned on clean data, tested with their GoodNets)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import keras
import pandas as pd
from matplotlib.figure import Figure

from lib.core.atomic import write_text
from lib.core.rows import ModelRow
from lib.core.step_names import FINE_PRUNING
from lib.defense.finetune import FineTuneSettings
from lib.defense.goodnet_model import build_goodnet, save_goodnet
from lib.network.models import save_model
from lib.report import plots
from lib.report.tables import markdown_table, write_csv
from lib.runs import provenance
from lib.runs.machine import describe
from lib.steps.common import locked
from lib.steps.goodnet import read_goodnet_table, rows_summary
from lib.steps.pruning_sweep import Pruned
from lib.steps.scenario import Scenario


@dataclass
class FinePruningOutcome:
    table: pd.DataFrame  # fine_pruning.csv: FT, GFT, FP_<t>%, GFP_<t>%
    history: pd.DataFrame  # fine_tuning_history.csv: one row per model and epoch
    figure: Figure  # pruning against fine-pruning, both steps' rows


@dataclass
class FineTuned:
    """One model notebook 05 fine-tuned, and its row: ``FT`` (B fine-tuned) or ``FP_<t>%`` (B'_t% fine-tuned)."""

    row: ModelRow
    model: keras.Model


def record_fine_pruning(
    scenario: Scenario,
    pruned: list[Pruned],
    tuned: list[FineTuned],
    table: pd.DataFrame,
    history: pd.DataFrame,
    settings: FineTuneSettings,
    near_ties: dict[str, int],
) -> FinePruningOutcome:
    """Write notebook 05's models and tables under the run's lock.

    Each fine-tuned model goes to ``models/ft.h5`` or ``models/fp_<t>.h5``, with its GoodNet beside it; models of
    thresholds an earlier run reached are removed. Writes ``fine_pruning.csv``, ``fine_pruning.md`` (with the
    GoodNet step's rows, for reading), ``fine_tuning_history.csv`` and ``trained_on.json``: these numbers come
    from training, which repeats exactly only on the same processor and library versions.
    """
    results = scenario.results
    with locked(scenario, FINE_PRUNING):
        pruning_rows = read_goodnet_table(scenario)
        outputs = []
        for t in tuned:
            path = save_model(t.model, results.fine_tuned(t.row.threshold))
            outputs += [path, save_goodnet(build_goodnet(scenario.badnet, t.model), results.goodnet_model(path))]
        for stale in set(results.models.glob("fp_*.h5")) - set(outputs):
            stale.unlink()
            results.goodnet_model(stale).unlink(missing_ok=True)
        both = pd.concat([pruning_rows, table], ignore_index=True)
        write_csv(table, results.fine_pruning_csv)
        write_text(results.fine_pruning_md, markdown_table(both))
        write_csv(history, results.fine_tuning_history_csv)
        write_text(results.trained_on, json.dumps({**describe(), "settings": vars(settings)}, indent=2) + "\n")
        figure = plots.plot_repair_comparison(both, title=f"{scenario.dataset}: pruning vs fine-pruning (test data)")
        plots.save_figure(figure, results.figure("fine_pruning"))
        provenance.record_step(
            results,
            FINE_PRUNING,
            [
                *scenario.input_files("valid"),
                *scenario.input_files("test")[1:],
                results.thresholds_csv,
                results.goodnet_csv,
            ]
            + [p.path for p in pruned],
            [
                results.fine_pruning_csv,
                results.fine_pruning_md,
                results.fine_tuning_history_csv,
                results.trained_on,
                *outputs,
                results.figure("fine_pruning"),
            ],
            rows_summary(table),
            details={"near_ties": near_ties},
        )
        return FinePruningOutcome(table, history, figure)
