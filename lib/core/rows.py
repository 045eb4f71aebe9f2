"""The names of the models the defense compares: one place that spells them and knows which step makes each.

Every table, figure and test names a model the same way:

===========  ======================================================  ============================
row          model                                                   written by
===========  ======================================================  ============================
``B``        the BadNet as published                                 ``goodnet`` (notebook 04)
``B'_t%``    B pruned until clean accuracy dropped by t points       ``goodnet``
``G_t%``     the GoodNet of B and B'_t%                              ``goodnet``
``FT``       B fine-tuned on clean data, nothing pruned              ``fine_pruning`` (notebook 05)
``GFT``      the GoodNet of B and FT                                 ``fine_pruning``
``FP_t%``    B'_t% fine-tuned on clean data (fine-pruning)           ``fine_pruning``
``GFP_t%``   the GoodNet of B and FP_t%                              ``fine_pruning``
``CLP_uX``   B with every conv's channels of Lipschitz bound z > X   ``clp`` (notebook 06)
             pruned (CLP, data-free)
``CLP_t%``   CLP with u chosen on clean validation data: t points    ``clp``
``GCLP_*``   the GoodNet of B and CLP_uX or CLP_t%                   ``clp``
``ANP_t%``   B with its lowest ANP masks pruned, the amount chosen   ``anp`` (notebook 08)
             on clean validation data: t points
``GANP_t%``  the GoodNet of B and ANP_t%                             ``anp``
===========  ======================================================  ============================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lib.core.step_names import ANP, CLP, FINE_PRUNING, GOODNET

BADNET = "B"
PRUNED = "B'"
FINE_TUNED = "FT"
FINE_PRUNED = "FP"
LIPSCHITZ = "CLP"
ADVERSARIAL = "ANP"
#: A GoodNet's row is its repaired network's row with this mark: ``G_2%`` from ``B'_2%``, ``GFP_2%``...
GOODNET_MARK = "G"

_NAME = re.compile(
    r"^(?P<goodnet>G?)(?P<kind>B'|B|FT|FP|CLP|ANP)?(?:_(?:(?P<threshold>\d+(?:\.\d+)?)%|u(?P<u>\d+(?:\.\d+)?)))?$"
)


def format_threshold(threshold: float) -> str:
    """``2.0 -> '2'``, ``2.5 -> '2.5'``: thresholds are written as the user wrote them."""
    return f"{float(threshold):g}"


@dataclass(frozen=True)
class ModelRow:
    """One model of the comparison: its kind (``B``, ``B'``, ``FT``, ``FP``, ``CLP``, ``ANP``), whether it is
    that model's GoodNet, and the accuracy-drop threshold that chose its pruning (None for B and FT), or for CLP's
    data-free row the fixed ``u`` instead."""

    kind: str
    threshold: float | None = None
    goodnet: bool = False
    u: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in (BADNET, PRUNED, FINE_TUNED, FINE_PRUNED, LIPSCHITZ, ADVERSARIAL):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.kind == LIPSCHITZ:
            if (self.threshold is None) == (self.u is None):
                raise ValueError("CLP takes either a threshold (CLP_2%) or a fixed u (CLP_u3)")
        elif self.u is not None:
            raise ValueError(f"{self.kind} takes no u")
        elif (self.threshold is None) != (self.kind in (BADNET, FINE_TUNED)):
            raise ValueError(f"{self.kind} takes {'no' if self.kind in (BADNET, FINE_TUNED) else 'a'} threshold")
        if self.goodnet and self.kind == BADNET:
            raise ValueError("B has no GoodNet of its own: G is built from B and a repaired copy")

    @property
    def name(self) -> str:
        """The row's name in every table: ``B``, ``B'_2%``, ``G_2%``, ``FT``, ``GFT``, ``FP_2%``, ``GFP_2%``,
        ``CLP_u3``, ``CLP_2%``, ``GCLP_u3``, ``ANP_2%``, ``GANP_2%``..."""
        if self.goodnet and self.kind == PRUNED:
            base = GOODNET_MARK  # G_2%, not GB'_2%: the lab's name
        else:
            base = (GOODNET_MARK if self.goodnet else "") + self.kind
        if self.u is not None:
            return f"{base}_u{format_threshold(self.u)}"
        return base if self.threshold is None else f"{base}_{format_threshold(self.threshold)}%"

    @property
    def step(self) -> str:
        """The pipeline step that writes this row."""
        if self.kind in (LIPSCHITZ, ADVERSARIAL):
            return {LIPSCHITZ: CLP, ADVERSARIAL: ANP}[self.kind]
        return GOODNET if self.kind in (BADNET, PRUNED) else FINE_PRUNING

    @property
    def file_stem(self) -> str:
        """The row's model file name without suffix: ``clp_u3`` for ``CLP_u3``, ``anp_2`` for ``ANP_2%``."""
        setting = f"u{format_threshold(self.u)}" if self.u is not None else format_threshold(self.threshold)
        return f"{self.kind.lower()}_{setting}"

    def goodnet_of(self) -> ModelRow:
        """The GoodNet built from B and this repaired model."""
        if self.goodnet or self.kind == BADNET:
            raise ValueError(f"{self.name} is not a repaired network")
        return ModelRow(self.kind, self.threshold, goodnet=True, u=self.u)

    def __str__(self) -> str:
        return self.name


def parse_row(name: str) -> ModelRow:
    """The row a table calls ``name`` (the inverse of ``ModelRow.name``)."""
    match = _NAME.match(name)
    if match is None or (match["kind"] is None and not match["goodnet"]):
        raise ValueError(
            f"{name!r} is not a model row name (B, B'_2%, G_2%, FT, GFT, FP_2%, GFP_2%, CLP_u3, CLP_2%, ANP_2%)"
        )
    goodnet, kind, threshold, u = bool(match["goodnet"]), match["kind"], match["threshold"], match["u"]
    if goodnet and kind is None:
        kind = PRUNED  # G_2%
    try:
        row = ModelRow(kind, None if threshold is None else float(threshold), goodnet, None if u is None else float(u))
    except ValueError as exc:
        raise ValueError(f"{name!r} is not a model row name ({exc})") from None
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


def lipschitz(threshold: float | None = None, u: float | None = None) -> ModelRow:
    """``CLP_2%`` (u chosen for a 2-point budget) or ``CLP_u3`` (the paper's fixed u)."""
    return ModelRow(LIPSCHITZ, None if threshold is None else float(threshold), u=None if u is None else float(u))


def adversarial(threshold: float) -> ModelRow:
    """``ANP_2%``: ANP's masks pruned as far as a 2-point budget allows."""
    return ModelRow(ADVERSARIAL, float(threshold))


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
