"""Step 5, notebook 05: fine-tune B and each B' on clean validation data; test them and their GoodNets."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib import plots, provenance, rows
from lib.atomic import write_text
from lib.finetune import FineTuneSettings, fine_tune
from lib.goodnet import evaluate, evaluation_table, goodnet_of
from lib.goodnet_model import build_goodnet, save_goodnet
from lib.machine import describe
from lib.models import BATCH_SIZE, load_model_file, save_model
from lib.scenario import Scenario
from lib.steps.common import FINE_PRUNING, locked
from lib.steps.goodnet import load_test_data, read_goodnet_table, rows_summary
from lib.steps.pruning_sweep import read_pruned
from lib.tables import markdown_table, write_csv


@dataclass
class FinePruningOutcome:
    table: pd.DataFrame  # fine_pruning.csv: FT, GFT, FP_<t>%, GFP_<t>%
    history: pd.DataFrame  # fine_tuning_history.csv: one row per model and epoch
    figure: Figure  # pruning against fine-pruning, both steps' rows


def fine_prune(
    scenario: Scenario, settings: FineTuneSettings, batch_size: int = BATCH_SIZE, progress: bool = True
) -> FinePruningOutcome:
    """Fine-tune B (``FT``) and every saved B' (``FP_<t>%``) on clean validation data; evaluate them on test data.

    Each fine-tuned model also makes a GoodNet with B (``GFT``, ``GFP_<t>%``). Writes ``fine_pruning.csv``,
    ``fine_pruning.md`` (with the GoodNet step's rows, for reading), ``fine_tuning_history.csv``, the models
    (``models/ft.h5``, ``models/fp_<t>.h5`` and their GoodNets) and ``trained_on.json``: these numbers come
    from training, which repeats exactly only on the same processor and library versions.
    """
    results = scenario.results
    with locked(scenario, FINE_PRUNING):
        pruned = read_pruned(scenario)
        pruning_rows = read_goodnet_table(scenario)
        clean = scenario.load_clean("valid")
        test = load_test_data(scenario)
        b = evaluate(scenario.badnet, rows.badnet(), 0, test, batch_size)
        starts = [(rows.fine_tuned(), scenario.badnet, np.array([], dtype=np.int64), results.fine_tuned(None))]
        starts += [
            (rows.fine_pruned(p.threshold), load_model_file(p.path), p.channels, results.fine_tuned(p.threshold))
            for p in pruned
        ]
        made = [path for *_, path in starts]
        for stale in set(results.models.glob("fp_*.h5")) - set(made):  # from thresholds an earlier run reached
            stale.unlink()
            results.goodnet_model(stale).unlink(missing_ok=True)
        evaluated, histories, outputs = [], [], []
        for row, model, channels, path in starts:
            tuned, history = fine_tune(
                model,
                clean.images,
                clean.labels,
                settings,
                scenario.conv_layer,
                channels,
                progress,
                f"fine-tuning {row}",
            )
            save_model(tuned, path)
            outputs += [path, save_goodnet(build_goodnet(scenario.badnet, tuned), results.goodnet_model(path))]
            histories.append(history.assign(model=row.name)[["model", *history.columns]])
            repaired = evaluate(tuned, row, len(channels), test, batch_size)
            evaluated += [repaired, goodnet_of(b, repaired, row, scenario.n_classes)]
        table = evaluation_table(evaluated, test.clean.labels, test.target_labels)
        history = pd.concat(histories, ignore_index=True)
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
            details={"near_ties": {e.name: e.near_ties for e in evaluated[::2]}},
        )
        return FinePruningOutcome(table, history, figure)
