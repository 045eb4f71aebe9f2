"""Step 2, notebook 02: the mean activation of every channel of the pooling layer on clean validation data."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from lib import activations as act
from lib import plots, provenance
from lib.errors import InputError
from lib.models import BATCH_SIZE
from lib.scenario import Scenario
from lib.steps.common import ACTIVATION_DIGITS, ACTIVATIONS, locked, rerun
from lib.tables import significant, write_csv


@dataclass
class ActivationsOutcome:
    table: pd.DataFrame  # activations.csv: rank, channel, mean_activation, dormant
    figure: Figure


def analyse_activations(scenario: Scenario, batch_size: int = BATCH_SIZE, progress: bool = True) -> ActivationsOutcome:
    """Mean activation of every pooling channel on clean validation data, in pruning order.

    Writes ``activations.csv`` (means to ``ACTIVATION_DIGITS`` significant digits) and its figure.
    """
    results = scenario.results
    with locked(scenario, ACTIVATIONS):
        pooled = act.pool_activations(
            scenario.badnet,
            scenario.clean_path("valid"),
            scenario.pool_layer,
            batch_size=batch_size,
            progress=progress,
            desc="clean validation",
        )
        table = act.activation_table(act.mean_channel_activations(pooled))
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
    table = pd.read_csv(results.activations_csv)
    n_channels = scenario.badnet.get_layer(scenario.conv_layer).filters
    if sorted(table["channel"].tolist()) != list(range(n_channels)):
        raise InputError(
            results.activations_csv,
            f"does not list each of the model's {n_channels} channels once",
            rerun(scenario, ACTIVATIONS),
        )
    return table
