"""Check B against the figures its publishers printed, before any defense is measured on it.

A wrong input convention (0-255 fed to a network trained on x / 255), images stored in another channel
order, or a model and data that do not belong together all give a network that still answers, wrongly.
The publishers' (or independent solutions') clean validation accuracy and attack success rate of the
unrepaired BadNet (``lib.data.catalog.Reference``) catch all three: a gap of more than ``MAX_GAP`` points
stops the run, unless the user overrides the check knowingly for data of their own.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from lib.core.errors import InputError
from lib.data.catalog import Reference

#: Percentage points between B's measured figure and the published one beyond which the run stops.
#: Published figures are rounded and independent solutions differ by about a point; a wrong input scale
#: or channel order costs tens of points.
MAX_GAP = 3.0

LIKELY_CAUSES = (
    "the input scale (lab 3 takes raw 0-255 pixels, the competition BadNets x/255: lib.data.catalog declares it)",
    "the channel order (the HDF5 files are channels first, (N, 3, 55, 47))",
    "a model and data that do not belong together (another BadNet's bd_net.h5 in this dataset's folder)",
)


def reference_table(
    reference: Reference, clean_accuracy: float, attack_success_rate: float | None, n_valid: int, n_test: int
) -> pd.DataFrame:
    """One row per published figure: what was measured, what was published, the gap and the verdict."""
    rows = []

    def figure(name: str, measured: float | None, published: float | None, unit: str) -> None:
        if published is None:
            return
        if measured is None:
            rows.append({"figure": name, "measured": np.nan, "published": published, "gap": np.nan, "verdict": "n/a"})
            return
        gap = float(measured - published)
        if unit == "points":
            verdict = "ok" if abs(gap) <= MAX_GAP else "FAILED"
        else:
            verdict = "ok" if gap == 0 else "differs (a subset?)"
        rows.append({"figure": name, "measured": measured, "published": published, "gap": gap, "verdict": verdict})

    figure("clean validation accuracy (%)", clean_accuracy, reference.clean_accuracy, "points")
    figure(
        "attack success rate, triggered validation (%)", attack_success_rate, reference.attack_success_rate, "points"
    )
    figure("clean validation images", n_valid, reference.n_valid, "count")
    figure("clean test images", n_test, reference.n_test, "count")
    table = pd.DataFrame(rows, columns=["figure", "measured", "published", "gap", "verdict"])
    table["source"] = reference.source + ("" if reference.by_publisher else " [independent figure]")
    return table


def enforce(table: pd.DataFrame, where: str, dataset: str, enforced: bool = True) -> None:
    """Stop on a failed figure (unless ``enforced`` is False: then warn); warn on a different image count."""
    for row in table.itertuples():
        if row.verdict.startswith("differs"):
            warnings.warn(
                f"{where}: {row.figure}: {row.measured:g} here, {row.published:g} published; "
                "fine if you use a subset on purpose",
                stacklevel=2,
            )
    failed = table[table["verdict"] == "FAILED"]
    if failed.empty:
        return
    gaps = "; ".join(f"{r.figure} {r.measured:.2f} vs {r.published:.2f} published" for r in failed.itertuples())
    problem = f"B does not behave as published ({gaps}; more than {MAX_GAP:g} points apart)"
    if not enforced:
        warnings.warn(f"{where}: {problem}; the reference check is overridden (check_reference=False)", stacklevel=2)
        return
    raise InputError(
        where,
        f"{problem}. Likely causes: " + "; ".join(LIKELY_CAUSES),
        f"fix the cause; for data of your own whose figures differ on purpose, rerun the data notebook with "
        f"check_reference=False (make data DATASET={dataset} CHECK_REFERENCE=False)",
    )
