"""The study's figures (seaborn): every band and bar is the ``lib.study.stats`` interval of the mean over seeds.

The threshold and sweep figures show each model's mean over the seeds; the pairs figure joins each seed's
models by a line, so a reader sees the pairing the verdicts use, and the forest figure shows those verdicts
(``lib.study.contrasts``). With a grid, each dataset and grid point gets its own panel. Figures are made
without pyplot, so that a notebook shows each once, where it displays it, and none stays open after it is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from lib.core import rows
from lib.report import plots
from lib.study.contrasts import METRICS, NOT_SEPARATED, block_labels, contrast_label, grid_points, point_label
from lib.study.stats import INTERVAL_NAME, bounds, interval

METRIC_LABELS = {"clean_accuracy": "clean accuracy (%)", "attack_success_rate": "attack success rate (%)"}
#: The defenses that choose their own channels at B's budgets (notebooks 06 and 08; older runs have neither).
OWN_CHOICE = {"CLP": rows.lipschitz, "ANP": rows.adversarial}
#: The repairs of the threshold figure: each run's fine-pruning figure's (``plots.REPAIRS``), then ``OWN_CHOICE``,
#: each from B.
REPAIRS = (*plots.REPAIRS, *((label, defense, rows.badnet()) for label, defense in OWN_CHOICE.items()))
#: One colour and dash per repair, as in each run's fine-pruning figure: pruning blue, fine-pruning green, G dashed.
STYLES = {
    "pruned B'": ("#1f77b4", ""),
    "GoodNet of B'": ("#1f77b4", (4, 2)),
    "fine-pruned FP": ("#2ca02c", ""),
    "GoodNet of FP": ("#2ca02c", (4, 2)),
    "CLP": ("#ff7f0e", ""),
    "ANP": ("#9467bd", ""),
}


def repair_points(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs.csv`` rearranged for the threshold figure: per repair (``REPAIRS``, those the runs have) and run,
    one point per threshold, the unpruned model (B, or FT for fine-pruning) at position 0, labelled "none"."""
    thresholds = sorted(runs["threshold"].dropna().unique())
    ticks = ["none", *(f"{rows.format_threshold(t)} %" for t in thresholds)]
    points = []
    for label, at_t, at_zero in REPAIRS:
        at = {at_t(t).name: i + 1 for i, t in enumerate(thresholds)}
        if not runs["model"].isin(at).any():
            continue
        names = {at_zero.name: 0, **at}
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


def panels(runs: pd.DataFrame, grid: Sequence[str] = ()) -> list[tuple[str, pd.DataFrame]]:
    """``(title, rows)`` per dataset, and per grid point of each where ``grid`` names grid columns."""
    return [
        (f"{dataset}, {point_label(point)}" if point else str(dataset), part)
        for dataset, data in runs.groupby("dataset", sort=False)
        for point, part in grid_points(data, grid)
    ]


