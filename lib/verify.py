"""``make verify``: rerun the default pipeline from scratch and compare every result with the committed one.

What must reproduce on any x86-64 machine is what is inferred from the published artifacts (the demo
BadNets and the image sets their recipes generate): activations, the sweep, the thresholds, B', G. For
those every count-based figure (accuracy, ASR, channels pruned, the pruning order) must be identical and
every other float within ``REL_TOL`` of the committed value; anything else makes the exit status 1. What
is trained (the fine-tuning step's files and rows) repeats only on the processor that trained it: its
figures are compared with the spread of the committed multi-seed study where there is one, else reported
as not comparable. Figures (PNG) are reported, not judged: they are drawn from the tables that are.

By default the pipeline runs in a temporary folder (data and results roots moved there, ``make all``
itself), so the working tree is not touched; ``--in-place`` runs ``make all`` here; ``--compare DATASET...``
runs nothing and judges what is already in ``results/`` (notebooks run by hand, on Kaggle, in CI's platform
jobs). Either way the fresh files are compared with the committed ones (``git show HEAD:...``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lib.core import rows
from lib.core.paths import COMMITTED_RESULTS, PROJECT_ROOT, ResultFiles, result_files, shown
from lib.core.step_names import ANP, FINE_PRUNING
from lib.data.catalog import DEMO_DATASETS
from lib.report.tables import read_csv
from lib.runs import provenance

#: Relative tolerance for floats that are not counts (mean activations): float32 kernels of other processors
#: move them by up to ~2e-6 relative.
REL_TOL = 1e-5
#: Columns whose values are counts or ratios of counts: identical on any processor, or something is wrong.
COUNT_COLUMNS = ("pruned", "fraction", "channel", "rank", "channels_pruned", "threshold", "pruned_channels", "dormant")
SUMMARY = "demo-summary"
#: The steps whose results come from training (per processor, reported against the study's spread): the table
#: of their rows, and the file naming the machine that trained them.
TRAINED: dict[str, Callable[[ResultFiles], tuple[Path, Path]]] = {
    FINE_PRUNING: lambda r: (r.fine_pruning_csv, r.trained_on),
    ANP: lambda r: (r.anp_csv, r.anp_trained_on),
}


@dataclass
class Verdict:
    """One compared file or figure: what was compared, and whether it agrees under the rule."""

    what: str
    agrees: bool | None  # None: not judged (trained elsewhere, or a figure)
    note: str

    def line(self) -> str:
        mark = {True: "ok  ", False: "DIFF", None: "  - "}[self.agrees]
        return f"{mark}  {self.what:<48} {self.note}"


def _floats_agree(a: pd.Series, b: pd.Series) -> bool:
    """Equal (infinities included: CLP's scan starts at u = inf), both NaN, or within ``REL_TOL``."""
    a, b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):  # inf - inf: decided by the equality
        close = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= REL_TOL * np.abs(a) + 1e-12)
    return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b)) | close))


def compare_tables(committed: pd.DataFrame, fresh: pd.DataFrame) -> str | None:
    """None when the tables agree under the rule, else what differs (the first few columns)."""
    if list(committed.columns) != list(fresh.columns) or len(committed) != len(fresh):
        return f"shape or columns differ ({committed.shape} {list(committed.columns)} vs {fresh.shape})"
    problems = []
    for column in committed.columns:
        a, b = committed[column], fresh[column]
        exact = (
            column in COUNT_COLUMNS
            or column.startswith(("clean_accuracy", "attack_success_rate"))
            or not pd.api.types.is_float_dtype(a)
        )
        same = a.equals(b) if exact else _floats_agree(a, b)
        if not same:
            rows_differing = int((a.astype(str) != b.astype(str)).sum())
            problems.append(f"{column} ({rows_differing} rows{'' if exact else f', beyond {REL_TOL:g} relative'})")
    return "; ".join(problems[:4]) or None


def _read_csv(data: bytes) -> pd.DataFrame:
    return read_csv(io.BytesIO(data), dtype={"pruned_channels": str})


