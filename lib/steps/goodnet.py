"""Step 4: what notebook 04 records (B, each B' and each GoodNet G on test data, and each G as a model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
from matplotlib.figure import Figure

from lib.core import rows
from lib.core.atomic import write_text
from lib.core.step_names import GOODNET
from lib.defense.goodnet import Evaluated, TestData
from lib.defense.goodnet_model import build_goodnet, save_goodnet
from lib.network.models import save_model
from lib.report import plots
from lib.report.tables import markdown_table, read_csv, write_csv
from lib.runs import provenance
from lib.runs.workspace import rerun
from lib.steps.common import locked
from lib.steps.pruning_sweep import Pruned, read_pruned
from lib.steps.scenario import Scenario


def load_test_data(scenario: Scenario) -> TestData:
    """The clean test set and each trigger's test set: what notebooks 04 and 05 measure every model on."""
    clean = scenario.load_clean("test")
    return TestData(clean, scenario.load_triggered("test", clean))


@dataclass
class GoodNetOutcome:
    table: pd.DataFrame  # goodnet.csv
    figure: Figure


def record_goodnets(
    scenario: Scenario,
    pruned: list[Pruned],
    bprimes: list[keras.Model],
    evaluated: list[Evaluated],
    table: pd.DataFrame,
) -> GoodNetOutcome:
    """Write notebook 04's evaluation under the run's lock: ``goodnet.csv``, ``goodnet.md``, the figure, and each G
    as one loadable model, ``models/goodnet_bprime_<t>.keras`` (``lib.defense.goodnet_model``), which
    ``python -m lib.eval`` runs on images. ``bprimes`` are the loaded models of ``pruned``; ``evaluated`` holds B
    and each B' (for the near ties the record keeps).
    """
    results = scenario.results
    with locked(scenario, GOODNET):
        goodnets = [
            save_goodnet(build_goodnet(scenario.badnet, model), results.goodnet_model(p.path))
            for p, model in zip(pruned, bprimes, strict=True)
        ]
        for stale in set(results.models.glob("goodnet_bprime_*.keras")) - set(goodnets):
            stale.unlink()
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
            details={"near_ties": {e.name: e.near_ties for e in evaluated}},
        )
        return GoodNetOutcome(table, figure)


def rows_summary(table: pd.DataFrame) -> str:
    """``B 100.0/100.0, B'_4% 96.8/99.8, ...`` (test accuracy / ASR) for the console, repaired rows only once."""
    shown_rows = table[~table["model"].map(lambda m: rows.parse_row(m).goodnet)]
    return ", ".join(f"{r.model} {r.clean_accuracy:.1f}/{r.attack_success_rate:.1f}" for r in shown_rows.itertuples())


def read_goodnet_table(scenario: Scenario) -> pd.DataFrame:
    provenance.require_current(scenario.results, GOODNET, rerun(scenario, GOODNET))
    return read_csv(scenario.results.goodnet_csv)


def read_goodnet_models(scenario: Scenario) -> dict[rows.ModelRow, Path]:
    """Each G notebook 04 saved (``G_2%`` -> ``models/goodnet_bprime_2.keras``), checked to be that step's files."""
    provenance.require_current(scenario.results, GOODNET, rerun(scenario, GOODNET))
    return {
        rows.pruned(p.threshold).goodnet_of(): scenario.results.goodnet_model(p.path) for p in read_pruned(scenario)
    }


def save_repaired_models(scenario: Scenario, repaired: dict[rows.ModelRow, keras.Model], kind: str) -> list[Path]:
    """Save another defense's repaired models as ``models/<row>.h5``, each with its G as
    ``models/goodnet_<row>.keras``, and remove that defense's models of budgets an earlier run reached and this
    one did not (``kind``: the file stems' prefix, ``clp`` or ``anp``). The paths written, for the record."""
    results = scenario.results
    saved = []
    for row, model in repaired.items():
        path = save_model(model, results.repaired_model(row))
        saved += [path, save_goodnet(build_goodnet(scenario.badnet, model), results.goodnet_model(path))]
    for stale in {*results.models.glob(f"{kind}_*.h5"), *results.models.glob(f"goodnet_{kind}_*.keras")} - set(saved):
        stale.unlink()
    return saved
