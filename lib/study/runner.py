"""Execute runs of a study where a Dask worker calls it: each run's notebooks, in one kernel, threads pinned.

A job is what one worker does at a time: usually one run's step notebooks; for a CSAW dataset, whose runs
share ``data/<dataset>``, first one job that runs the data notebook of each of its runs in turn (the only
step that writes that folder), then one job per run for the other steps, reading it together.

* One kernel per job, not per notebook: TensorFlow is imported once per run instead of once per notebook (the
  fixed cost of a run). Between notebooks the kernel's user namespace is reset (``%reset -f``, Keras
  session and figures cleared), so a notebook never sees another's variables; every notebook seeds
  itself at its top. The kernel starts only if a step is out of date.
* Threads: TensorFlow's intra- and inter-op pools, OpenMP and BLAS get the job's thread count, fixed for
  the whole study when it started (``lib.study.engine.threads_for``), through the kernel's environment
  (this process's stays as it is).
* A notebook that fails is kept as ``*.failed.ipynb`` and the run is retried once in a new kernel, from
  the step that failed (``lib.runs.notebook`` skips the steps already current); the report names the cell.
* ``study-run.json`` in the run's folder keeps, per step, the worker, threads and seconds of the time it
  actually ran, so that a resumed study reports the same figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.core.atomic import write_text
from lib.core.errors import InputError
from lib.runs import notebook as run_notebook
from lib.runs.machine import gpu_ids
from lib.study.spec import Run, step_notebook

INFO_NAME = "study-run.json"
ATTEMPTS = 2
#: Environment variables that size the thread pools of TensorFlow, OpenMP, the BLAS numpy uses and numba.
THREAD_VARIABLES = (
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
#: Run once in a new kernel: what every notebook imports first, so that the start-up is measured apart.
WARM_UP = "import keras, tensorflow\nimport lib.steps.fine_pruning, lib.steps.data"
#: Run in the kernel between two notebooks: nothing of one is left for the next.
RESET = (
    "import keras as _keras, matplotlib.pyplot as _plt\n"
    "_plt.close('all'); _keras.backend.clear_session(free_memory=False)\n"
    "get_ipython().run_line_magic('reset', '-f')  # also collects garbage\n"
)


@dataclass(frozen=True)
class Job:
    """What one worker runs: the notebooks of ``steps`` for each of ``runs``, in order, with their parameters."""

    runs: tuple[Run, ...]
    steps: tuple[str, ...]
    parameters: Mapping[str, Mapping[str, Mapping[str, Any]]]  # run name -> step -> notebook parameters
    threads: int  # every job of a study gets the same: training results depend on it


@dataclass
class RunReport:
    """What became of one run in one job: the steps it executed now, or the failure after the retry."""

    run: str
    ok: bool
    ran: tuple[str, ...] = ()
    failure: str = ""
    attempts: int = 0
    worker: str = ""
    threads: int = 0
    seconds: float = 0.0


def _worker_number() -> object:
    """A local cluster's worker number (0, 1, ...); the name of any other worker; None outside Dask."""
    import distributed

    try:
        return distributed.get_worker().name
    except ValueError:
        return None


def worker_name() -> str:
    """The Dask worker's name (``local-<n>`` for a local cluster's numbered workers), or ``local`` outside Dask."""
    name = _worker_number()
    if name is None:
        return "local"
    return f"local-{name}" if isinstance(name, int) else str(name)


def gpu_env(env: dict[str, str], worker: object, gpus: Sequence[str]) -> dict[str, str]:
    """``env`` with one GPU for a local cluster's worker number ``worker``: one run per GPU at a time.

    Two TensorFlow processes on one GPU share its memory and its time, and each would otherwise see every
    GPU. A worker of a cluster of your own keeps the ``CUDA_VISIBLE_DEVICES`` it was started with (start one
    worker per GPU: ``CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nworkers 1 --nthreads 1``).
    """
    if gpus and isinstance(worker, int):
        return {**env, "CUDA_VISIBLE_DEVICES": gpus[worker % len(gpus)]}
    return env


