"""Paired contrasts: the study's verdicts, from per-seed differences between models of the same run.

Within one seed every model (B, each B', FT, each FP and their GoodNets) comes from the same attack instance, so
two models are compared by their difference in each seed, not by their intervals over the seeds: the seed's
own draw (how strong its backdoor is, how its fine-tuning went) cancels out of the difference. Each contrast
``a - b`` of a metric (percentage points, test data) gets, over the seeds that have both models:

* the mean difference and its interval (``lib.study.stats``, the same interval as every other);
* the exact two-sided Wilcoxon signed-rank p-value (zero differences dropped), and Holm's adjustment over its
  family: one dataset, metric and grid point; between grid points, one dataset and metric. A contrast whose
  differences are all zero (G_t - B'_t where B is right on every clean image, say) cannot be rejected whatever
  the signs: it keeps p = 1 and is not counted in its family's size, so it dilutes nothing;
* how many seeds put a below and above b (ties: neither), and the verdict of ``verdict``.

The standard family, from the thresholds in the data: each B'_t - B, G_t - B'_t, FP_t - FT, FP_t - B'_t,
GFP_t - FP_t, then each other defense at the same budget against both (CLP_t - B'_t, CLP_t - FP_t, ANP_t - B'_t,
ANP_t - FP_t), then consecutive thresholds (B'_4% - B'_2%, ..., the same for FP), then the study file's own
pairs. With a grid, each model is also compared between consecutive values of each grid parameter (the others
held), larger minus smaller: these rows hold a's value in the parameter's column and b's in ``<param>_b``. A
model that no grid step changes in any seed (B, when the grid is a fine-tuning parameter) is left out there:
its test has p = 1 whatever the signs.

Differences are rounded to ``stats.DECIMALS`` once, before anything is computed from them: two rates that are
the same count of images may differ in their last float bits, and must be a zero, not a win.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from numbers import Real

import numpy as np
import pandas as pd

from lib.core import rows
from lib.study import stats

METRICS = {"clean_accuracy": "clean accuracy", "attack_success_rate": "ASR"}
ALPHA = 0.05
LOWER, HIGHER, NOT_SEPARATED = "lower", "higher", "not separated by these seeds"
COLUMNS = [
    "dataset",
    "metric",
    "model_a",
    "model_b",
    "n",
    "mean_difference",
    "low",
    "high",
    "p_value",
    "p_holm",
    "seeds_a_lower",
    "seeds_a_higher",
    "verdict",
    "detectable",
    "question",
]
#: What each part of the standard family asks, as the ``question`` column names it.
PRUNING = f"pruning alone ({rows.PRUNED} - {rows.BADNET})"
GOODNET = f"its GoodNet ({rows.GOODNET_MARK} - {rows.PRUNED})"
FP_VS_FT = f"fine-pruning against fine-tuning alone ({rows.FINE_PRUNED} - {rows.FINE_TUNED})"
FP_VS_PRUNED = f"fine-pruning against pruning alone ({rows.FINE_PRUNED} - {rows.PRUNED})"
FP_GOODNET = f"the GoodNet of fine-pruning ({rows.GOODNET_MARK}{rows.FINE_PRUNED} - {rows.FINE_PRUNED})"
CLP_VS_PRUNED = f"CLP against activation pruning ({rows.LIPSCHITZ} - {rows.PRUNED})"
CLP_VS_FP = f"CLP against fine-pruning ({rows.LIPSCHITZ} - {rows.FINE_PRUNED})"
ANP_VS_PRUNED = f"ANP against activation pruning ({rows.ADVERSARIAL} - {rows.PRUNED})"
ANP_VS_FP = f"ANP against fine-pruning ({rows.ADVERSARIAL} - {rows.FINE_PRUNED})"
PRUNED_STEPS = f"a larger threshold, pruning alone ({rows.PRUNED})"
FP_STEPS = f"a larger threshold, fine-pruning ({rows.FINE_PRUNED})"
EXTRA = "asked by the study file"
#: The detectors' rates (notebook 07's detection.csv), compared between detectors of the same runs.
DETECTION_METRICS = {
    "FRR": "false-rejection rate (clean images flagged)",
    "FAR": "false-acceptance rate (triggered images let through)",
}
STRIP_VS_G = f"STRIP against G's own detector (STRIP - {rows.GOODNET_MARK})"
G_WITH_STRIP = f"G with STRIP against G alone ({rows.GOODNET_MARK}+STRIP - {rows.GOODNET_MARK})"


def standard_pairs(thresholds: Sequence[float]) -> list[tuple[str, str, str]]:
    """``(question, model_a, model_b)`` of the standard family for these thresholds (ascending)."""
    ts = sorted(thresholds)
    b, ft = rows.badnet(), rows.fine_tuned()
    pairs = []
    for question, make in (
        (PRUNING, lambda t: (rows.pruned(t), b)),
        (GOODNET, lambda t: (rows.pruned(t).goodnet_of(), rows.pruned(t))),
        (FP_VS_FT, lambda t: (rows.fine_pruned(t), ft)),
        (FP_VS_PRUNED, lambda t: (rows.fine_pruned(t), rows.pruned(t))),
        (FP_GOODNET, lambda t: (rows.fine_pruned(t).goodnet_of(), rows.fine_pruned(t))),
        (CLP_VS_PRUNED, lambda t: (rows.lipschitz(t), rows.pruned(t))),
        (CLP_VS_FP, lambda t: (rows.lipschitz(t), rows.fine_pruned(t))),
        (ANP_VS_PRUNED, lambda t: (rows.adversarial(t), rows.pruned(t))),
        (ANP_VS_FP, lambda t: (rows.adversarial(t), rows.fine_pruned(t))),
    ):
        pairs += [(question, *(m.name for m in make(t))) for t in ts]
    for question, make in ((PRUNED_STEPS, rows.pruned), (FP_STEPS, rows.fine_pruned)):
        pairs += [(question, make(hi).name, make(lo).name) for lo, hi in itertools.pairwise(ts)]
    return pairs


def detector_pairs(detectors: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(question, detector_a, detector_b)`` for the detectors of detection.csv: for each G_t, STRIP - G_t and
    G_t+STRIP - G_t."""
    goodnets = [d for d in detectors if _is_pruned_goodnet(d)]
    return [(q, a, g) for g in goodnets for q, a in ((STRIP_VS_G, "STRIP"), (G_WITH_STRIP, f"{g}+STRIP"))]


