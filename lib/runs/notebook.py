"""Execute a step's notebook headlessly with papermill, only when its results are out of date.

Usage (what the Makefile runs)::

    python -m lib.runs.notebook notebooks/03_pruning_sweep.ipynb -p dataset=demo -p "thresholds=[2, 4, 10]"

Each ``-p name=value`` is read as YAML (numbers, lists, booleans; anything else stays a string) and must
name a variable of the notebook's ``parameters`` cell (papermill's own inspection finds them). The step
runs unless its record (``lib.runs.provenance``) says that its results are current for exactly these
parameters and this code (``--force`` runs it anyway). The executed copy goes to
``<results>/notebooks/<name>.ipynb`` (or the output path given); it is written to a temporary file and
renamed only on success. On failure it is kept as ``<name>.failed.ipynb`` and one message names the
failing cell. The run holds its dataset's lock (``lib.runs.locks``) and prints one line:
``03_pruning_sweep  demo  8.1 s  B'_2% at 38, B'_4% at 40 ...``.

The kernel gets its environment explicitly (nothing here changes this process's ``os.environ``); its
own C-level output (TensorFlow's start-up lines) goes to ``<name>.log`` beside the executed notebook,
not into the notebook or the console.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml
from jupyter_client import KernelManager

from lib.core.atomic import atomic_path
from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, shown
from lib.core.step_names import DATA
from lib.runs import locks, provenance
from lib.runs.workspace import Workspace, workspace

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: The kernel's environment on top of the caller's: quiet TensorFlow, figures kept in the notebook, ``lib`` importable.
KERNEL_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}
#: C-level output of the kernel (TensorFlow's logging) goes to the log file, not into the notebook.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]


def parse_parameters(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[2, 4]"]`` -> ``{"a": 1, "b": [2, 4]}``."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise InputError(pair, "not of the form name=value", "pass parameters as -p name=value")
        params[name] = yaml.safe_load(value) if value.strip() else ""
    return params


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The notebook's parameters with their default values (its ``parameters`` cell holds plain literals)."""
    found = papermill.inspect_notebook(str(path))
    if not found:
        raise InputError(path, "has no cell tagged 'parameters'", "tag the cell that assigns the parameters")
    return {name: ast.literal_eval(p["default"]) for name, p in found.items()}


def step_of(notebook: Path) -> str:
    """``03_pruning_sweep.ipynb`` runs the step ``pruning_sweep``."""
    return Path(notebook).stem.split("_", 1)[1]


def failing_cell(path: Path) -> str:
    """A one-paragraph description of the first cell that raised, from an executed notebook."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return f"cell {index} ({first_line!r}) raised {output.get('ename')}: {output.get('evalue')}"
    return "no cell error recorded (the kernel may have died, e.g. out of memory)"


@dataclass
class Outcome:
    """What became of one notebook run: the exit status and the line printed for it."""

    status: int
    line: str
    ran: bool


@contextlib.contextmanager
def kernel(env: Mapping[str, str], log: Path) -> Iterator[KernelManager]:
    """A Python kernel with this environment, its C-level output appended to ``log``, shut down afterwards.

    IPC sockets in a private folder: no TCP port is opened (and no warning about one is printed).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kernel-") as sockets, open(log, "ab") as out:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "k"))
        km.start_kernel(env=dict(env), cwd=str(PROJECT_ROOT), stdout=out, stderr=out, extra_arguments=KERNEL_ARGUMENTS)
        try:
            yield km
        finally:
            km.shutdown_kernel(now=True)


