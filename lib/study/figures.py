"""The study's figures (seaborn): every band is the ``lib.study.stats`` interval of the mean over seeds.

Figures are made without pyplot, so that a notebook shows each once, where it displays it, and none stays
open after it is dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from lib import plots, rows
from lib.study.stats import INTERVAL_NAME, t_bounds

METRIC_LABELS = {"clean_accuracy": "clean accuracy (%)", "attack_success_rate": "attack success rate (%)"}
#: One colour and dash per repair, as in each run's fine-pruning figure: pruning blue, fine-pruning green, G dashed.
STYLES = {
    "pruned B'": ("#1f77b4", ""),
    "GoodNet of B'": ("#1f77b4", (4, 2)),
    "fine-pruned FP": ("#2ca02c", ""),
    "GoodNet of FP": ("#2ca02c", (4, 2)),
}


def repair_points(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs.csv`` rearranged for the threshold figure: per repair (``plots.REPAIRS``) and run, one point per
    threshold, the unpruned model (B, or FT for fine-pruning) at position 0, labelled "none"."""
    thresholds = sorted(runs["threshold"].dropna().unique())
    ticks = ["none", *(f"{rows.format_threshold(t)} %" for t in thresholds)]
    points = []
    for label, at_t, at_zero in plots.REPAIRS:
        names = {at_zero.name: 0, **{at_t(t).name: i + 1 for i, t in enumerate(thresholds)}}
        chosen = runs[runs["model"].isin(names)]
        points.append(chosen.assign(repair=label, position=chosen["model"].map(names)))
    long = pd.concat(points, ignore_index=True).melt(
        id_vars=["dataset", "seed", "repair", "position"],
        value_vars=list(METRIC_LABELS),
        var_name="metric",
        value_name="percent",
    )
    long.attrs["ticks"] = ticks
    return long


def threshold_figure(runs: pd.DataFrame) -> Figure:
    """Test accuracy (top) and ASR (bottom) against the pruning threshold, per dataset (columns), for B', FP
    and their GoodNets: mean over seeds with interval bands."""
    long = repair_points(runs)
    datasets = list(dict.fromkeys(runs["dataset"]))
    fig = Figure(figsize=(5.5 * len(datasets), 7))
    axes = fig.subplots(2, len(datasets), sharex=True, squeeze=False)
    for col, dataset in enumerate(datasets):
        for row, metric in enumerate(METRIC_LABELS):
            ax = axes[row, col]
            data = long[(long["dataset"] == dataset) & (long["metric"] == metric)]
            sns.lineplot(
                data=data,
                x="position",
                y="percent",
                hue="repair",
                style="repair",
                hue_order=list(STYLES),
                style_order=list(STYLES),
                palette={k: c for k, (c, _) in STYLES.items()},
                dashes={k: d for k, (_, d) in STYLES.items()},
                markers=True,
                errorbar=t_bounds,
                err_kws={"alpha": 0.15},
                ax=ax,
                legend=row == 0 and col == len(datasets) - 1,
            )
            if ax.get_legend() is not None:
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False, title=None)
            ax.set_ylim(-2, 104)
            ax.set_ylabel(METRIC_LABELS[metric] if col == 0 else "")
            ax.set_xticks(range(len(long.attrs["ticks"])), long.attrs["ticks"])
            ax.set_xlabel("pruned until validation accuracy dropped by" if row == 1 else "")
            if row == 0:
                n = runs.loc[runs["dataset"] == dataset, "seed"].nunique()
                ax.set_title(f"{dataset} ({n} seeds)")
    fig.suptitle(f"Pruning vs fine-pruning on test data: mean and {INTERVAL_NAME}", fontsize=10)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def sweep_figure(sweeps: pd.DataFrame) -> Figure:
    """Every run's pruning sweep (thin lines) and per dataset the mean with its interval band (validation data)."""
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    datasets = list(dict.fromkeys(sweeps["dataset"]))
    palette = dict(zip(datasets, sns.color_palette("deep", len(datasets)), strict=True))
    for ax, metric in zip(axes, METRIC_LABELS, strict=True):
        data = sweeps.dropna(subset=[metric])
        if data.empty:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        else:
            common = {"data": data, "x": "fraction", "y": metric, "hue": "dataset", "palette": palette, "ax": ax}
            sns.lineplot(**common, units="seed", estimator=None, lw=0.6, alpha=0.3, legend=False)
            sns.lineplot(**common, errorbar=t_bounds, lw=1.8, legend=metric == "clean_accuracy")
        ax.set_title(METRIC_LABELS[metric].replace(" (%)", " on validation data"), fontsize=10)
        ax.set_ylabel("percent")
        ax.set_xlabel("fraction of channels pruned")
        ax.set_xlim(0, 1)
        ax.set_ylim(-2, 102)
        ax.set_xticks(np.linspace(0, 1, 6))
    fig.suptitle(f"Pruning sweeps of every run; mean and {INTERVAL_NAME} per dataset", fontsize=10)
    sns.despine(fig)
    fig.tight_layout()
    return fig