def read_committed(path: Path) -> bytes | None:
    """The committed bytes of a project file (``git show HEAD:``; the working tree's outside a git checkout)."""
    rel = path.resolve().relative_to(PROJECT_ROOT).as_posix()
    done = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=PROJECT_ROOT, capture_output=True)
    if done.returncode == 0:
        return done.stdout
    inside_git = subprocess.run(["git", "rev-parse"], cwd=PROJECT_ROOT, capture_output=True).returncode == 0
    return None if inside_git or not path.is_file() else path.read_bytes()


def _study_ranges() -> pd.DataFrame | None:
    """Per dataset and model, the range of the committed studies' runs of the default pipeline (other settings
    and other grid points left out: ``lib.study.aggregate.default_setting_runs``)."""
    from lib.study.aggregate import default_setting_runs

    runs = default_setting_runs()
    if runs is None:
        return None
    return runs.groupby(["dataset", "model"])[["clean_accuracy", "attack_success_rate"]].agg(["min", "max", "count"])


def compare_trained(dataset: str, committed: pd.DataFrame, fresh: pd.DataFrame, same_machine: bool) -> list[Verdict]:
    """Training-dependent rows: within the study's spread, or not comparable (identical if trained on this machine)."""
    ranges = _study_ranges()
    verdicts = []
    for row in fresh.itertuples():
        name = str(row.model)
        values = {m: getattr(row, m) for m in ("clean_accuracy", "attack_success_rate")}
        before = committed.set_index("model").loc[name] if name in set(committed["model"]) else None
        shown_values = ", ".join(
            f"{m.split('_')[0]} {before[m] if before is not None else float('nan'):.2f} -> {v:.2f}"
            for m, v in values.items()
        )
        if same_machine:
            same = before is not None and all(
                before[m] == v or (pd.isna(v) and pd.isna(before[m])) for m, v in values.items()
            )
            note = "identical" if same else "DIFFERENT although trained on the same processor and versions"
            verdicts.append(Verdict(f"{dataset} {name}", None, f"{shown_values}; {note}"))
            continue
        if ranges is None or (dataset, name) not in ranges.index:
            verdicts.append(Verdict(f"{dataset} {name}", None, f"{shown_values}; trained on another processor"))
            continue
        r = ranges.loc[(dataset, name)]
        inside = all(pd.isna(v) or r[(m, "min")] <= v <= r[(m, "max")] for m, v in values.items())
        n = int(r[("clean_accuracy", "count")])
        verdicts.append(
            Verdict(
                f"{dataset} {name}",
                None,
                f"{shown_values}; {'within' if inside else 'OUTSIDE'} the study's range over {n} runs",
            )
        )
    return verdicts


def _machine(trained_on: bytes) -> tuple:
    """The processor and library versions of a ``trained_on.json``: what training results depend on."""
    info = json.loads(trained_on)
    return info.get("cpu"), tuple(info.get("simd", [])), tuple(sorted(info.get("versions", {}).items()))


def compare_run(dataset: str, fresh: ResultFiles, committed: ResultFiles, read: Callable) -> list[Verdict]:
    """Every file the fresh run wrote that the project commits, judged by the rule of the step that wrote it."""
    verdicts = []
    for step, record in provenance.read_record(fresh).items():
        trained = TRAINED.get(step)
        for name in record.outputs:
            path = PROJECT_ROOT / name if not Path(name).is_absolute() else Path(name)
            try:
                rel = path.relative_to(fresh.root)
            except ValueError:
                continue  # a data file: not a result
            before = read(committed.root / rel)
            if before is None:
                continue  # models, executed notebooks: not committed
            what = f"{dataset}/{rel.as_posix()}"
            if trained:
                table, trained_on = trained(committed)
                if rel == table.relative_to(committed.root):
                    machine = read(trained_on)
                    same = machine is not None and _machine(machine) == _machine(trained(fresh)[1].read_bytes())
                    verdicts += compare_trained(dataset, _read_csv(before), read_csv(path), same)
                continue
            if rel.suffix == ".csv":
                problem = compare_tables(_read_csv(before), read_csv(path, dtype={"pruned_channels": str}))
                same_bytes = before == path.read_bytes()
                note = "identical" if same_bytes else ("same under the rule" if problem is None else problem)
                verdicts.append(Verdict(what, problem is None, note))
            elif rel.suffix == ".png":
                verdicts.append(Verdict(what, None, "identical" if before == path.read_bytes() else "pixels differ"))
    return verdicts


