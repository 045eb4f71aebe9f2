"""Promises of the repository itself: pins agree, notebooks are committed clean and parameterized."""

from __future__ import annotations

import re
import tomllib

import nbformat
import pytest
import yaml

from lib.paths import PROJECT_ROOT
from lib.run_notebook import notebook_parameters

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


def test_requirements_environment_and_pyproject_pin_the_same_versions():
    requirements = _pins((PROJECT_ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert _pins(pip_section) == requirements
    assert _pins(pyproject["project"]["dependencies"]) == requirements
    assert "python=3.11" in env["dependencies"]
    for needed in [
        "tensorflow-cpu",
        "keras",
        "h5py",
        "numpy",
        "pandas",
        "matplotlib",
        "seaborn",
        "papermill",
        "jupyter",
        "gdown",
        "tqdm",
    ]:
        assert needed in requirements


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: run `make strip-notebooks`"


def _makefile_params() -> dict[str, set[str]]:
    """Parameter names the Makefile passes to each notebook (`-p name=...`)."""
    text = (PROJECT_ROOT / "Makefile").read_text()
    passed: dict[str, set[str]] = {}
    for match in re.finditer(r"^\$\(NBOUT\)/(\w+)\.ipynb:.*\n\t(.+)$", text, re.MULTILINE):
        passed[match.group(1)] = set(re.findall(r"-p \"?(\w+)=", match.group(2)))
    return passed


def test_every_parameter_the_makefile_passes_is_in_the_parameters_cell():
    passed = _makefile_params()
    assert set(passed) == {p.stem for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        assert passed[path.stem] <= notebook_parameters(path), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_holds_plain_literals(path):
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    import ast

    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), f"{path.name}: only assignments in the parameters cell"
        ast.literal_eval(node.value)  # raises for anything but a literal
    assert "dataset" in notebook_parameters(path)


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
