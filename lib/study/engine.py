"""Fan a study's runs out on Dask (``dask.distributed``) and follow them to the end.

With no scheduler address the runs go to a ``LocalCluster`` of worker processes sized to this machine (one
run at a time per worker, at most one worker per core, per ``MEMORY_PER_RUN`` of free memory and per GPU); with an
address (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``), to any running cluster: ``dask scheduler`` and
``dask worker`` started by hand, or dask-jobqueue on SLURM. Workers must run this project at the same path
(a shared file system) so that every run writes where the client reads.

Only runs with a step out of date are submitted (a study resumes where it stopped); a run's failure is
reported at the end and never stops the others.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dask
import psutil
from dask.system import CPU_COUNT
from tqdm.auto import tqdm

from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, shown
from lib.core.step_names import DATA, STEPS
from lib.runs.machine import gpu_ids
from lib.runs.notebook import stale_reason
from lib.study.runner import Job, RunReport, execute
from lib.study.spec import Run, StudySpec, step_notebook

#: Memory one run may take (TensorFlow, a BadNet, its image sets): bounds the local cluster's size.
MEMORY_PER_RUN = 3 * 2**30
CONNECT_TIMEOUT_S = 10


@dataclass
class StudyOutcome:
    """What ``run_study`` did: the runs it executed (ok or failed) and those already up to date."""

    reports: list[RunReport] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    threads: int = 0  # every run's thread count, fixed when the study started (0: nothing ran)

    @property
    def failed(self) -> list[RunReport]:
        return [r for r in self.reports if not r.ok]


def default_workers(threads_per_run: int | None = None) -> int:
    """Local workers: one per ``threads_per_run`` cores (default 1), fewer if free memory cannot hold as many runs;
    on a machine with GPUs, at most one per GPU (each worker's runs get a GPU of their own: ``runner.gpu_env``)."""
    limits = [CPU_COUNT // (threads_per_run or 1), psutil.virtual_memory().available // MEMORY_PER_RUN]
    if gpus := gpu_ids():
        limits.append(len(gpus))
    return max(1, min(limits))


def scheduler_address(scheduler: str | None = None, workers: int | None = None) -> str | None:
    """The address to connect to (``scheduler`` or ``DASK_SCHEDULER_ADDRESS``), None for a local cluster;
    checks that ``workers`` (which sizes only a local cluster) fits."""
    address = scheduler or dask.config.get("scheduler-address", None)
    if address and workers is not None:
        raise InputError(
            "--workers",
            "sizes only the local cluster, but a scheduler address was given",
            "size a cluster of your own with `dask worker --nworkers N --nthreads 1`, or leave --scheduler out",
        )
    if workers is not None and workers < 1:
        raise InputError("--workers", f"{workers} is not a number of workers", "give 1 or more")
    return address


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, threads: int | None = None) -> Iterator:
    """A client of the cluster at ``scheduler`` (or ``DASK_SCHEDULER_ADDRESS``), else of a new local cluster."""
    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler, workers)
    if not address:
        n = workers or default_workers(threads)
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as exc:
        raise InputError(
            "--scheduler",
            f"no Dask scheduler answered at {address} within {CONNECT_TIMEOUT_S} s ({type(exc).__name__})",
            "start one with `dask scheduler` and its workers with `dask worker ADDRESS` (README, Studies), "
            "or leave --scheduler out (and unset DASK_SCHEDULER_ADDRESS) for a local cluster",
        ) from None
    with client:
        _check_workers(client, address)
        yield client


def _check_workers(client, address: str) -> None:
    """Workers already connected run this project at the client's path (they write where we read)."""
    if not client.scheduler_info(n_workers=-1)["workers"]:
        print(f"no worker has joined {address} yet: the runs start as workers join", file=sys.stderr)
        return
    try:
        roots = client.run(_project_root)
    except Exception as exc:
        raise InputError(
            address,
            f"a worker cannot import this project's lib ({type(exc).__name__}: {exc})",
            "start the workers in the project's root with its environment: "
            "cd PROJECT && PYTHONPATH=. .venv/bin/dask worker ADDRESS",
        ) from None
    elsewhere = sorted(f"{w} ({r})" for w, r in roots.items() if r != str(PROJECT_ROOT))
    if elsewhere:
        raise InputError(
            address,
            f"workers run the project from another path than {PROJECT_ROOT}: {', '.join(elsewhere)}",
            "run the workers from the same checkout at the same path (a shared file system)",
        )


def _project_root() -> str:
    return str(PROJECT_ROOT)


def pending_runs(spec: StudySpec) -> tuple[list[Run], list[Run]]:
    """The runs with a step out of date, and those whose every step is current for this file and code."""
    todo, current = [], []
    for run in spec.runs():
        stale = any(stale_reason(step_notebook(s), spec.notebook_parameters(run, s)) for s in STEPS)
        (todo if stale else current).append(run)
    return todo, current


