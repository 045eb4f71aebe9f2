"""The figures: sample images, channel activations, the pruning sweep and the GoodNet table.

Each function returns a Matplotlib figure (the notebooks show it); ``save_figure`` writes it as
PNG atomically, without time stamps, so that a rerun writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from lib.core import rows
from lib.core.atomic import atomic_path

CLEAN_COLOR = "#1f77b4"
ATTACK_COLOR = "#d62728"


def _figure(*grid, figsize: tuple[float, float], **kwargs) -> tuple[Figure, object]:
    """A figure and its axes, outside pyplot's registry: nothing is kept alive or shown twice in a notebook."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG atomically, with no metadata that changes between runs."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png", metadata={"Software": None})
    return path


def plot_sample_grid(
    clean: np.ndarray, triggered: np.ndarray, clean_labels: np.ndarray, triggered_labels: np.ndarray, n: int = 8
) -> Figure:
    """Top row: clean images with their labels; bottom row: triggered images with the label the attacker wants."""
    n = min(n, len(clean), len(triggered))
    fig, axes = _figure(2, n, figsize=(1.4 * n, 4.0), squeeze=False, gridspec_kw={"hspace": 0.45})
    for i in range(n):
        for row, (images, labels, title) in enumerate(
            ((clean, clean_labels, "clean"), (triggered, triggered_labels, "triggered"))
        ):
            ax = axes[row, i]
            ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8))
            ax.set_title(f"{title}\nlabel {int(labels[i])}", fontsize=8)
            ax.axis("off")
    return fig


def plot_channel_activations(table: pd.DataFrame, pool_layer: str) -> Figure:
    """Mean activation of every channel, sorted in pruning order; dormant channels in grey."""
    fig, ax = _figure(figsize=(10, 3.5))
    colors = np.where(table["dormant"], "#9e9e9e", CLEAN_COLOR)
    ax.bar(np.arange(len(table)), table["mean_activation"], color=colors, width=0.85)
    ax.set_xticks(np.arange(len(table)))
    ax.set_xticklabels(table["channel"], rotation=90, fontsize=6)
    ax.set_xlabel("channel (in pruning order)")
    ax.set_ylabel("mean activation on clean validation data")
    ax.set_title(f"{pool_layer}: {int(table['dormant'].sum())} of {len(table)} channels dormant (grey)")
    sns.despine(fig)
    fig.tight_layout()
    return fig


def plot_sweep(
    sweep: pd.DataFrame,
    thresholds: Mapping[float, int | None],
    title: str = "",
    x_max: float = 1.0,
    unit: str = "channels",
) -> Figure:
    """Clean accuracy and attack success rate against the fraction of ``unit`` pruned, with the chosen rows marked
    (B', CLP's u, ANP's mask threshold); ``x_max``: where the axis ends, for a scan that stops early."""
    fig, ax = _figure(figsize=(7, 4.2))
    ax.plot(sweep["fraction"], sweep["clean_accuracy"], color=CLEAN_COLOR, label="clean accuracy (validation)")
    measured_asr = sweep["attack_success_rate"].notna().any()
    if measured_asr:
        ax.plot(
            sweep["fraction"],
            sweep["attack_success_rate"],
            color=ATTACK_COLOR,
            label="attack success rate (validation)",
        )
    per_trigger = [c for c in sweep.columns if c.startswith("attack_success_rate_")]
    for column, style in zip(per_trigger, ["--", "-.", ":", (0, (5, 1))], strict=False):
        ax.plot(
            sweep["fraction"],
            sweep[column],
            color=ATTACK_COLOR,
            lw=0.9,
            ls=style,
            label=f"ASR, {column.removeprefix('attack_success_rate_')}",
        )
    for t, step in thresholds.items():
        if step is None:
            continue
        row = sweep.iloc[step]
        ax.axvline(row["fraction"], color="#777777", lw=0.8, ls=":")
        ax.plot([row["fraction"]], [row["clean_accuracy"]], "o", color=CLEAN_COLOR)
        if measured_asr:
            ax.plot([row["fraction"]], [row["attack_success_rate"]], "o", color=ATTACK_COLOR)
        ax.annotate(
            f"-{t:g} pts: {int(row.get('channels_pruned', step))} pruned",
            (row["fraction"], 4),
            fontsize=7,
            rotation=90,
            ha="right",
            va="bottom",
        )
    ax.set_xlabel(f"fraction of {unit} pruned")
    ax.set_ylabel("percent")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, x_max)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "Pruning sweep")
    sns.despine(fig)
    fig.tight_layout()
    return fig


def plot_goodnet(table: pd.DataFrame, title: str = "") -> Figure:
    """Test accuracy and attack success rate of B, each B' and each G, side by side."""
    long = table.melt(
        id_vars="model", value_vars=["clean_accuracy", "attack_success_rate"], var_name="metric", value_name="percent"
    )
    long["metric"] = long["metric"].map(
        {"clean_accuracy": "clean test accuracy", "attack_success_rate": "attack success rate"}
    )
    fig, ax = _figure(figsize=(max(6, 0.9 * len(table)), 4))
    sns.barplot(data=long, x="model", y="percent", hue="metric", palette=[CLEAN_COLOR, ATTACK_COLOR], ax=ax)
    for container in ax.containers:
        ax.bar_label(container, labels=[_percent_label(v) for v in container.datavalues], fontsize=7)
    ax.set_ylim(0, 108)
    ax.set_xlabel("")
    ax.legend(loc="upper center", ncols=2, fontsize=8, bbox_to_anchor=(0.5, -0.08))
    ax.set_title(title or "GoodNet evaluation (test data)")
    sns.despine(fig)
    fig.tight_layout()
    return fig