def headline(dataset: str, fresh: ResultFiles, committed: ResultFiles, read: Callable) -> list[str]:
    """B, B' and G on test data, committed against fresh: the README's single-run table."""
    before_bytes = read(committed.goodnet_csv)
    if before_bytes is None or not fresh.goodnet_csv.is_file():
        return []
    before, after = _read_csv(before_bytes).set_index("model"), read_csv(fresh.goodnet_csv).set_index("model")
    lines = []
    for name in after.index:
        if rows.parse_row(name).goodnet:
            continue
        for metric in ("channels_pruned", "clean_accuracy", "attack_success_rate"):
            a = before.loc[name, metric] if name in before.index else float("nan")
            b = after.loc[name, metric]
            ok = (pd.isna(a) and pd.isna(b)) or a == b
            fmt = "{:.0f}" if metric == "channels_pruned" else "{:.4f}"
            a_text, b_text = fmt.format(a), fmt.format(b)
            lines.append(f"{'ok  ' if ok else 'DIFF'}  {dataset:<19} {name:<8} {metric:<20} {a_text:>10} {b_text:>10}")
    return lines


def near_tie_census(dataset: str, fresh: ResultFiles) -> str:
    """How many classes of the inference-only results were near ties: the only ones another processor could flip."""
    records = provenance.read_record(fresh)
    sweep = records.get("pruning_sweep")
    goodnet = records.get("goodnet")
    if sweep is None or goodnet is None:
        return f"{dataset}: no record"
    tests = goodnet.details.get("near_ties", {})
    return (
        f"{dataset}: sweep {sweep.details.get('near_ties', '?')} evaluations settled at their reference place; "
        f"test predictions within the tie margin: {sum(tests.values())} "
        f"({', '.join(f'{k} {v}' for k, v in tests.items())})"
    )


def run_make(in_place: bool, workdir: Path) -> int:
    env = dict(os.environ)
    if not in_place:
        env["BACKDOOR_DATA_ROOT"], env["BACKDOOR_RESULTS_ROOT"] = str(workdir / "data"), str(workdir / "results")
    return subprocess.call(["make", "--no-print-directory", "all"], cwd=PROJECT_ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-place", action="store_true", help="run make all here, compare with git HEAD")
    parser.add_argument(
        "--compare", nargs="+", metavar="DATASET", choices=DEMO_DATASETS, help="run nothing: judge results/DATASET"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        workdir = Path(tmp)
        in_place = args.in_place or bool(args.compare)
        if not args.compare:
            print(f"running the default pipeline from scratch {'here' if in_place else f'in {workdir}'} ...")
            if run_make(in_place, workdir) != 0:
                print("make all failed: nothing to compare", file=sys.stderr)
                return 1
        read = read_committed
        verdicts, heads, ties = [], [], []
        for dataset in args.compare or DEMO_DATASETS:
            fresh = result_files(dataset) if in_place else ResultFiles(workdir / "results" / dataset)
            if not fresh.goodnet_csv.is_file() or not provenance.read_record(fresh):
                print(f"{shown(fresh.root)}: no results to compare: run notebooks 01-08 on {dataset}", file=sys.stderr)
                return 1
            committed = ResultFiles(COMMITTED_RESULTS / dataset)
            verdicts += compare_run(dataset, fresh, committed, read)
            heads += headline(dataset, fresh, committed, read)
            ties.append(near_tie_census(dataset, fresh))
    print("\nfiles (inference-only: counts identical, floats within 1e-5 relative; trained: the study's spread)")
    print("\n".join(v.line() for v in verdicts))
    print(f"\nheadline figures (goodnet.csv, test data, percent){'committed':>23} {'fresh':>10}")
    print("\n".join(heads))
    print("\nnear ties (two best scores within 1e-3 relative: classes another processor's rounding could flip)")
    print("\n".join(ties))
    if not any(v.agrees for v in verdicts) or not heads:
        print("\nFAILED: nothing was compared (no committed result matches a fresh one)")
        return 1
    failed = [v for v in verdicts if v.agrees is False] + [h for h in heads if h.startswith("DIFF")]
    print(
        f"\n{'FAILED' if failed else 'OK'}: {len(failed)} inference-only result(s) differ; "
        f"{sum(v.agrees is None for v in verdicts)} trained or figure result(s) reported, not judged"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
