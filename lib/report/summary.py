"""One table across datasets: every dataset's ``goodnet.csv``, ``fine_pruning.csv`` and ``clp.csv`` stacked, the
dataset named; and one of the detectors, every ``detection.csv`` stacked (``<out>-detection.csv``/``.md``).

``make csaw-all`` collects the four competition BadNets with it and ``make all`` the two demos:
``python -m lib.report.summary --out results/csaw-summary csaw-sunglasses csaw-anonymous-1 ...`` writes
``results/csaw-summary.csv`` (full precision) and ``.md`` (rounded, for reading).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lib.core.atomic import write_text
from lib.core.errors import InputError
from lib.core.paths import results_root, shown
from lib.core.step_names import ANP, CLP, FINE_PRUNING, GOODNET, STRIP, SWEEP
from lib.report.tables import markdown_table, read_csv, write_csv
from lib.runs import provenance
from lib.runs.workspace import Workspace, rerun, workspace


def model_rows(ws: Workspace, steps: tuple[str, ...] = (GOODNET, FINE_PRUNING, CLP, ANP)) -> pd.DataFrame:
    """The rows of ``goodnet.csv``, ``fine_pruning.csv``, ``clp.csv`` and ``anp.csv`` of one run, each checked to
    be its step's current output."""
    results = ws.results
    files = {GOODNET: results.goodnet_csv, FINE_PRUNING: results.fine_pruning_csv, CLP: results.clp_csv}
    files[ANP] = results.anp_csv
    recorded = provenance.read_record(ws.results)
    tables = []
    for step in steps:
        if step != GOODNET and step not in recorded and not files[step].exists():
            continue  # a later step never ran here (steps 1-4 only): nothing to report, nothing stale
        if not files[step].is_file():
            raise InputError(
                files[step],
                "file not found",
                f"run notebooks 01-08 with {ws.notebook_parameters} first (`make all {ws.make_target}`)",
            )
        provenance.require_current(ws.results, step, rerun(ws, step))
        table = read_csv(files[step])
        if len(table):  # a defense table of no models (no thresholds) is its header alone: no rows, no object columns
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def summary_table(datasets: Sequence[str]) -> pd.DataFrame:
    """Every model row of each dataset, a ``dataset`` column first; per-trigger columns where they exist."""
    table = pd.concat([model_rows(workspace(name)).assign(dataset=name) for name in datasets], ignore_index=True)
    return table[["dataset", *(c for c in table.columns if c != "dataset")]]


def detection_rows(ws: Workspace) -> pd.DataFrame:
    """The rows of ``detection.csv`` (notebook 07) of one run, checked to be its step's current output; an empty
    table where notebook 07 never ran. (Without importing the step: this module stays free of TensorFlow.)"""
    if STRIP not in provenance.read_record(ws.results):
        return pd.DataFrame()
    provenance.require_current(ws.results, STRIP, rerun(ws, STRIP))
    return read_csv(ws.results.detection_csv)


def detection_summary(datasets: Sequence[str]) -> pd.DataFrame | None:
    """Every ``detection.csv`` (notebook 07) of the datasets that have a current one, a ``dataset`` column first;
    None when none has."""
    tables = [detection_rows(workspace(name)).assign(dataset=name) for name in datasets]
    tables = [t for t in tables if len(t)]
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    return table[["dataset", *(c for c in table.columns if c != "dataset")]]


def write_summary(datasets: Sequence[str], out: str | Path) -> pd.DataFrame:
    """Write ``<out>.csv`` and ``<out>.md`` (the models), and ``<out>-detection.csv``/``.md`` (the detectors)
    where notebook 07 ran, atomically; return the models' table."""
    table = summary_table(datasets)
    out = Path(out)
    write_csv(table, out.with_suffix(".csv"))
    write_text(out.with_suffix(".md"), markdown_table(table))
    detection = detection_summary(datasets)
    if detection is not None:
        detection_out = out.with_name(f"{out.name}-detection")
        write_csv(detection, detection_out.with_suffix(".csv"))
        write_text(detection_out.with_suffix(".md"), markdown_table(detection))
    return table


def where(ws: Workspace) -> str:
    """Where a run's results are and what its last steps found: the closing lines of ``make all``."""
    found = provenance.summaries(ws.results)
    lines = [f"{shown(ws.results.root)}/: goodnet.md, fine_pruning.md, clp.md, anp.md, detection.csv, figures/*.png"]
    lines += [f"  {step}: {found[step]}" for step in (SWEEP, GOODNET, FINE_PRUNING, CLP, STRIP, ANP) if found.get(step)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.report.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="name or path without suffix: <out>.csv and <out>.md (a bare name: in results/)")
    parser.add_argument("--where", action="store_true", help="only say where each dataset's results are")
    parser.add_argument("datasets", nargs="+", help="dataset names (lib.data.catalog)")
    args = parser.parse_args(argv)
    try:
        for name in args.datasets:
            print(where(workspace(name)))
        if args.out and not args.where:
            out = results_root() / args.out if Path(args.out).name == args.out else Path(args.out)
            table = write_summary(args.datasets, out)
            print(f"summary of {len(args.datasets)} datasets ({len(table)} rows): {shown(out)}.md, {shown(out)}.csv")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
