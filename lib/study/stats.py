"""The one interval every study table, figure and reading uses, and the paired test behind every verdict.

**The interval** is a 95 % bootstrap confidence interval of the mean over seeds, bias-corrected and accelerated
(BCa, ``scipy.stats.bootstrap``). The seeds are independent draws whose distribution is far from normal near 0
or 100 % (an ASR of 99.8 % on most seeds, 60 % on one): a t-interval reaches past 100 % there, while every
bootstrap mean lies between the smallest and the largest value, so an interval of a rate stays in [0, 100].
It is byte-stable: the resampling uses a generator seeded by ``SEED`` afresh for each call, on the values
sorted, so the same values give the same interval in any order and in any process. A paired difference gets
the same interval (of its mean over seeds).

**The paired test** is the two-sided Wilcoxon signed-rank test, computed exactly: its p-value is the share of
the 2^n sign flips of the differences whose signed-rank sum is at least as extreme, the exact distribution
given the ranks, ties included. scipy enumerates those flips one by one (``PermutationMethod(n_resamples=inf)``:
about 4 minutes at n = 20); the same distribution is built here by convolution in microseconds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: Bootstrap resamples: enough that the interval's bounds move by far less than their last shown digit.
N_RESAMPLES = 9_999
#: The bootstrap's random state: every call starts a generator from it, so files are byte-stable.
SEED = 20_240_524
#: Differences are compared after rounding to this many decimals (percentage points): two rates that are the
#: same count of images may differ in their last float bits, and must count as a tie (or a zero), not a win.
DECIMALS = 9
#: How the interval is named in tables, figures and readings, and how it is computed.
INTERVAL_NAME = f"{100 * CONFIDENCE:.0f} % bootstrap (BCa) interval"
INTERVAL_DESCRIPTION = (
    f"bias-corrected and accelerated bootstrap of the mean over seeds, {N_RESAMPLES:,} resamples, fixed random state"
)


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values, their standard deviation and the interval ``[low, high]`` (NaN below n = 2)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float

    @property
    def bounds(self) -> tuple[float, float]:
        return self.low, self.high

    @property
    def half_width(self) -> float:
        """Half the interval's width: about the smallest mean difference these seeds could tell from zero."""
        return (self.high - self.low) / 2


def interval(values: Iterable[float]) -> Interval:
    """The interval of the mean of ``values`` (NaN values, e.g. an ASR not measured, left out).

    n = 0: all NaN; n = 1: the mean, no interval; all values equal: ``[v, v]`` (the bootstrap has nothing to
    resample there, and BCa would divide by zero).
    """
    x = np.asarray(list(values), dtype=float)
    x = np.sort(x[~np.isnan(x)])
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    low, high = (float(x[0]), float(x[0])) if x[0] == x[-1] else _bca(tuple(x.tolist()))
    return Interval(n, mean, float(x.std(ddof=1)), low, high)


@lru_cache(maxsize=4096)
def _bca(values: tuple[float, ...]) -> tuple[float, float]:
    """BCa bounds of the mean of ``values`` (sorted, not all equal); cached: tables and figures ask for the same."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a degenerate bootstrap must fail here, not pass as NaN bounds
        result = stats.bootstrap(
            (np.asarray(values),),
            np.mean,
            n_resamples=N_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="BCa",
            rng=np.random.default_rng(SEED),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bounds(values: Iterable[float]) -> tuple[float, float]:
    """``(low, high)`` of the interval: seaborn's ``errorbar=`` takes this, so figures use the same interval."""
    return interval(values).bounds


def signs(differences: Iterable[float]) -> np.ndarray:
    """-1, 0 or 1 per difference, after rounding to ``DECIMALS``: which side each seed favours (0: a tie)."""
    return np.sign(np.round(np.asarray(list(differences), dtype=float), DECIMALS))


def wilcoxon_p(differences: Iterable[float]) -> float:
    """Exact two-sided p-value of the Wilcoxon signed-rank test of paired ``differences`` (NaN left out).

    Zero differences are dropped before ranking (``zero_method="wilcox"``): the test uses the nonzero pairs;
    none: p = 1. Tied ``|d|`` get their mid-rank, and the null distribution is the exact one of the signed-rank
    sum given those ranks (each sign + or - with probability 1/2), so ties cost no exactness: without ties it
    equals scipy's ``method="exact"``, with them scipy's ``PermutationMethod(n_resamples=np.inf)``. p is twice
    the smaller tail, at most 1. Probabilities are sums of multiples of 2^-n: exact in float64 up to n = 53.
    """
    d = np.round(np.asarray(list(differences), dtype=float), DECIMALS)
    d = d[~np.isnan(d) & (d != 0)]
    if len(d) == 0:
        return 1.0
    doubled = np.rint(2 * stats.rankdata(np.abs(d))).astype(int)  # mid-ranks are halves: integers when doubled
    null = np.zeros(int(doubled.sum()) + 1)
    null[0] = 1.0
    for r in doubled:  # adding one rank with sign + or -: P(sum = s) becomes (P(s) + P(s - r)) / 2
        null[r:] = (null[r:] + null[:-r]) / 2
        null[:r] /= 2
    observed = int(doubled[d > 0].sum())
    lower, upper = null[: observed + 1].sum(), null[observed:].sum()
    return float(min(1.0, 2 * min(lower, upper)))


def rank_direction(differences: Iterable[float]) -> int:
    """Which way the signed ranks lean: -1 when the negative differences hold more rank (W- > W+), 1 the other way,
    0 when balanced. A two-sided test rejects for either tail: a verdict must point the way its tail does."""
    d = np.round(np.asarray(list(differences), dtype=float), DECIMALS)
    d = d[~np.isnan(d) & (d != 0)]
    if len(d) == 0:
        return 0
    ranks = stats.rankdata(np.abs(d))
    return int(np.sign(ranks[d > 0].sum() - ranks[d < 0].sum()))


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family's p-values (same order; NaN stays NaN and is not counted).

    The i-th smallest of m p-values is multiplied by m - i + 1, made non-decreasing along that order and capped
    at 1: rejecting where the adjusted p < 0.05 keeps the chance of any false verdict in the family below 5 %.
    """
    p = np.asarray(list(pvalues), dtype=float)
    adjusted = np.full(len(p), np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted
