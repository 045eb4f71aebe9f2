"""Benchmark: one small study run sequentially and on the default local Dask cluster, side by side.

    .venv/bin/python benchmarks/study.py [--runs 4] [--workers N]

The grid: ``--runs`` seeds of the BadNets demo with a reduced recipe (``RECIPE``, fine-tuning ``EPOCHS``
epochs), each contender from scratch in a temporary results folder (nothing of the project's is touched):

* ``sequential``     a local cluster of one worker: one run at a time, each with all of the machine's cores;
* ``local cluster``  the default local cluster (``lib.study.engine.default_workers``, or ``--workers``): one run
                     per worker at once, each with its share of the cores;
* ``kernels``        one run, its five notebooks each in a kernel of its own (``lib.runs.notebook`` alone, as
                     ``make`` runs them), against the same run in one kernel from the sequential contender.

Before and after, it measures the machine's ceiling: how much more work as many processes as workers do at
once than one (2.00 on two free cores; less where other programs hold cores). It also reports the fixed cost
of a run in one kernel (kernel start and imports, and the namespace resets between notebooks, from each run's
``study-run.json``) as a share of its time. Training results depend on TensorFlow's thread count, so the two
contenders' numbers are not compared; each must complete every run, or the benchmark exits 1. The last line
is machine-readable: ``study_speedup=<x> runs=<n> workers=<w>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = {"n_identities": 16, "train_per_identity": 30, "valid_per_identity": 10, "test_per_identity": 10, "epochs": 6}
EPOCHS = 3


def write_study(folder: Path, runs: int) -> Path:
    path = folder / "bench.yaml"
    spec = {
        "name": "bench",
        "datasets": ["demo"],
        "seeds": list(range(1, runs + 1)),
        "parameters": {"thresholds": [2, 4, 10], "epochs": EPOCHS},
        "demo_recipe": RECIPE,
    }
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
    return path


def timed_study(spec_path: Path, results: Path, workers: int) -> tuple[float, list[dict]]:
    """Wall seconds of the whole study from scratch (cluster start included), and each run's step records."""
    from lib.study.engine import run_study
    from lib.study.runner import read_info
    from lib.study.spec import load_spec

    os.environ["BACKDOOR_RESULTS_ROOT"] = str(results)  # this script's own process: the study root follows it
    spec = load_spec(spec_path)
    start = time.perf_counter()
    outcome = run_study(spec, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if outcome.failed or len(outcome.reports) != len(spec.runs()):
        for report in outcome.failed:
            print(f"FAILED {report.run}: {report.failure}", file=sys.stderr)
        sys.exit(1)
    return seconds, [read_info(run) for run in spec.runs()]


def kernel_per_notebook(spec_path: Path, results: Path, threads: int) -> float:
    """One run (the first seed) with each notebook in a kernel of its own, as ``make`` runs them."""
    from lib.core.step_names import STEPS
    from lib.runs import notebook as run_notebook
    from lib.study.runner import pinned_env
    from lib.study.spec import load_spec, step_notebook

    os.environ["BACKDOOR_RESULTS_ROOT"] = str(results)
    spec = load_spec(spec_path)
    run = spec.runs()[0]
    start = time.perf_counter()
    for step in STEPS:
        outcome = run_notebook.run(step_notebook(step), spec.notebook_parameters(run, step), env=pinned_env(threads))
        if outcome.status:
            sys.exit(f"FAILED {outcome.line}")
    return time.perf_counter() - start


def fixed_cost(infos: list[dict]) -> tuple[float, float, float]:
    """Mean per run: kernel start and imports (before the first notebook), resets (before the others), seconds."""
    from lib.core.step_names import STEPS

    first = [info[STEPS[0]]["startup"] for info in infos]
    resets = [sum(info[s]["startup"] for s in STEPS[1:]) for info in infos]
    total = [sum(step["seconds"] for step in info.values()) for info in infos]
    return sum(first) / len(infos), sum(resets) / len(infos), sum(total) / len(infos)


def _spin(_: int) -> float:
    """Seconds of a fixed piece of pure-Python work (no threads of its own)."""
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i * i
    return time.perf_counter() - start


def machine_ceiling(processes: int, rounds: int = 3) -> float:
    """How much more work ``processes`` processes at once do than one: the most any parallel run can gain here
    (``processes`` on free cores; less where other programs hold cores). Best of ``rounds``, interleaved."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(processes) as pool:
        alone, together = [], []
        for _ in range(rounds):
            alone += pool.map(_spin, [0])
            together.append(max(pool.map(_spin, range(processes))))
    return processes * min(alone) / min(together)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="seeds of the grid")
    parser.add_argument(
        "--workers", type=int, default=None, help="local cluster workers (default: sized to the machine)"
    )
    args = parser.parse_args()

    from dask.system import CPU_COUNT

    from lib.runs.machine import one_line
    from lib.study.engine import default_workers

    workers = args.workers or default_workers()
    print(f"machine: {one_line()}, {CPU_COUNT} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"grid: {args.runs} runs of the demo, recipe {RECIPE}, fine-tuning {EPOCHS} epochs")
    before = machine_ceiling(workers)
    print(f"ceiling: {workers} processes of pure Python at once do x{before:.2f} the work of one")
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp:
        tmp = Path(tmp)
        spec = write_study(tmp, args.runs)
        sequential, seq_infos = timed_study(spec, tmp / "sequential", workers=1)
        print(f"sequential (1 worker, {CPU_COUNT} threads per run): {sequential:.1f} s")
        parallel, par_infos = timed_study(spec, tmp / "parallel", workers=workers)
        threads = par_infos[0]["data"]["threads"]
        print(f"local cluster ({workers} workers, {threads} thread(s) per run): {parallel:.1f} s")
        for label, infos in (("sequential", seq_infos), ("local cluster", par_infos)):
            start, resets, total = fixed_cost(infos)
            print(
                f"fixed cost of a run, {label}: kernel start and imports {start:.1f} s + 4 resets {resets:.1f} s "
                f"= {start + resets:.1f} s of {total:.1f} s ({100 * (start + resets) / total:.0f} %; "
                f"start and imports alone {100 * start / total:.0f} %)"
            )
        separate = kernel_per_notebook(spec, tmp / "kernels", threads=CPU_COUNT)
        one = sum(step["seconds"] for step in seq_infos[0].values())
        print(
            f"one run, a kernel per notebook: {separate:.1f} s; in one kernel (sequential contender): {one:.1f} s "
            f"({separate - one:+.1f} s)"
        )
    after = machine_ceiling(workers)
    print(f"ceiling after: x{after:.2f}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"study_speedup={sequential / parallel:.2f} runs={args.runs} workers={workers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
