"""Step 3, notebook 03: prune channels in increasing order of activation and record accuracy and ASR after each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib import activations as act
from lib import plots, provenance, rows
from lib.models import BATCH_SIZE, save_model
from lib.paths import ResultFiles
from lib.pruning import prune_channels
from lib.scenario import Scenario
from lib.steps.activations import read_activation_table
from lib.steps.common import ACTIVATION_DIGITS, SWEEP, locked, rerun
from lib.sweep import SweepEngine, SweepResult, run_pruning_sweep, threshold_steps, validate_thresholds
from lib.tables import significant, write_csv


@dataclass
class SweepOutcome:
    result: SweepResult
    steps: dict[float, int | None]  # threshold -> channels pruned when it fired (None: never)
    thresholds: pd.DataFrame  # thresholds.csv
    figure: Figure


def run_sweep(
    scenario: Scenario, thresholds: list[float], batch_size: int = BATCH_SIZE, progress: bool = True
) -> SweepOutcome:
    """Prune channels in increasing order of mean activation; after each, accuracy and ASR on validation data.

    Writes ``sweep.csv``, ``thresholds.csv`` (with the channels pruned at each threshold, which later
    steps read) and, for each threshold reached, B' as ``models/bprime_<t>.h5``; B' files of thresholds
    not reached now are removed. Only validation data is used: test data never chooses a model.
    """
    thresholds = validate_thresholds(thresholds)
    results = scenario.results
    with locked(scenario, SWEEP):
        order_table = read_activation_table(scenario)
        order = order_table["channel"].to_numpy()
        means = np.empty(len(order))
        means[order] = order_table["mean_activation"].to_numpy()
        clean = scenario.load_clean("valid")
        triggered = scenario.load_triggered("valid", clean)

        def pooled(images: np.ndarray, name: str) -> np.ndarray:
            return act.pool_activations(scenario.badnet, images, scenario.pool_layer, batch_size, progress, desc=name)

        engine = SweepEngine(scenario.badnet, scenario.conv_layer, scenario.pool_layer, batch_size=batch_size)
        result = run_pruning_sweep(
            engine,
            pooled(clean.images, "clean validation"),
            clean.labels,
            {name: (pooled(s.images, f"{name} validation"), s.labels) for name, s in triggered.items()},
            means,
            order,
            progress=progress,
        )
        rounded = significant(result.table["mean_activation"], ACTIVATION_DIGITS)
        write_csv(result.table.assign(mean_activation=rounded), results.sweep_csv)
        steps = threshold_steps(result.clean_correct, result.n_clean, thresholds)
        bprimes = {t: results.bprime(t) for t, k in steps.items() if k is not None}
        for stale in set(results.models.glob("bprime_*.h5")) - set(bprimes.values()):
            stale.unlink()  # a B' of another threshold or an earlier run must not survive
        for t, path in bprimes.items():
            save_model(prune_channels(scenario.badnet, scenario.conv_layer, order[: steps[t]]), path)
        table = threshold_table(result, steps, order, results)
        write_csv(table, results.thresholds_csv)
        figure = plots.plot_sweep(
            result.table, steps, title=f"Pruning {scenario.conv_layer} of the {scenario.dataset} BadNet"
        )
        plots.save_figure(figure, results.figure("sweep"))
        provenance.record_step(
            results,
            SWEEP,
            [*scenario.input_files("valid"), results.activations_csv],
            [results.sweep_csv, results.thresholds_csv, *bprimes.values(), results.figure("sweep")],
            _sweep_summary(result, steps),
            details={"near_ties": result.near_ties},
        )
        return SweepOutcome(result, steps, table, figure)


def threshold_table(
    result: SweepResult, steps: dict[float, int | None], order: np.ndarray, results: ResultFiles
) -> pd.DataFrame:
    """``thresholds.csv``: per threshold, the step it fired at, accuracy and ASR there, the channels pruned, B'."""
    table_rows = []
    for t, k in steps.items():
        step = result.table.iloc[k] if k is not None else None
        table_rows.append(
            {
                "threshold": t,
                "channels_pruned": k,
                "fraction": None if k is None else k / len(order),
                "clean_accuracy": None if step is None else step["clean_accuracy"],
                "attack_success_rate": None if step is None else step["attack_success_rate"],
                "pruned_channels": None if k is None else " ".join(str(int(c)) for c in order[:k]),
                "model": None if k is None else results.bprime(t).relative_to(results.root).as_posix(),
            }
        )
    return pd.DataFrame(table_rows).astype({"channels_pruned": "Int64"})


def _sweep_summary(result: SweepResult, steps: dict[float, int | None]) -> str:
    fired = [f"{rows.pruned(t).name} at {k}" for t, k in steps.items() if k is not None]
    summary = ", ".join(fired) + " channels" if fired else "no threshold reached"
    asr = result.table["attack_success_rate"]
    if fired and asr.notna().any():
        t, k = next((t, k) for t, k in steps.items() if k is not None)
        summary += f"; validation ASR at {rows.pruned(t).name} {asr.iloc[k]:.1f} %"
    return summary


@dataclass(frozen=True)
class Pruned:
    """A B' the sweep saved: its threshold, the channels pruned (in pruning order) and its file."""

    threshold: float
    channels: np.ndarray
    path: Path


def read_pruned(scenario: Scenario) -> list[Pruned]:
    """Every B' of the last sweep, as it recorded them, checked to be that sweep's files."""
    results = scenario.results
    provenance.require_current(results, SWEEP, rerun(scenario, SWEEP))
    table = pd.read_csv(results.thresholds_csv, dtype={"pruned_channels": str}).astype({"channels_pruned": "Int64"})
    chosen = table.dropna(subset=["channels_pruned"])
    return [
        Pruned(float(r.threshold), np.array(r.pruned_channels.split(), dtype=np.int64), results.bprime(r.threshold))
        for r in chosen.itertuples()
    ]
