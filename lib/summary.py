"""One table across datasets: every dataset's ``goodnet.csv`` stacked, with the dataset named.

``make csaw-all`` collects the four competition BadNets with it and ``make all`` the two demos:
``python -m lib.summary --out results/csaw-summary csaw-sunglasses csaw-anonymous-1 ...`` writes
``results/csaw-summary.csv`` (full precision) and ``.md`` (rounded, for reading).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lib.atomic import write_text
from lib.catalog import dataset_spec
from lib.errors import InputError
from lib.goodnet import markdown_table
from lib.paths import result_files


def summary_table(datasets: Sequence[str]) -> pd.DataFrame:
    """Every row of each dataset's ``goodnet.csv``, a ``dataset`` column first; per-trigger columns where they exist."""
    tables = []
    for name in datasets:
        path = result_files(dataset_spec(name).name).goodnet_csv
        if not path.is_file():
            raise InputError(path, "file not found", f"run the pipeline for it first: `make all DATASET={name}`")
        tables.append(pd.read_csv(path).assign(dataset=name))
    table = pd.concat(tables, ignore_index=True)
    return table[["dataset", *(c for c in table.columns if c != "dataset")]]


def write_summary(datasets: Sequence[str], out: str | Path) -> pd.DataFrame:
    """Write ``<out>.csv`` and ``<out>.md`` atomically; return the table."""
    table = summary_table(datasets)
    out = Path(out)
    write_text(out.with_suffix(".csv"), table.to_csv(index=False, lineterminator="\n"))
    write_text(out.with_suffix(".md"), markdown_table(table))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path without suffix: <out>.csv and <out>.md are written")
    parser.add_argument("datasets", nargs="+", help="dataset names (lib.catalog)")
    args = parser.parse_args(argv)
    try:
        table = write_summary(args.datasets, args.out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(table)} rows from {len(args.datasets)} datasets -> {args.out}.csv, {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
