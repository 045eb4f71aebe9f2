"""The study's reading in words, computed from its summary: which differences exceed the spread of the seeds.

Two intervals that do not overlap mark a difference larger than the seeds' spread; overlapping ones do not
show that the two are equal, only that this many seeds cannot tell them apart.
"""

from __future__ import annotations

import itertools

import pandas as pd

from lib import rows
from lib.study.stats import Interval

ACCURACY, ASR = "clean_accuracy", "attack_success_rate"


def _interval(row: pd.Series, metric: str) -> Interval:
    return Interval(
        int(row["n"]),
        row[f"{metric}_mean"],
        row[f"{metric}_sd"],
        row[f"{metric}_ci_low"],
        row[f"{metric}_ci_high"],
    )


def _show(i: Interval) -> str:
    if pd.isna(i.mean):
        return "not measured"
    if pd.isna(i.low):
        return f"{i.mean:.1f} % (one run: no interval)"
    return f"{i.mean:.1f} % [{i.low:.1f}, {i.high:.1f}]"


def _versus(a: Interval, b: Interval) -> str:
    if pd.isna(a.low) or pd.isna(b.low):
        return "cannot be compared (fewer than two runs or not measured)"
    if a.overlaps(b):
        return "overlap: within the spread of the seeds"
    return f"do not overlap: {'lower' if a.mean < b.mean else 'higher'} beyond the spread of the seeds"


def read_dataset(dataset: str, table: pd.DataFrame) -> str:
    """One paragraph and a list for one dataset's rows of ``summary.csv``."""
    by_model = {row["model"]: row for _, row in table.iterrows()}
    asr = {m: _interval(r, ASR) for m, r in by_model.items()}
    acc = {m: _interval(r, ACCURACY) for m, r in by_model.items()}
    b = rows.badnet().name
    n = int(by_model[b]["n"]) if b in by_model else 0
    lines = [
        f"**{dataset}** ({n} seeds): B's ASR {_show(asr.get(b, _nan()))}, clean accuracy {_show(acc.get(b, _nan()))}."
    ]
    thresholds = sorted(table["threshold"].dropna().unique())
    fp_names = []
    for t in thresholds:
        pruned, fine = rows.pruned(t).name, rows.fine_pruned(t).name
        if pruned in asr and fine in asr:
            lines.append(
                f"* {rows.format_threshold(t)} points: ASR of pruning alone ({pruned}) {_show(asr[pruned])}, of "
                f"fine-pruning ({fine}) {_show(asr[fine])}; fine-pruning's and pruning's intervals "
                f"{_versus(asr[fine], asr[pruned])}."
            )
            fp_names.append(fine)
    ft = rows.fine_tuned().name
    if ft in asr and fp_names:
        parts = [f"{name}: {_versus(asr[name], asr[ft]).split(':')[0]}" for name in fp_names]
        lines.append(f"* Fine-tuning alone ({ft}) leaves ASR {_show(asr[ft])}; against it, {'; '.join(parts)}.")
    pairs = [(x, y) for x, y in itertools.combinations(fp_names, 2)]
    if pairs:
        overlapping = [f"{x} and {y}" for x, y in pairs if asr[x].overlaps(asr[y])]
        apart = [f"{x} and {y}" for x, y in pairs if not asr[x].overlaps(asr[y])]
        text = "* Between thresholds: "
        text += f"the ASR intervals of {', '.join(overlapping)} overlap" if overlapping else "no ASR intervals overlap"
        text += f"; those of {', '.join(apart)} do not." if apart else ": the seeds cannot tell these thresholds apart."
        lines.append(text)
    if b in acc and fp_names:
        costs = [f"{name} {_show(acc[name])} ({_versus(acc[name], acc[b]).split(':')[0]})" for name in fp_names]
        lines.append(f"* Clean accuracy after fine-pruning, against B's: {'; '.join(costs)}.")
    return "\n".join(lines)


def _nan() -> Interval:
    nan = float("nan")
    return Interval(0, nan, nan, nan, nan)


def read_study(summary: pd.DataFrame) -> str:
    """The reading of every dataset of ``summary.csv``, as Markdown."""
    paragraphs = [read_dataset(d, t) for d, t in summary.groupby("dataset", sort=False)]
    paragraphs.append(
        "Intervals that do not overlap show a difference larger than the seeds' spread; overlapping ones only "
        "say that these seeds cannot separate the two."
    )
    return "\n\n".join(paragraphs)