def threshold_figure(runs: pd.DataFrame, grid: Sequence[str] = ()) -> Figure:
    """Test accuracy (top) and ASR (bottom) against the pruning threshold, per dataset (and grid point: columns),
    for B', FP, their GoodNets, CLP and ANP: mean over seeds with interval bands."""
    columns = panels(runs, grid)
    fig = Figure(figsize=(5.5 * len(columns), 7))
    axes = fig.subplots(2, len(columns), sharex=True, squeeze=False)
    longs = [repair_points(part) for _, part in columns]
    # the legend of the panel with the most repairs (a dataset may lack some: a part of a study not yet run)
    keyed = max(range(len(columns)), key=lambda c: (longs[c]["repair"].nunique(), c))
    for col, ((title, part), long) in enumerate(zip(columns, longs, strict=True)):
        present = set(long["repair"])
        shown = [r for r in STYLES if r in present]
        for row, metric in enumerate(METRIC_LABELS):
            ax = axes[row, col]
            data = long[long["metric"] == metric]
            sns.lineplot(
                data=data,
                x="position",
                y="percent",
                hue="repair",
                style="repair",
                hue_order=shown,
                style_order=shown,
                palette={k: STYLES[k][0] for k in shown},
                dashes={k: STYLES[k][1] for k in shown},
                markers=True,
                errorbar=bounds,
                err_kws={"alpha": 0.15},
                ax=ax,
                legend=row == 0 and col == keyed,
            )
            if (legend := ax.get_legend()) is not None:  # moved beside the last column, where it has room
                handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
                legend.remove()
                axes[0, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
            ax.set_ylim(-2, 104)
            ax.set_ylabel(METRIC_LABELS[metric] if col == 0 else "")
            ax.set_xticks(range(len(long.attrs["ticks"])), long.attrs["ticks"])
            ax.set_xlabel("pruned until validation accuracy dropped by" if row == 1 else "")
            if row == 0:
                ax.set_title(f"{title} ({part['seed'].nunique()} seeds)")
    fig.suptitle(f"The repairs at each budget on test data: mean and {INTERVAL_NAME}", fontsize=10)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def sweep_figure(sweeps: pd.DataFrame, grid: Sequence[str] = ()) -> Figure:
    """Every run's pruning sweep (thin lines) and per dataset the mean with its interval band (validation data).

    With a grid, a sweep that the grid points share (the grid acts after pruning) is counted once per seed.
    """
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    datasets = list(dict.fromkeys(sweeps["dataset"]))
    palette = dict(zip(datasets, sns.color_palette("deep", len(datasets)), strict=True))
    grid = list(grid)
    sweeps = sweeps.drop_duplicates([c for c in sweeps.columns if c not in grid])
    sweeps = sweeps.assign(run=sweeps[["seed", *grid]].astype(str).agg("-".join, axis=1))
    for ax, metric in zip(axes, METRIC_LABELS, strict=True):
        data = sweeps.dropna(subset=[metric])
        if data.empty:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        else:
            common = {"data": data, "x": "fraction", "y": metric, "hue": "dataset", "palette": palette, "ax": ax}
            sns.lineplot(**common, units="run", estimator=None, lw=0.6, alpha=0.3, legend=False)
            sns.lineplot(**common, errorbar=bounds, lw=1.8, legend=metric == "clean_accuracy")
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


def pairs_figure(runs: pd.DataFrame, grid: Sequence[str] = ()) -> Figure:
    """Per dataset (and grid point: columns), accuracy (top) and ASR (bottom) of B, each B' (thresholds
    ascending), FT, each FP, each CLP and each ANP (where the runs have them): each seed's models joined by one
    thin line (one colour per seed), and in black each model's mean over the seeds with its interval. A
    contrast's verdict asks whether the lines of the seeds fall between its two models the same way."""
    columns = [(title, part, _pairs_order(part)) for title, part in panels(runs, grid)]
    width = max(5.5, 1.6 + 0.5 * max(len(order) for _, _, order in columns))
    fig = Figure(figsize=(width * len(columns), 7.5))
    axes = fig.subplots(2, len(columns), squeeze=False)
    for col, (title, part, order) in enumerate(columns):
        seeds = sorted(part["seed"].unique())
        colors = sns.color_palette("husl", len(seeds))
        x = np.arange(len(order))
        own_kinds = {defense(1).kind for defense in OWN_CHOICE.values()}
        own_choice = [o for o in order if rows.parse_row(o).kind in own_kinds]
        separators = [m for m in (rows.fine_tuned().name, *own_choice[:1]) if m in order]  # dotted lines before
        for row, metric in enumerate(METRIC_LABELS):
            ax = axes[row, col]
            wide = part.pivot(index="seed", columns="model", values=metric).reindex(index=seeds, columns=order)
            for color, (_, values) in zip(colors, wide.iterrows(), strict=True):
                ax.plot(x, values.to_numpy(dtype=float), color=color, lw=0.7, alpha=0.75, marker="o", ms=2.5)
            intervals = [interval(wide[m]) for m in order]
            ax.vlines(x, [i.low for i in intervals], [i.high for i in intervals], color="black", lw=2, zorder=3)
            ax.plot(x, [i.mean for i in intervals], "_", color="black", ms=16, mew=2, zorder=3)
            for first in separators:
                ax.axvline(order.index(first) - 0.5, color="0.7", ls=":", lw=1)
            ax.set_xticks(x, order if row == 1 else [], rotation=45 if len(order) > 6 else 0)
            ax.set_ylabel(METRIC_LABELS[metric] if col == 0 else "")
            if metric == "attack_success_rate":
                ax.set_ylim(-2, 104)
            if row == 0:
                ax.set_title(f"{title} ({len(seeds)} seeds)")
    fig.suptitle(
        f"Each seed's models joined by a line (one colour per seed); black: mean and {INTERVAL_NAME}", fontsize=10
    )
    sns.despine(fig)
    fig.tight_layout()
    return fig


def _pairs_order(part: pd.DataFrame) -> list[str]:
    """The models of the pairs figure that these runs have: B, each B', FT, each FP, then each of ``OWN_CHOICE``,
    thresholds ascending within each."""
    thresholds = sorted(part["threshold"].dropna().unique())
    chain = [
        rows.badnet(),
        *map(rows.pruned, thresholds),
        rows.fine_tuned(),
        *(defense(t) for defense in (rows.fine_pruned, *OWN_CHOICE.values()) for t in thresholds),
    ]
    present = set(part["model"])
    return [m.name for m in chain if m.name in present]


#: The forest figure's colour per verdict (a - b): lower blue, higher red, not separated grey.
VERDICT_COLORS = {"lower": "#1f77b4", "higher": "#d62728", NOT_SEPARATED: "0.45"}


def forest_figure(contrasts: pd.DataFrame) -> Figure:
    """Every contrast's mean difference a - b with its interval (accuracy left, ASR right), a block per dataset
    (and grid point, and between grid points), a line at 0: filled markers are separated by the paired test."""
    table = contrasts.assign(label=[contrast_label(r) for _, r in contrasts.iterrows()])
    blocks = [
        (title, block, list(dict.fromkeys(block["label"])))
        for title, block in table.groupby(block_labels(table), sort=False)
    ]
    if not blocks:
        fig = Figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "no contrasts", ha="center")
        return fig
    heights = [len(labels) + 1.5 for _, _, labels in blocks]
    height = 1.2 + 0.2 * sum(heights)
    fig = Figure(figsize=(12, height))
    axes = fig.subplots(len(blocks), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for r, (title, block, labels) in enumerate(blocks):
        for c, metric in enumerate(METRIC_LABELS):
            ax = axes[r, c]
            part = block[block["metric"] == metric]
            y = [labels.index(label) for label in part["label"]]
            colors = [VERDICT_COLORS.get(v, "0.45") for v in part["verdict"]]
            filled = [col if v != NOT_SEPARATED else "white" for col, v in zip(colors, part["verdict"], strict=True)]
            if part.empty:
                ax.text(0.5, 0.5, "no contrast: unchanged in every seed", ha="center", transform=ax.transAxes)
            ax.axvline(0, color="0.6", lw=0.8)
            ax.hlines(y, part["low"], part["high"], colors=colors, lw=1.5)
            ax.scatter(part["mean_difference"], y, s=22, c=filled, edgecolors=colors, zorder=3)
            ax.set_yticks(range(len(labels)), labels if c == 0 else [], fontsize=8)
            ax.set_ylim(len(labels) - 0.5, -0.5)
            ax.set_title(f"{title}: {METRICS[metric]}", fontsize=9)
            ax.set_xlabel("difference a - b (points)" if r == len(blocks) - 1 else "")
    fig.suptitle(
        f"Paired differences a - b: mean over seeds and {INTERVAL_NAME}\nfilled: separated (Holm-adjusted exact "
        "Wilcoxon p < 0.05 and interval excluding 0; blue lower, red higher), open: not separated",
        fontsize=9,
    )
    sns.despine(fig)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # room for the two-line title at any height
    return fig
