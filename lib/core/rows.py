"""The names of the models the defense compares: one place that spells them and knows which step makes each.

Every table, figure and test names a model the same way:

=========  ======================================================  ============================
row        model                                                   written by
=========  ======================================================  ============================
``B``      the BadNet as published                                 ``goodnet`` (notebook 04)
``B'_t%``  B pruned until clean accuracy dropped by t points       ``goodnet``
``G_t%``   the GoodNet of B and B'_t%                              ``goodnet``
``FT``     B fine-tuned on clean data, nothing pruned              ``fine_pruning`` (notebook 05)
``GFT``    the GoodNet of B and FT                                 ``fine_pruning``
``FP_t%``  B'_t% fine-tuned on clean data (fine-pruning)           ``fine_pruning``
``GFP_t%`` the GoodNet of B and FP_t%                              ``fine_pruning``
=========  ======================================================  ============================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lib.core.step_names import FINE_PRUNING, GOODNET

BADNET = "B"
PRUNED = "B'"
FINE_TUNED = "FT"
FINE_PRUNED = "FP"
#: A GoodNet's row is its repaired network's row with this mark: ``G_2%`` from ``B'_2%``, ``GFP_2%``...
GOODNET_MARK = "G"

_NAME = re.compile(r"^(?P<goodnet>G?)(?P<kind>B'|B|FT|FP)?(?:_(?P<threshold>\d+(?:\.\d+)?)%)?$")


def format_threshold(threshold: float) -> str:
    """``2.0 -> '2'``, ``2.5 -> '2.5'``: thresholds are written as the user wrote them."""
    return f"{float(threshold):g}"


@dataclass(frozen=True)
class ModelRow:
    """One model of the comparison: its kind (``B``, ``B'``, ``FT``, ``FP``), whether it is that model's
    GoodNet, and the accuracy-drop threshold that chose its pruning (None for B and FT)."""

    kind: str
    threshold: float | None = None
    goodnet: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (BADNET, PRUNED, FINE_TUNED, FINE_PRUNED):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if (self.threshold is None) != (self.kind in (BADNET, FINE_TUNED)):
            raise ValueError(f"{self.kind} takes {'no' if self.kind in (BADNET, FINE_TUNED) else 'a'} threshold")
        if self.goodnet and self.kind == BADNET:
            raise ValueError("B has no GoodNet of its own: G is built from B and a repaired copy")

    @property
    def name(self) -> str:
        """The row's name in every table: ``B``, ``B'_2%``, ``G_2%``, ``FT``, ``GFT``, ``FP_2%``, ``GFP_2%``."""
        if self.goodnet and self.kind == PRUNED:
            base = GOODNET_MARK  # G_2%, not GB'_2%: the lab's name
        else:
            base = (GOODNET_MARK if self.goodnet else "") + self.kind
        return base if self.threshold is None else f"{base}_{format_threshold(self.threshold)}%"

    @property
    def step(self) -> str:
        """The pipeline step that writes this row."""
        return GOODNET if self.kind in (BADNET, PRUNED) else FINE_PRUNING

    def goodnet_of(self) -> ModelRow:
        """The GoodNet built from B and this repaired model."""
        if self.goodnet or self.kind == BADNET:
            raise ValueError(f"{self.name} is not a repaired network")
        return ModelRow(self.kind, self.threshold, goodnet=True)

    def __str__(self) -> str:
        return self.name


def parse_row(name: str) -> ModelRow:
    """The row a table calls ``name`` (the inverse of ``ModelRow.name``)."""
    match = _NAME.match(name)
    if match is None or (match["kind"] is None and not match["goodnet"]):
        raise ValueError(f"{name!r} is not a model row name (B, B'_2%, G_2%, FT, GFT, FP_2%, GFP_2%)")
    goodnet, kind, threshold = bool(match["goodnet"]), match["kind"], match["threshold"]
    if goodnet and kind is None:
        kind = PRUNED  # G_2%
    row = ModelRow(kind, None if threshold is None else float(threshold), goodnet)
    if row.name != name:
        raise ValueError(f"{name!r} is not a model row name (did you mean {row.name!r}?)")
    return row


def badnet() -> ModelRow:
    return ModelRow(BADNET)


def pruned(threshold: float) -> ModelRow:
    return ModelRow(PRUNED, float(threshold))


def fine_tuned() -> ModelRow:
    return ModelRow(FINE_TUNED)


def fine_pruned(threshold: float) -> ModelRow:
    return ModelRow(FINE_PRUNED, float(threshold))


def goodnet_rows(thresholds: list[float]) -> list[ModelRow]:
    """The rows of ``goodnet.csv`` in order: B, then B'_t% and G_t% for each threshold reached."""
    rows = [badnet()]
    for t in thresholds:
        rows += [pruned(t), pruned(t).goodnet_of()]
    return rows


def fine_pruning_rows(thresholds: list[float]) -> list[ModelRow]:
    """The rows of ``fine_pruning.csv`` in order: FT, GFT, then FP_t% and GFP_t% for each threshold reached."""
    rows = [fine_tuned(), fine_tuned().goodnet_of()]
    for t in thresholds:
        rows += [fine_pruned(t), fine_pruned(t).goodnet_of()]
    return rows