def _percent_label(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.1f}"


#: The repairs compared in ``plot_repair_comparison``: label, the row at threshold t, the row without pruning.
REPAIRS = (
    ("pruned B'", rows.pruned, rows.badnet()),
    ("GoodNet of B'", lambda t: rows.pruned(t).goodnet_of(), rows.badnet()),
    ("fine-pruned FP", rows.fine_pruned, rows.fine_tuned()),
    ("GoodNet of FP", lambda t: rows.fine_pruned(t).goodnet_of(), rows.fine_tuned().goodnet_of()),
)


def plot_repair_comparison(table: pd.DataFrame, title: str = "") -> Figure:
    """Pruning against fine-pruning: test accuracy (left) and ASR (right) at each accuracy-drop threshold.

    At "none" no channel is pruned: B itself for the pruning rows, B fine-tuned (FT) for the
    fine-pruning rows, so fine-tuning alone is the left end of the fine-pruning lines.
    """
    by_name = table.set_index("model")
    thresholds = sorted(table["threshold"].dropna().unique())
    ticks = ["none", *(f"{rows.format_threshold(t)} %" for t in thresholds)]
    fig, axes = _figure(1, 2, figsize=(11, 4), sharex=True)
    styles = [
        ("#1f77b4", "-"),
        ("#1f77b4", "--"),
        ("#2ca02c", "-"),
        ("#2ca02c", "--"),
    ]  # pruning blue, fine-pruning green; G dashed
    for (label, at_t, at_zero), (color, ls) in zip(REPAIRS, styles, strict=False):
        names = [at_zero.name, *(at_t(t).name for t in thresholds)]
        present = [n in by_name.index for n in names]
        for ax, metric in zip(axes, ["clean_accuracy", "attack_success_rate"], strict=False):
            values = [by_name.loc[n, metric] if ok else np.nan for n, ok in zip(names, present, strict=False)]
            goodnet = "GoodNet" in label  # drawn over its network's line: open markers keep both visible
            ax.plot(
                ticks,
                values,
                ls=ls,
                marker="o",
                ms=9 if goodnet else 5,
                mfc="none" if goodnet else color,
                color=color,
                label=label,
            )
    for ax, name in zip(axes, ["clean test accuracy (%)", "attack success rate on test data (%)"], strict=False):
        ax.set_ylabel(name)
        ax.set_xlabel("channels pruned until validation accuracy dropped by")
        ax.set_ylim(-2, 102)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title or "Pruning vs fine-pruning (test data)")
    sns.despine(fig)
    fig.tight_layout()
    return fig


def plot_detection(
    scores: pd.DataFrame, roc: pd.DataFrame, detection: pd.DataFrame, threshold: float, title: str = ""
) -> Figure:
    """STRIP against G as detectors. Left: STRIP's entropy of clean validation (calibration), clean test and
    triggered test images, with the threshold. Right: STRIP's ROC on test data (FRR against detection rate
    100 - FAR), its operating point, and each G's and each G+STRIP's single point."""
    fig, axes = _figure(1, 2, figsize=(11, 4))
    groups = [
        ("clean validation (calibration)", scores["split"] == "valid", "#7f7f7f"),
        ("clean test", (scores["split"] == "test") & (scores["set"] == "clean"), CLEAN_COLOR),
        ("triggered test", (scores["split"] == "test") & (scores["set"] != "clean"), ATTACK_COLOR),
    ]
    bins = np.linspace(scores["entropy"].min(), scores["entropy"].max(), 40)
    for label, chosen, color in groups:
        if chosen.any():
            values = scores.loc[chosen, "entropy"]
            axes[0].hist(values, bins=bins, density=True, histtype="step", color=color, label=label)
    axes[0].axvline(threshold, color="black", ls="--", lw=1, label="threshold (flag below)")
    axes[0].set_xlabel("mean entropy of B over the blends (nats)")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    ax = axes[1]
    if roc["FAR"].notna().any():
        ax.plot(roc["FRR"], 100 - roc["FAR"], color="black", lw=1, label="STRIP, every threshold")
    ax.plot([0, 100], [0, 100], color="#bbbbbb", lw=0.8, ls=":")
    markers = {"STRIP": ("*", "black"), "G": ("o", CLEAN_COLOR), "G+STRIP": ("s", "#2ca02c")}
    for row in detection.itertuples():
        kind = "STRIP" if row.detector == "STRIP" else ("G+STRIP" if row.detector.endswith("+STRIP") else "G")
        marker, color = markers[kind]
        ax.plot(row.FRR, 100 - row.FAR, marker=marker, color=color, ms=9, ls="none", label=row.detector)
    ax.set_xlabel("clean test images flagged: FRR (%)")
    ax.set_ylabel("triggered test images flagged: 100 - FAR (%)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "STRIP and the GoodNets as detectors (test data)")
    sns.despine(fig)
    fig.tight_layout()
    return fig
