"""Step 4, notebook 04: B, each B' and each GoodNet G on test data."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from lib import plots, provenance, rows
from lib.atomic import write_text
from lib.goodnet import TestData, evaluate, goodnet_table
from lib.goodnet_model import build_goodnet, save_goodnet
from lib.models import BATCH_SIZE, load_model_file
from lib.scenario import Scenario
from lib.steps.common import GOODNET, locked, rerun
from lib.steps.pruning_sweep import read_pruned
from lib.tables import markdown_table, write_csv


def load_test_data(scenario: Scenario) -> TestData:
    clean = scenario.load_clean("test")
    return TestData(clean, scenario.load_triggered("test", clean))


@dataclass
class GoodNetOutcome:
    table: pd.DataFrame  # goodnet.csv
    figure: Figure


def evaluate_goodnets(scenario: Scenario, batch_size: int = BATCH_SIZE, progress: bool = True) -> GoodNetOutcome:
    """Test accuracy and ASR of B, each saved B' and each G; writes ``goodnet.csv`` and ``goodnet.md``.

    Each G is also saved as one loadable model, ``models/goodnet_bprime_<t>.keras`` (``lib.goodnet_model``),
    which ``python -m lib.eval`` runs on images.
    """
    from tqdm.auto import tqdm

    results = scenario.results
    with locked(scenario, GOODNET):
        pruned = read_pruned(scenario)
        test = load_test_data(scenario)
        b = evaluate(scenario.badnet, rows.badnet(), 0, test, batch_size)
        evaluated, goodnets = [], []
        for p in tqdm(pruned, desc="B' models", unit="model", disable=not progress):
            bprime = load_model_file(p.path)
            goodnets.append(save_goodnet(build_goodnet(scenario.badnet, bprime), results.goodnet_model(p.path)))
            evaluated.append(evaluate(bprime, rows.pruned(p.threshold), len(p.channels), test, batch_size))
        for stale in set(results.models.glob("goodnet_bprime_*.keras")) - set(goodnets):
            stale.unlink()
        table = goodnet_table(b, evaluated, test.clean.labels, test.target_labels, scenario.n_classes)
        write_csv(table, results.goodnet_csv)
        write_text(results.goodnet_md, markdown_table(table))
        figure = plots.plot_goodnet(table, title=f"{scenario.dataset}: B, pruned B' and GoodNet G on test data")
        plots.save_figure(figure, results.figure("goodnet"))
        provenance.record_step(
            results,
            GOODNET,
            [*scenario.input_files("test"), results.thresholds_csv, *(p.path for p in pruned)],
            [results.goodnet_csv, results.goodnet_md, *goodnets, results.figure("goodnet")],
            rows_summary(table),
            details={"near_ties": {e.name: e.near_ties for e in [b, *evaluated]}},
        )
        return GoodNetOutcome(table, figure)


def rows_summary(table: pd.DataFrame) -> str:
    """``B 100.0/100.0, B'_4% 96.8/99.8, ...`` (test accuracy / ASR) for the console, repaired rows only once."""
    shown_rows = table[~table["model"].map(lambda m: rows.parse_row(m).goodnet)]
    return ", ".join(f"{r.model} {r.clean_accuracy:.1f}/{r.attack_success_rate:.1f}" for r in shown_rows.itertuples())


def read_goodnet_table(scenario: Scenario) -> pd.DataFrame:
    provenance.require_current(scenario.results, GOODNET, rerun(scenario, GOODNET))
    return pd.read_csv(scenario.results.goodnet_csv)