def _is_pruned_goodnet(name: str) -> bool:
    try:
        row = rows.parse_row(name)
    except ValueError:
        return False
    return row.goodnet and row.kind == rows.PRUNED


def detector_contrast_table(detection: pd.DataFrame, grid: Sequence[str] = ()) -> pd.DataFrame:
    """The paired contrasts between detectors of the same runs (``detector_pairs``), on FRR and FAR: the columns
    of ``contrast_table`` (``model_a``/``model_b`` name the detectors), one Holm family per dataset, grid point
    and rate."""
    grid = list(grid)
    out: list[dict] = []
    for dataset, data in detection.groupby("dataset", sort=False):
        for point, part in grid_points(data, grid):
            labels = {"dataset": dataset, **point, **{f"{g}_b": v for g, v in point.items()}}
            pairs = detector_pairs(list(dict.fromkeys(part["detector"])))
            for metric in DETECTION_METRICS:
                wide = part.pivot(index="seed", columns="detector", values=metric)
                family = [
                    labels | {"metric": metric, "model_a": a, "model_b": b, "question": q} | paired(wide[a], wide[b])
                    for q, a, b in pairs
                    if a in wide and b in wide
                ]
                out += _adjusted(family)
    columns = [COLUMNS[0], *(c for g in grid for c in (g, f"{g}_b")), *COLUMNS[1:]]
    return pd.DataFrame(out, columns=columns)


