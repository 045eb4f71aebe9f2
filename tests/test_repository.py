"""Promises of the repository itself: pins agree, notebooks are committed clean and parameterized."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import nbformat
import pytest
import yaml

from lib.paths import PROJECT_ROOT
from lib.run_notebook import notebook_defaults

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"unpinned requirement {line!r}"
            pins[name.strip().lower()] = version.strip()
    return pins


def _requirements(name: str) -> list[str]:
    return [line for line in (PROJECT_ROOT / name).read_text().splitlines() if not line.startswith("-r")]


def test_requirements_environment_and_pyproject_pin_the_same_versions():
    """One set of pins in three formats: pip (runtime and dev files), conda (environment.yml), the package."""
    runtime, dev = _pins(_requirements("requirements.txt")), _pins(_requirements("requirements-dev.txt"))
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert _pins(pip_section) == {**runtime, **dev}
    assert {**_pins(project["dependencies"]), **_pins(extras["cpu"])} == runtime
    assert _pins(extras["dev"]) == dev
    assert _pins(extras["gpu"]) == {"tensorflow[and-cuda]": runtime["tensorflow-cpu"]}, "the same TensorFlow"
    assert not set(runtime) & set(dev), "a package is runtime or development, not both"
    assert "python=3.11" in env["dependencies"]
    for needed in ["tensorflow-cpu", "keras", "h5py", "numpy", "pandas", "papermill", "gdown", "dask", "filelock"]:
        assert needed in runtime
    for tool in ["pytest", "ruff", "pre-commit", "nbstripout", "jupyter"]:
        assert tool in dev


def test_lint_and_format_pass():
    """ruff (configured in pyproject.toml) finds nothing in the code, the tests or the notebooks."""
    ruff = [sys.executable, "-m", "ruff"]
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([*ruff, *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_in_lib_is_over_400_lines():
    long = {
        p.relative_to(PROJECT_ROOT).as_posix(): n
        for p in (PROJECT_ROOT / "lib").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"split these by responsibility: {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: run `make strip-notebooks`"


def _makefile_params() -> dict[str, set[str]]:
    """Parameter names the Makefile passes to each notebook (`$(RUN) notebooks/NN.ipynb $(PARAMS) -p name=...`)."""
    text = (PROJECT_ROOT / "Makefile").read_text()
    common = set(re.findall(r"-p (\w+)=", re.search(r"^PARAMS\s*=(.*)$", text, re.MULTILINE).group(1)))
    passed: dict[str, set[str]] = {}
    for match in re.finditer(r"\$\(RUN\) notebooks/(\w+)\.ipynb \$\(PARAMS\)(.*)$", text, re.MULTILINE):
        passed[match.group(1)] = common | set(re.findall(r"-p \"?(\w+)=", match.group(2)))
    return passed


def test_every_parameter_the_makefile_passes_is_in_the_parameters_cell():
    passed = _makefile_params()
    assert set(passed) == {p.stem for p in NOTEBOOKS if p.stem != "06_study"}
    assert {"dataset", "data_dir", "results_dir"} <= passed["01_data"] and "thresholds" in passed["03_pruning_sweep"]
    for stem, names in passed.items():
        assert names <= set(notebook_defaults(PROJECT_ROOT / "notebooks" / f"{stem}.ipynb")), stem


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_plain_literals(path):
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    import ast

    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        ast.literal_eval(node.value)  # raises for anything but a literal
    assert "dataset" in notebook_defaults(path) or path.stem == "06_study"


def test_readme_demo_table_quotes_the_committed_results():
    """The README's demo table is copied from results/demo*/goodnet.csv, rounded: it must not drift from them."""
    import pandas as pd

    text = (PROJECT_ROOT / "README.md").read_text()
    block = text.split("<!-- goodnet:demo -->")[1].split("<!-- /goodnet:demo -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()[2:]]
    tables = {
        d: pd.read_csv(PROJECT_ROOT / "results" / d / "goodnet.csv").set_index("model")
        for d in ("demo", "demo-pruning-aware")
    }
    assert rows, "no table between the markers"
    for model, k1, acc1, asr1, k2, acc2, asr2 in rows:
        for table, (k, acc, asr) in zip(tables.values(), ((k1, acc1, asr1), (k2, acc2, asr2)), strict=False):
            row = table.loc[model]
            assert int(k) == row["channels_pruned"], model
            assert acc == f"{row['clean_accuracy']:.2f}" and asr == f"{row['attack_success_rate']:.2f}", model
