"""The study's reading in words: every verdict from the paired contrasts (``lib.study.contrasts``).

Each run's models share its attack instance, so whether fine-pruning beats fine-tuning alone is asked seed by
seed, of the difference, never by whether two models' own intervals overlap (that test throws the pairing away
and misses effects that every seed shows). The per-model means and intervals of ``summary.csv`` only set the
scene; each verdict is ``contrasts.verdict``'s, and a contrast the seeds cannot separate says how large a
difference they could have detected.
"""

from __future__ import annotations

import pandas as pd

from lib.core import rows
from lib.study.contrasts import (
    ALPHA,
    METRICS,
    NOT_SEPARATED,
    contrast_label,
    grid_columns,
    grid_points,
    point_label,
    verdict_sentence,
)
from lib.study.stats import INTERVAL_NAME

ACCURACY, ASR = "clean_accuracy", "attack_success_rate"


def _show(row: pd.Series | None, metric: str) -> str:
    if row is None or pd.isna(row[f"{metric}_mean"]):
        return "not measured"
    if pd.isna(row[f"{metric}_ci_low"]):
        return f"{row[f'{metric}_mean']:.1f} % (one run: no interval)"
    return f"{row[f'{metric}_mean']:.1f} % [{row[f'{metric}_ci_low']:.1f}, {row[f'{metric}_ci_high']:.1f}]"


def _scene(title: str, summary: pd.DataFrame) -> str:
    """The opening line: B's numbers, fine-tuning's and fine-pruning's ASR, each with its interval."""
    by_model = {row["model"]: row for _, row in summary.iterrows()}
    b, ft = by_model.get(rows.badnet().name), by_model.get(rows.fine_tuned().name)
    n = int(b["n"]) if b is not None else 0
    text = f"**{title}** ({n} seeds): B's ASR {_show(b, ASR)}, clean accuracy {_show(b, ACCURACY)}"
    if ft is not None:
        text += f"; fine-tuning alone ({rows.fine_tuned().name}) leaves ASR {_show(ft, ASR)}"
    fine = [rows.fine_pruned(t).name for t in sorted(summary["threshold"].dropna().unique())]
    shown = [f"{name} {_show(by_model[name], ASR)}" for name in fine if name in by_model]
    if shown:
        text += f"; fine-pruning: ASR {', '.join(shown)}"
    return text + "."


def _verdicts(contrasts: pd.DataFrame) -> list[str]:
    """A line naming the separated contrasts, then per question one bullet with a sub-bullet per metric."""
    separated = contrasts[contrasts["verdict"] != NOT_SEPARATED]
    if separated.empty:
        lines = [f"* No contrast is separated by these seeds ({len(contrasts)} asked)."]
    else:
        named = [
            f"{METRICS[metric]} {contrast_label(r)} {r['verdict']}"
            for metric in (ASR, ACCURACY)
            for _, r in separated[separated["metric"] == metric].iterrows()
        ]
        lines = [f"* Separated by the paired test ({len(separated)} of {len(contrasts)}): {'; '.join(named)}."]
    for question, asked in contrasts.groupby("question", sort=False):
        lines.append(f"* **{question}**")
        for metric in (ASR, ACCURACY):
            part = asked[asked["metric"] == metric]
            if not part.empty:
                sentences = "; ".join(verdict_sentence(r) for _, r in part.iterrows())
                lines.append(f"  * {METRICS[metric]}: {sentences}.")
    return lines


def read_study(summary: pd.DataFrame, contrasts: pd.DataFrame) -> str:
    """The reading of a study as Markdown: per dataset (and grid point) its scene and the verdicts of its
    contrasts; with a grid, then the contrasts between grid points. ``summary``/``contrasts``: ``summary.csv``
    and ``contrasts.csv`` as ``lib.study.aggregate`` makes them."""
    grid = grid_columns(contrasts)
    paragraphs = []
    for dataset, block in summary.groupby("dataset", sort=False):
        of_dataset = contrasts[contrasts["dataset"] == dataset]
        within = of_dataset[[all(r[g] == r[f"{g}_b"] for g in grid) for _, r in of_dataset.iterrows()]]
        for point, part in grid_points(block, grid):
            title = f"{dataset}, {point_label(point)}" if point else dataset
            mask = [all(r[g] == v for g, v in point.items()) for _, r in within.iterrows()]
            paragraphs.append("\n".join([_scene(title, part), *_verdicts(within[mask])]))
        between = of_dataset.drop(within.index)
        if grid and not between.empty:
            paragraphs.append("\n".join([f"**{dataset}, between grid points** (same model):", *_verdicts(between)]))
    paragraphs.append(
        "A verdict compares two models seed by seed: the difference a - b in each seed, its mean over the seeds "
        f"with its {INTERVAL_NAME}, and the exact Wilcoxon signed-rank test of the differences, Holm-adjusted over "
        f"the family. Lower or higher when the adjusted p < {ALPHA}, the interval excludes 0 and the signed ranks "
        "lean the same way (``contrasts.verdict``); otherwise "
        f"{NOT_SEPARATED}, which does not show that the two are equal: ± is about the smallest difference these "
        "seeds could have detected."
    )
    return "\n\n".join(paragraphs)