def verdict(p_holm: float, low: float, high: float, direction: int) -> str:
    """Lower or higher (a - b) when Holm's p < 0.05, the interval excludes 0 and the signed ranks lean the same
    way (``stats.rank_direction``); else not separated.

    All three are asked: the test says whether the signs could be chance, the interval how large the difference
    is, and the direction that the test's rejecting tail and the interval agree; NaN (fewer than two seeds)
    never separates.
    """
    if not p_holm < ALPHA:
        return NOT_SEPARATED
    if low > 0 and direction > 0:
        return HIGHER
    return LOWER if high < 0 and direction < 0 else NOT_SEPARATED


def paired(a: pd.Series, b: pd.Series) -> dict[str, float]:
    """The numbers of one contrast ``a - b`` from two series indexed by seed (NaN: that seed left out)."""
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    d = np.round((both.iloc[:, 0] - both.iloc[:, 1]).to_numpy(), stats.DECIMALS) + 0.0  # + 0.0: no -0.0
    i, s = stats.interval(d), stats.signs(d)
    return {
        "n": i.n,
        "mean_difference": round(i.mean, stats.DECIMALS) + 0.0 if i.n else math.nan,
        "low": i.low,
        "high": i.high,
        "p_value": stats.wilcoxon_p(d) if i.n else math.nan,
        "seeds_a_lower": int((s < 0).sum()),
        "seeds_a_higher": int((s > 0).sum()),
        "detectable": i.half_width,
        "direction": stats.rank_direction(d),
    }


def contrast_table(runs: pd.DataFrame, extra: Sequence[tuple[str, str]] = (), grid: Sequence[str] = ()) -> pd.DataFrame:
    """Every contrast of ``runs.csv`` rows (see the module): ``COLUMNS``, with ``<param>, <param>_b`` after
    ``dataset`` for each grid column named in ``grid``."""
    grid = list(grid)
    absent = [g for g in grid if g not in runs.columns]
    if absent:
        raise KeyError(f"grid column(s) {absent} not in the runs table")
    out: list[dict] = []
    for dataset, data in runs.groupby("dataset", sort=False):
        for point, part in grid_points(data, grid):
            thresholds = part["threshold"].dropna().unique()
            pairs: dict[tuple[str, str], str] = {}  # a pair asked twice is one contrast, named as first asked
            for q, a, b in [*standard_pairs(thresholds), *((EXTRA, a, b) for a, b in extra)]:
                pairs.setdefault((a, b), q)
            labels = {"dataset": dataset, **point, **{f"{g}_b": v for g, v in point.items()}}
            for metric in METRICS:
                wide = part.pivot(index="seed", columns="model", values=metric)
                family = [
                    labels | {"metric": metric, "model_a": a, "model_b": b, "question": q} | paired(wide[a], wide[b])
                    for (a, b), q in pairs.items()
                    if a in wide and b in wide
                ]
                out += _adjusted(family)
        if grid:
            out += _between_points(dataset, data, grid)
    columns = [COLUMNS[0], *(c for g in grid for c in (g, f"{g}_b")), *COLUMNS[1:]]
    return pd.DataFrame(out, columns=columns)


def grid_points(data: pd.DataFrame, grid: Sequence[str]) -> Iterator[tuple[dict[str, object], pd.DataFrame]]:
    """Each grid point of ``data`` (``{param: value}``, values ascending where numbers) and its rows."""
    if not grid:
        yield {}, data
        return
    keys = data[list(grid)].drop_duplicates()
    for g in reversed(grid):  # the first parameter slowest, as the study file lists its runs
        keys = keys.iloc[np.argsort(_order(keys[g]), kind="stable")]
    for values in keys.itertuples(index=False):
        point = dict(zip(grid, values, strict=True))
        yield point, _at(data, point)


def _order(values: pd.Series) -> np.ndarray:
    """Sort keys: the values themselves where all are numbers, else their order of first appearance."""
    if all(isinstance(v, Real) for v in values):
        return values.to_numpy(dtype=float)
    first = {v: i for i, v in reversed(list(enumerate(values)))}
    return np.array([first[v] for v in values])