def pinned_env(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment (``base`` or this process's) with every thread pool sized to ``threads``."""
    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def read_info(run: Run) -> dict[str, dict[str, Any]]:
    """Per step, the worker, threads and seconds of the last time it ran (empty when it never ran here)."""
    try:
        data = json.loads((run.results_dir / INFO_NAME).read_text(encoding="utf-8"))
        return dict(data["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_info(run: Run, steps: Mapping[str, dict[str, Any]]) -> None:
    write_text(run.results_dir / INFO_NAME, json.dumps({"steps": dict(steps)}, indent=1, sort_keys=True) + "\n")


class SharedKernel:
    """The kernel a job's notebooks share: started on first use, reset between notebooks, stopped after a failure
    (the retry gets a new one). ``ready()`` before each notebook, ``used()`` after it."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.stack = contextlib.ExitStack()
        self.km = None
        self.fresh = False  # nothing has run in it since it started or was reset

    def ready(self) -> float:
        """Start the kernel if needed, else reset its namespace; the seconds that took."""
        start = time.perf_counter()
        if self.km is None:
            self.km = self.stack.enter_context(run_notebook.kernel(self.env, self.log))
            self.run_code(WARM_UP)
        elif not self.fresh:
            self.run_code(RESET)
        self.fresh = True
        return time.perf_counter() - start

    def used(self) -> None:
        """A notebook ran in the kernel: the next ``ready()`` resets its namespace."""
        self.fresh = False

    def stop(self) -> None:
        self.stack.close()
        self.km, self.fresh = None, False

    def run_code(self, code: str) -> None:
        """Execute ``code`` in the kernel, silently; RuntimeError if it raises."""
        kc = self.km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            reply = kc.execute_interactive(code, silent=True, store_history=False, timeout=600, output_hook=_ignore)
        finally:
            kc.stop_channels()
        if reply["content"]["status"] != "ok":
            content = reply["content"]
            raise RuntimeError(f"the kernel could not run {code.splitlines()[0]!r}: {content.get('evalue')}")


def _ignore(message: dict) -> None:
    """Output of the warm-up and reset code is not shown."""


def execute(job: Job, earlier: Sequence[RunReport] = ()) -> list[RunReport]:
    """Run the job; one report per run. A run that failed in ``earlier`` (its data job) is not run again here.

    Never raises for a failing notebook: the report says what failed, so one run never stops the others.
    """
    threads = job.threads
    worker = worker_name()
    env = gpu_env(pinned_env(threads), _worker_number(), gpu_ids())
    held = [p for run in job.runs for p in (run.data_dir, run.results_dir)]
    blocked = {r.run: r for r in earlier if not r.ok}
    log = job.runs[0].results_dir / "notebooks" / "kernel.log"
    kernel = SharedKernel(run_notebook.kernel_env(held, env), log)
    reports = []
    try:
        for run in job.runs:
            if run.name in blocked:
                reports.append(blocked[run.name])
                continue
            reports.append(_execute_run(job, run, kernel, worker, threads))
    finally:
        kernel.stop()
    return reports


def _execute_run(job: Job, run: Run, kernel: SharedKernel, worker: str, threads: int) -> RunReport:
    report = RunReport(run.name, ok=False, worker=worker, threads=threads)
    params = job.parameters[run.name]
    stale = [s for s in job.steps if _stale_reason(s, params[s]) is not None]
    if not stale:
        report.ok = True
        return report
    info = read_info(run)
    start = time.perf_counter()
    try:
        for attempt in range(1, ATTEMPTS + 1):
            report.attempts = attempt
            failure = _attempt(job.steps, params, kernel, report, info, worker, threads)
            if failure is None:
                report.ok, report.failure = True, ""
                break
            report.failure = failure
            kernel.stop()  # the retry starts from a new kernel
    finally:
        report.seconds = time.perf_counter() - start
        if report.ran:
            _write_info(run, info)
    return report


def _stale_reason(step: str, params: Mapping[str, Any]) -> str | None:
    try:
        return run_notebook.stale_reason(step_notebook(step), params)
    except InputError as exc:
        return str(exc)


def _attempt(
    steps: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    kernel: SharedKernel,
    report: RunReport,
    info: dict[str, dict[str, Any]],
    worker: str,
    threads: int,
) -> str | None:
    """Run the steps in order until one fails; the failure's one-line description, or None."""
    for step in steps:
        notebook = step_notebook(step)
        try:
            if _stale_reason(step, params[step]) is None:
                continue
            startup = kernel.ready()
            start = time.perf_counter()
            outcome = run_notebook.run(notebook, params[step], km=kernel.km)
            kernel.used()
        except InputError as exc:
            return f"{notebook.stem}: {exc}"
        except Exception as exc:  # a dead kernel, a full disk: reported like a failing cell, the run retried
            return f"{notebook.stem}: {type(exc).__name__}: {exc}"
        if outcome.status != run_notebook.EXIT_OK:
            return outcome.line
        if outcome.ran:
            seconds = startup + time.perf_counter() - start
            info[step] = {
                "worker": worker,
                "threads": threads,
                "seconds": round(seconds, 2),
                "startup": round(startup, 2),
            }
            report.ran += (step,)
    return None
