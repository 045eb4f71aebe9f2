"""Each notebook ends with a reading of its results in words, computed from the numbers it just produced.

So the interpretation is never stale: rerun a notebook on another dataset or with other parameters and its
closing paragraph says what those results show. Each function returns Markdown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.core import rows
from lib.sweep.table import SweepResult


def _pct(value: float) -> str:
    return "not measured" if pd.isna(value) else f"{value:.1f} %"


def read_activations(table: pd.DataFrame, pool_layer: str) -> str:
    """How many channels clean data leaves dormant, and how skewed the rest are."""
    dormant = int(table["dormant"].sum())
    active = table.loc[~table["dormant"], "mean_activation"]
    text = (
        f"**{dormant} of {len(table)}** channels of `{pool_layer}` never fire on clean validation data: "
        "they are the first to be pruned, and removing them cannot change any clean prediction. "
    )
    if len(active):
        top = active.nlargest(max(1, len(active) // 10)).sum() / active.sum()
        text += (
            f"Of the {len(active)} active channels, the strongest tenth carry {100 * top:.0f} % of the total mean "
            f"activation (weakest active channel {active.min():.3g}, strongest {active.max():.3g})."
        )
    return text


def read_sweep(result: SweepResult, steps: dict[float, int | None]) -> str:
    """Where each threshold fired, the ASR there, and whether the backdoor died before clean accuracy did."""
    table = result.table
    n = len(table) - 1
    asr = table["attack_success_rate"]
    lines = [f"B: {_pct(table['clean_accuracy'].iloc[0])} clean validation accuracy, ASR {_pct(asr.iloc[0])}."]
    for t, k in steps.items():
        name = rows.pruned(t).name
        if k is None:
            lines.append(f"* {name}: clean accuracy never dropped by {rows.format_threshold(t)} points.")
        else:
            row = table.iloc[k]
            lines.append(
                f"* {name}: after {k} of {n} channels ({100 * k / n:.0f} %): "
                f"clean accuracy {_pct(row['clean_accuracy'])}, ASR {_pct(row['attack_success_rate'])}."
            )
    if asr.notna().any():
        below = np.flatnonzero(asr.to_numpy() < 10.0)
        if below.size:
            k = int(below[0])
            lines.append(
                f"\nThe ASR first falls below 10 % after {k} channels, where clean accuracy is "
                f"{_pct(table['clean_accuracy'].iloc[k])}: "
                + (
                    "the backdoor dies before the clean task does."
                    if table["clean_accuracy"].iloc[0] - table["clean_accuracy"].iloc[k] < 10
                    else "pruning removes the backdoor only together with much of the clean task."
                )
            )
        else:
            lines.append("\nThe ASR never falls below 10 %: pruning alone does not remove this backdoor.")
    return "\n".join(lines)


def read_models(table: pd.DataFrame) -> str:
    """Test accuracy and ASR of each repaired model against B, and what its GoodNet adds."""
    by_name = table.set_index("model")
    b = by_name.loc[rows.badnet().name] if rows.badnet().name in by_name.index else None
    lines = []
    for name in table["model"]:
        row = rows.parse_row(name)
        if row.goodnet or row.kind == rows.BADNET:
            continue
        r, g = by_name.loc[name], by_name.loc[row.goodnet_of().name]
        change = ""
        if b is not None and pd.notna(r["attack_success_rate"]):
            change = f" (B: {_pct(b['clean_accuracy'])} / {_pct(b['attack_success_rate'])})"
        lines.append(
            f"* {name}: test accuracy {_pct(r['clean_accuracy'])}, ASR {_pct(r['attack_success_rate'])}{change}; "
            f"its GoodNet {row.goodnet_of().name}: {_pct(g['clean_accuracy'])}, ASR {_pct(g['attack_success_rate'])}."
        )
    if not lines:
        return "No repaired model: no threshold was reached."
    return "\n".join(lines)


def read_detection(table: pd.DataFrame) -> str:
    """STRIP's FRR, FAR and AUC on test data, each G's, and whether STRIP adds anything to G."""
    by_name = table.set_index("detector")
    s = by_name.loc["STRIP"]
    if pd.isna(s["FAR"]):
        return f"STRIP flags {_pct(s['FRR'])} of clean test images; no triggered test images were published."
    lines = [
        f"**STRIP** flags {_pct(s['FRR'])} of clean test images and lets {_pct(s['FAR'])} of triggered ones through "
        f"(AUC {s['AUC']:.2f}: "
        + ("better than a coin" if s["AUC"] > 0.6 else "no better than a coin, or worse")
        + ", on this BadNet)."
    ]
    for name in table["detector"]:
        if name == "STRIP" or name.endswith("+STRIP"):
            continue
        g, both = by_name.loc[name], by_name.loc[f"{name}+STRIP"]
        lines.append(
            f"* {name}: FRR {_pct(g['FRR'])}, FAR {_pct(g['FAR'])}; with STRIP: FRR {_pct(both['FRR'])}, "
            f"FAR {_pct(both['FAR'])}."
        )
    return "\n".join(lines)
