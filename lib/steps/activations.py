"""Step 2: what notebook 02 records (its ranking of channels by mean clean activation), and how later steps read it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from lib.core.errors import InputError
from lib.core.step_names import ACTIVATIONS
from lib.report import plots
from lib.report.tables import read_csv, significant, write_csv
from lib.runs import provenance
from lib.runs.workspace import rerun
from lib.steps.common import ACTIVATION_DIGITS, locked
from lib.steps.scenario import Scenario


@dataclass
class ActivationsOutcome:
    table: pd.DataFrame  # activations.csv: rank, channel, mean_activation, dormant
    figure: Figure


def record_activations(scenario: Scenario, table: pd.DataFrame) -> ActivationsOutcome:
    """Write notebook 02's ranking: ``activations.csv`` (means to ``ACTIVATION_DIGITS`` significant digits), its
    figure, and what the step read and wrote (``lib.runs.provenance``), under the run's lock.

    ``table`` is ``lib.defense.activations.activation_table`` of the channels' mean clean activations.
    """
    results = scenario.results
    with locked(scenario, ACTIVATIONS):
        write_csv(
            table.assign(mean_activation=significant(table["mean_activation"], ACTIVATION_DIGITS)),
            results.activations_csv,
        )
        figure = plots.plot_channel_activations(table, scenario.pool_layer)
        plots.save_figure(figure, results.figure("activations"))
        dormant = int(table["dormant"].sum())
        provenance.record_step(
            results,
            ACTIVATIONS,
            [scenario.badnet_path, scenario.clean_path("valid")],
            [results.activations_csv, results.figure("activations")],
            f"{dormant} of {len(table)} channels of {scenario.pool_layer} dormant on clean validation data",
        )
        return ActivationsOutcome(table, figure)


def read_activation_table(scenario: Scenario) -> pd.DataFrame:
    """``activations.csv`` as the activation step wrote it, checked against the model's channel count."""
    results = scenario.results
    provenance.require_current(results, ACTIVATIONS, rerun(scenario, ACTIVATIONS))
    table = read_csv(results.activations_csv)
    n_channels = scenario.badnet.get_layer(scenario.conv_layer).filters
    if sorted(table["channel"].tolist()) != list(range(n_channels)):
        raise InputError(
            results.activations_csv,
            f"does not list each of the model's {n_channels} channels once",
            rerun(scenario, ACTIVATIONS),
        )
    return table
