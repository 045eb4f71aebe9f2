"""The interval every study figure and table uses: Student's t-interval of the mean over seeds.

Each run's number is one draw (one attack instance, one fine-tuning) and the seeds are independent draws,
so at level 1 - a the mean of ``n`` of them gets ``mean ± t(1 - a/2, n - 1) · s / √n``, ``s`` the sample
standard deviation (``ddof=1``). It assumes roughly normal draws: near 0 or 100 % with few seeds the
interval can reach past those bounds, and it is shown as computed rather than clipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: How the interval is named in tables, figures and readings.
INTERVAL_NAME = f"{100 * CONFIDENCE:.0f} % Student t-interval"
INTERVAL_FORMULA = f"mean ± t({(1 + CONFIDENCE) / 2:g}, n - 1) · s / √n"


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

    def overlaps(self, other: Interval) -> bool:
        """Whether the two intervals share a point (False when either is undefined)."""
        if any(math.isnan(v) for v in (self.low, self.high, other.low, other.high)):
            return False
        return self.low <= other.high and other.low <= self.high


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Student's t-interval of the mean of ``values`` (NaN values, e.g. an ASR not measured, left out)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def t_bounds(values: Iterable[float]) -> tuple[float, float]:
    """``(low, high)`` of the t-interval: seaborn's ``errorbar=`` takes this, so figures use the same interval."""
    return t_interval(values).bounds
