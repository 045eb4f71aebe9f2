"""Execute one notebook headlessly with papermill, so that a failed run is never mistaken for a good one.

Usage (what the Makefile runs)::

    python -m lib.run_notebook notebooks/03_pruning_sweep.ipynb results/demo/notebooks/03_pruning_sweep.ipynb \\
        -p dataset=demo -p "thresholds=[2, 4, 10]"

Each ``-p name=value`` is read as YAML (numbers, lists, booleans; anything else stays a string) and
must name a variable of the notebook's ``parameters`` cell. The executed notebook is written to a
temporary file and renamed onto the output path only on success. On failure it is kept as
``<output>.failed.ipynb``, the output path is removed (so ``make`` runs it again next time), and
one message names the failing cell and the error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import nbformat
import papermill
import yaml

from lib.atomic import atomic_path
from lib.paths import PROJECT_ROOT


def parse_parameters(pairs: list[str]) -> dict:
    """``["a=1", "b=[2, 4]"]`` -> ``{"a": 1, "b": [2, 4]}``."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"run_notebook: parameter {pair!r} is not of the form name=value")
        params[name] = yaml.safe_load(value) if value.strip() else ""
    return params


def notebook_parameters(path: Path) -> set[str]:
    """Names assigned in the cell tagged ``parameters``."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            names = set()
            for line in cell.source.splitlines():
                head = line.split("#", 1)[0]
                if "=" in head and not head.startswith((" ", "\t")):
                    names.add(head.split("=", 1)[0].split(":", 1)[0].strip())
            return names
    raise SystemExit(f"run_notebook: {path} has no cell tagged 'parameters'")


def failing_cell(path: Path) -> str:
    """A one-paragraph description of the first cell that raised, from an executed notebook."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return f"cell {index} ({first_line!r}) raised {output.get('ename')}: {output.get('evalue')}"
    return "no cell error recorded (the kernel may have died, e.g. out of memory)"


def run(notebook: Path, output: Path, params: dict, kernel: str | None = None) -> int:
    unknown = set(params) - notebook_parameters(notebook)
    if unknown:
        print(
            f"run_notebook: {notebook} has no parameter(s) {sorted(unknown)}; see its parameters cell", file=sys.stderr
        )
        return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.stem}.*.tmp*"):  # left by a run that was killed (SIGKILL)
        stale.unlink(missing_ok=True)
    failed = output.with_suffix(".failed.ipynb")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the kernel inherits it: no TensorFlow start-up chatter
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures shown in the executed notebook
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{PROJECT_ROOT}{os.pathsep}{env_path}" if env_path else str(PROJECT_ROOT)
    output.unlink(missing_ok=True)
    try:
        with atomic_path(output) as tmp:
            try:
                papermill.execute_notebook(
                    str(notebook),
                    str(tmp),
                    parameters=params,
                    cwd=str(PROJECT_ROOT),
                    kernel_name=kernel,
                    progress_bar=False,
                    log_output=False,
                )
            except papermill.PapermillExecutionError:
                tmp.replace(failed)
                raise
    except papermill.PapermillExecutionError:
        print(
            f"\nrun_notebook: {notebook} FAILED: {failing_cell(failed)}\n  executed notebook kept at {failed}",
            file=sys.stderr,
        )
        return 1
    failed.unlink(missing_ok=True)
    print(f"run_notebook: {notebook} -> {output}")
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through atomic_path, which removes its temporary file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run(args.notebook, args.output, parse_parameters(args.param), args.kernel)


if __name__ == "__main__":
    sys.exit(main())
