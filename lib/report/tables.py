"""Tables as files: CSV for tools (full precision, reruns compare byte for byte), Markdown for people."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lib.core.atomic import write_text
from lib.core.rows import format_threshold


def read_csv(path: str | Path | object, **options: object) -> pd.DataFrame:
    """Read a CSV this project wrote: every float parsed back to the exact value written.

    pandas' default float parser may be off by one unit in the last place (pandas 2.2's is, on Kaggle);
    a mean like 99.94999999999999 then prints as 100.0 instead of 99.9, and a rerun's table differs.
    """
    return pd.read_csv(path, float_precision="round_trip", **options)


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically, with Unix newlines."""
    write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return Path(path)


def markdown_table(table: pd.DataFrame, digits: int = 2) -> str:
    """The table as GitHub Markdown, percentages rounded for reading (the CSV keeps full precision)."""
    shown = table.copy()
    if "threshold" in shown:
        shown["threshold"] = shown["threshold"].map(lambda t: "" if pd.isna(t) else f"{format_threshold(t)} %")
    return shown.to_markdown(index=False, floatfmt=f".{digits}f") + "\n"


def significant(values: pd.Series, digits: int) -> pd.Series:
    """Floats rounded to ``digits`` significant digits (NaN kept).

    For values computed by float32 kernels whose last bits depend on the processor: rounded, the file
    reads the same on most processors while keeping a relative precision of 10**(1 - digits).
    """
    return values.map(lambda v: v if pd.isna(v) else float(f"{v:.{digits}g}"))