def kernel_env(held: list[Path], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: the caller's (or ``base``), ``KERNEL_ENV``, ``lib`` on the path, our locks."""
    env = locks.env_holding(held, dict(os.environ if base is None else base))
    env.update(KERNEL_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def full_parameters(notebook: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's defaults overridden by ``params``, each of which must be one of its parameters."""
    defaults = notebook_defaults(notebook)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise InputError(notebook, f"has no parameter(s) {unknown}", "see its parameters cell")
    return {**defaults, **params}


def stale_reason(notebook: Path, params: Mapping[str, Any]) -> str | None:
    """Why ``run`` would execute the notebook now (None: its step is current), checked without the lock.

    For a caller that decides whether to start a kernel at all (``lib.study``); ``run`` decides again,
    under the lock.
    """
    notebook = Path(notebook)
    parameters = full_parameters(notebook, params)
    ws = workspace(parameters["dataset"], parameters.get("data_dir"), parameters.get("results_dir"))
    return provenance.stale_reason(ws.results, step_of(notebook), parameters, provenance.code_digest(notebook))


def run(
    notebook: Path,
    params: Mapping[str, Any],
    output: Path | None = None,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    km: KernelManager | None = None,
) -> Outcome:
    """Run ``notebook`` with ``params`` unless its step is up to date; see the module docstring.

    ``env`` is the environment the kernel starts from (default: this process's); ``km`` an already
    started kernel to run in (``lib.study`` runs a dataset's step notebooks in one).
    """
    notebook = Path(notebook)
    parameters = full_parameters(notebook, params)
    ws = workspace(parameters["dataset"], parameters.get("data_dir"), parameters.get("results_dir"))
    step = step_of(notebook)
    output = Path(output) if output else ws.results.notebooks / notebook.name
    writes_data = step == DATA  # the one step that writes the data folder; the others only read it
    with locks.hold(
        [ws.data, ws.results.root] if writes_data else [ws.results.root],
        what=f"{notebook.name} {ws.dataset}",
        read=[] if writes_data else [ws.data],
    ):
        code = provenance.code_digest(notebook)
        reason = None if force else provenance.stale_reason(ws.results, step, parameters, code)
        if not force and reason is None:
            summary = provenance.summaries(ws.results).get(step, "")
            return Outcome(EXIT_OK, _line(notebook, ws, "up to date", summary), ran=False)
        return _execute(notebook, output, parameters, ws, step, code, env, km)


def _execute(notebook, output, parameters, ws: Workspace, step, code, env, km) -> Outcome:
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.stem}.*.tmp*"):  # of a killed run: we hold the lock
        stale.unlink(missing_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if km is None:
            km = stack.enter_context(kernel(kernel_env([ws.data, ws.results.root], env), output.with_suffix(".log")))
        try:
            with atomic_path(output) as tmp:
                try:
                    papermill.execute_notebook(
                        str(notebook),
                        str(tmp),
                        parameters=dict(parameters),
                        cwd=str(PROJECT_ROOT),
                        km=km,
                        kernel_name="python3",
                        progress_bar=False,
                        log_output=False,
                    )
                except papermill.PapermillExecutionError:
                    tmp.replace(failed)
                    raise
        except papermill.PapermillExecutionError:
            message = f"FAILED: {failing_cell(failed)}; executed notebook kept at {shown(failed)}"
            return Outcome(EXIT_FAILED, _line(notebook, ws, f"{time.perf_counter() - start:.1f} s", message), ran=True)
    failed.unlink(missing_ok=True)
    provenance.complete_record(ws.results, step, parameters, code)
    summary = provenance.summaries(ws.results).get(step, "")
    return Outcome(EXIT_OK, _line(notebook, ws, f"{time.perf_counter() - start:.1f} s", summary), ran=True)


def _line(notebook: Path, ws: Workspace, status: str, summary: str) -> str:
    where = ws.dataset if ws.is_default else f"{ws.dataset} ({shown(ws.results.root)})"
    return f"{notebook.stem:<18} {where:<20} {status:>10}  {summary}".rstrip()


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through atomic_path and the kernel's shutdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.runs.notebook", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("output", type=Path, nargs="?", help="executed copy (default: <results>/notebooks/<name>)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--force", action="store_true", help="run even if the step's results are current")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        outcome = run(args.notebook, parse_parameters(args.param), args.output, force=args.force)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(outcome.line, file=sys.stderr if outcome.status else sys.stdout, flush=True)
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