def _between_points(dataset: str, data: pd.DataFrame, grid: list[str]) -> list[dict]:
    """One model at consecutive values of one grid parameter (the others held), paired by seed: one family per
    metric, over every parameter and model."""
    thresholds = data["threshold"].dropna().unique()
    models = list(dict.fromkeys(m for _, a, b in standard_pairs(thresholds) for m in (b, a)))
    points = [p for p, _ in grid_points(data, grid)]
    steps = []  # (a, b): b's value of g, then the next larger one (a), every other parameter held
    for g in grid:
        lines: dict[tuple, list[dict]] = {}
        for p in points:  # in ascending order of g along each line
            lines.setdefault(tuple(p[h] for h in grid if h != g), []).append(p)
        steps += [(g, a, b) for line in lines.values() for b, a in itertools.pairwise(line)]
    out = []
    for metric in METRICS:
        family = []
        for g, point_a, point_b in steps:
            wide_a, wide_b = _wide(data, point_a, metric), _wide(data, point_b, metric)
            for model in (m for m in models if m in wide_a and m in wide_b):
                row = paired(wide_a[model], wide_b[model])
                if row["seeds_a_lower"] + row["seeds_a_higher"] == 0:
                    continue  # unchanged in every seed: the parameter does not act on this model
                labels = {"dataset": dataset, **point_a, **{f"{h}_b": v for h, v in point_b.items()}}
                asked = {"metric": metric, "model_a": model, "model_b": model, "question": f"grid: {g}"}
                family.append(labels | asked | row)
        out += _adjusted(family)
    return out


def _at(data: pd.DataFrame, point: dict) -> pd.DataFrame:
    """The rows of ``data`` at one grid point."""
    return data[np.logical_and.reduce([data[g] == v for g, v in point.items()])]


def _wide(data: pd.DataFrame, point: dict, metric: str) -> pd.DataFrame:
    return _at(data, point).pivot(index="seed", columns="model", values=metric)


def _adjusted(family: list[dict]) -> list[dict]:
    """The family's rows with Holm's p and the verdict (no verdict below two paired seeds). Contrasts with no
    seed that differs keep p = 1 and are left out of the family's size (see the module)."""
    tested = [r["p_value"] if r["seeds_a_lower"] + r["seeds_a_higher"] else math.nan for r in family]
    for row, p in zip(family, stats.holm(tested), strict=True):
        row["p_holm"] = row["p_value"] if math.isnan(p) else p
        separated = verdict(row["p_holm"], row["low"], row["high"], row.pop("direction"))
        row["verdict"] = separated if row["n"] >= 2 else NOT_SEPARATED
    return family


def grid_columns(table: pd.DataFrame) -> list[str]:
    """The grid parameters of a contrast table: the columns that have a ``<param>_b`` twin."""
    return [c for c in table.columns if f"{c}_b" in table.columns]


def point_label(point: dict[str, object]) -> str:
    """``learning_rate = 0.001, epochs = 10``; empty without a grid."""
    return ", ".join(f"{g} = {_value(v)}" for g, v in point.items())


