"""Step 3: what notebook 03 records (the sweep, its thresholds and each B'), and how later steps read the B' models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.core import rows
from lib.core.paths import ResultFiles
from lib.core.step_names import SWEEP
from lib.network.models import save_model
from lib.network.pruning import prune_channels
from lib.report import plots
from lib.report.tables import read_csv, significant, write_csv
from lib.runs import provenance
from lib.runs.workspace import rerun
from lib.steps.common import ACTIVATION_DIGITS, locked
from lib.steps.scenario import Scenario
from lib.sweep.table import SweepResult


@dataclass
class SweepOutcome:
    result: SweepResult
    steps: dict[float, int | None]  # threshold -> channels pruned when it fired (None: never)
    thresholds: pd.DataFrame  # thresholds.csv
    figure: Figure


def record_sweep(scenario: Scenario, result: SweepResult, steps: dict[float, int | None]) -> SweepOutcome:
    """Write notebook 03's sweep and the B' models its thresholds chose, under the run's lock.

    Writes ``sweep.csv``, ``thresholds.csv`` (with the channels pruned at each threshold, in the sweep's
    order: later steps read them there) and, for each threshold reached, B' as ``models/bprime_<t>.h5``;
    B' files of thresholds not reached now are removed. ``steps`` is ``threshold_steps`` of this sweep.
    """
    results = scenario.results
    order = result.order
    with locked(scenario, SWEEP):
        rounded = significant(result.table["mean_activation"], ACTIVATION_DIGITS)
        write_csv(result.table.assign(mean_activation=rounded), results.sweep_csv)
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


def mean_activations_by_channel(ranking: pd.DataFrame) -> np.ndarray:
    """Notebook 02's ranking (``read_activation_table``) as one mean activation per channel, in channel order."""
    means = np.empty(len(ranking))
    means[ranking["channel"].to_numpy()] = ranking["mean_activation"].to_numpy()
    return means


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
    table = read_csv(results.thresholds_csv, dtype={"pruned_channels": str}).astype({"channels_pruned": "Int64"})
    chosen = table.dropna(subset=["channels_pruned"])
    return [
        Pruned(float(r.threshold), np.array(r.pruned_channels.split(), dtype=np.int64), results.bprime(r.threshold))
        for r in chosen.itertuples()
    ]