def jobs_for(spec: StudySpec, runs: list[Run], threads: int) -> tuple[dict[Path, Job], list[Job]]:
    """Data jobs (one per shared data folder: its runs' data steps in turn) and run jobs (one per run).

    A demo run without a grid is one job of its step notebooks. Runs that share a data folder (a CSAW dataset's,
    or a demo instance's across grid points) get it from one data job, which builds it at its first run and
    only checks it at the others; their other notebooks wait for it. Every job gets ``threads``.
    """
    params = {r.name: {s: spec.notebook_parameters(r, s) for s in STEPS} for r in runs}
    shared: dict[Path, list[Run]] = {}
    for run in runs:
        if run.shares_data:
            shared.setdefault(run.data_dir, []).append(run)
    data_jobs = {
        folder: Job(tuple(group), (DATA,), {r.name: params[r.name] for r in group}, threads)
        for folder, group in shared.items()
    }
    run_jobs = [
        Job((run,), STEPS[1:] if run.shares_data else STEPS, {run.name: params[run.name]}, threads) for run in runs
    ]
    return data_jobs, run_jobs


def threads_for(spec: StudySpec, client) -> int:
    """Every run's thread count, fixed once when the study starts: ``threads_per_run``, else the fewest cores
    per worker slot over the cluster's hosts as they are now (a worker lost or added later changes nothing:
    training results depend on the thread count)."""
    if spec.threads_per_run:
        return spec.threads_per_run
    if not client.scheduler_info(n_workers=-1)["workers"]:
        print("waiting for a worker to join, to fix every run's thread count", file=sys.stderr)
        client.wait_for_workers(1)
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(_cpu_count)
    slots: dict[str, int] = {}
    host_cores: dict[str, int] = {}
    for address, info in workers.items():
        host = info.get("host", address)
        slots[host] = slots.get(host, 0) + info["nthreads"]
        host_cores[host] = cores.get(address, CPU_COUNT)
    return max(1, min(host_cores[h] // slots[h] for h in slots))


def _cpu_count() -> int:
    return CPU_COUNT


def run_study(
    spec: StudySpec, scheduler: str | None = None, workers: int | None = None, progress: bool = True
) -> StudyOutcome:
    """Run every run of ``spec`` with a step out of date on Dask (see ``dask_client``), each reported as it
    finishes; no cluster is started when every run is up to date."""
    scheduler_address(scheduler, workers)
    todo, current = pending_runs(spec)
    outcome = StudyOutcome(current=[r.name for r in current])
    if todo:
        with dask_client(scheduler, workers, spec.threads_per_run) as client:
            outcome.threads = threads_for(spec, client)
            _fan_out(client, spec, todo, outcome, progress)
    return outcome


def _fan_out(client, spec: StudySpec, todo: list[Run], outcome: StudyOutcome, progress: bool) -> None:
    from distributed import as_completed

    data_jobs, run_jobs = jobs_for(spec, todo, outcome.threads)
    tag = uuid.uuid4().hex[:8]
    data_futures = {
        folder: client.submit(execute, job, pure=False, retries=1, key=f"{spec.name}-data-{job.runs[0].name}-{tag}")
        for folder, job in data_jobs.items()
    }
    futures = {}
    for job in run_jobs:
        run = job.runs[0]
        earlier = data_futures.get(run.data_dir, []) if run.shares_data else []
        futures[client.submit(execute, job, earlier, pure=False, retries=1, key=f"{spec.name}-{run.name}-{tag}")] = job
    bar = tqdm(total=len(spec.runs()), initial=len(outcome.current), unit="run", desc=spec.name, disable=not progress)
    try:
        for future in as_completed(futures):
            for report in _reports(future, futures[future]):
                outcome.reports.append(report)
                bar.update()
                bar.write(report_line(report), file=sys.stderr)
    finally:
        bar.close()
        client.cancel([*futures, *data_futures.values()])


def _reports(future, job: Job) -> list[RunReport]:
    """The job's reports; a job that raised (its worker died twice, say) is a failure of each of its runs."""
    try:
        return future.result()
    except Exception as exc:
        return [RunReport(r.name, ok=False, failure=f"{type(exc).__name__}: {exc}", attempts=2) for r in job.runs]


def report_line(report: RunReport) -> str:
    """``demo-seed3  5 notebooks in 41.2 s on local-1 (1 thread)``, or the failure with its cell."""
    if not report.ok:
        return f"{report.run:<28} FAILED after {report.attempts} attempt(s): {report.failure}"
    if not report.ran:
        return f"{report.run:<28} up to date"
    threads = f"{report.threads} thread{'s' if report.threads != 1 else ''}"
    return f"{report.run:<28} {len(report.ran)} notebook(s) in {report.seconds:.1f} s on {report.worker} ({threads})"


def closing_lines(spec: StudySpec, outcome: StudyOutcome) -> list[str]:
    """The end of ``lib.study run``: what ran, then one line per failed run with the cell that failed."""
    ran = sum(1 for r in outcome.reports if r.ok and r.ran)
    threads = f"; every run with {outcome.threads} thread(s)" if outcome.threads else ""
    lines = [
        f"study {spec.name}: {len(spec.runs())} runs; {ran} ran now, {len(outcome.current)} were up to date, "
        f"{len(outcome.failed)} failed ({shown(spec.root)}){threads}"
    ]
    lines += [f"FAILED {r.run}: {r.failure}" for r in outcome.failed]
    return lines