def _value(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def contrast_label(row: pd.Series | dict) -> str:
    """``FP_4% - FT``, or between grid points ``FP_4% at learning_rate 0.01 - 0.001``."""
    changed = [g for g in grid_columns(pd.DataFrame([row])) if row[g] != row[f"{g}_b"]]
    if not changed:
        return f"{row['model_a']} - {row['model_b']}"
    a = ", ".join(f"{g} {_value(row[g])}" for g in changed)
    return f"{row['model_a']} at {a} - {', '.join(_value(row[f'{g}_b']) for g in changed)}"


def _p(p: float) -> str:
    return "n/a" if pd.isna(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def verdict_sentence(row: pd.Series | dict) -> str:
    """One contrast in words: ``FP_4% - FT: -16.3 points [-26.0, -6.6], Holm p = 0.010, lower in 9, higher in 1
    of 10 seeds: lower``, or ``...: not separated by these seeds (could detect about ±6.2 points)``; where the
    interval excludes 0 but the adjusted test does not reject, it says so instead of a detectable size."""
    n = int(row["n"])
    head = f"{contrast_label(row)}: "
    if n == 0:
        return head + "no seed has both: " + NOT_SEPARATED
    shown = f"[{_points(row['low'])}, {_points(row['high'])}]" if n >= 2 else "(one seed: no interval)"
    lower, higher = int(row["seeds_a_lower"]), int(row["seeds_a_higher"])
    seeds = f"lower in {lower}, higher in {higher} of {n} seeds" if lower + higher else f"equal in all {n} seeds"
    p = _p(row["p_holm"])
    p = p if p.startswith("<") else f"= {p}"
    text = f"{head}{_points(row['mean_difference'], signed=True)} points {shown}, Holm p {p}, "
    text += f"{seeds}: {row['verdict']}"
    if row["verdict"] == NOT_SEPARATED and n >= 2 and lower + higher > 0:
        if row["low"] > 0 or row["high"] < 0:
            text += " (the interval excludes 0, but the adjusted test does not reject)"
        else:
            text += f" (could detect about ±{row['detectable']:.1f} points)"
    return text


def _points(value: float, signed: bool = False) -> str:
    """A difference in points to one decimal, without a sign on a rounded zero (``0.0``, not ``-0.0``)."""
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return "0.0" if text in ("-0.0", "+0.0") else text


def contrasts_markdown(table: pd.DataFrame, metrics: dict[str, str] = METRICS, what: str = "models") -> str:
    """``contrasts.md``: what each number is, then one table per dataset (grid point) and metric (``metrics``:
    column -> label; the detectors' file passes ``DETECTION_METRICS`` and ``what="detectors"``)."""
    head = (
        "# Paired contrasts\n\n"
        f"Each row compares two {what} of the same runs: the difference a - b of a metric on test data, in "
        "percentage points, seed by seed (same dataset and grid point). `n`: the seeds that have both. The mean "
        f"difference and its {stats.INTERVAL_NAME} ({stats.INTERVAL_DESCRIPTION}). p: exact two-sided Wilcoxon "
        "signed-rank test; zero differences are dropped (it uses the nonzero pairs; none: p = 1), tied |d| get "
        "their mid-rank and the exact distribution given those ranks. Holm p: Holm's step-down adjustment over "
        "the family (one dataset, metric and grid point; between grid points, one dataset and metric). Verdict: "
        f"lower or higher when Holm p < {ALPHA} and the interval excludes 0, else {NOT_SEPARATED}, with ± the "
        "interval's half-width: about the smallest difference these seeds could detect. a lower / a higher: the "
        "seeds where a is below / above b (ties: neither).\n"
    )
    sections = []
    for where, block in table.groupby(block_labels(table), sort=False):
        for metric, part in block.groupby("metric", sort=False):
            shown = pd.DataFrame(
                {
                    "contrast": [contrast_label(r) for _, r in part.iterrows()],
                    "n": part["n"],
                    "mean difference": part["mean_difference"].map(lambda v: "n/a" if pd.isna(v) else f"{v:+.2f}"),
                    "interval": [
                        "n/a" if pd.isna(lo) else f"[{lo:.2f}, {hi:.2f}]"
                        for lo, hi in zip(part["low"], part["high"], strict=True)
                    ],
                    "p": part["p_value"].map(_p),
                    "Holm p": part["p_holm"].map(_p),
                    "a lower": part["seeds_a_lower"],
                    "a higher": part["seeds_a_higher"],
                    "verdict": part["verdict"],
                    "±": part["detectable"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.1f}"),
                }
            )
            sections.append(f"## {where}: {metrics[metric]}\n\n" + shown.to_markdown(index=False) + "\n")
    return "\n".join([head, *sections])


def block_labels(table: pd.DataFrame) -> pd.Series:
    """Per row, the block it is shown in: ``demo``, ``demo, learning_rate = 0.01`` or ``demo, between grid points``."""
    grid = grid_columns(table)
    labels = []
    for _, row in table.iterrows():
        point = {g: row[g] for g in grid}
        if any(row[g] != row[f"{g}_b"] for g in grid):
            labels.append(f"{row['dataset']}, between grid points")
        else:
            labels.append(f"{row['dataset']}, {point_label(point)}" if grid else str(row["dataset"]))
    return pd.Series(labels, index=table.index, dtype=object)
