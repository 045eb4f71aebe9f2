"""Promises of the repository itself: pins agree, notebooks are committed clean and parameterized."""

from __future__ import annotations

import graphlib
import os
import re
import subprocess
import sys
import tomllib

import nbformat
import pandas as pd
import pytest
import yaml
from conftest import lib_imports

from lib.core.paths import PROJECT_ROOT
from lib.report.tables import read_csv
from lib.runs.notebook import notebook_defaults

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


def test_the_pinned_versions_lie_in_the_declared_ranges():
    """pyproject.toml declares ranges (what the code runs on), constraints.txt the exact versions make and CI
    install: every package the project names is pinned there once, inside its range; TensorFlow comes only from
    an extra (cpu or gpu, the same range), so that `pip install -e .` never replaces a platform's TensorFlow."""
    from packaging.requirements import Requirement

    pins = _pins((PROJECT_ROOT / "constraints.txt").read_text().splitlines())
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = [Requirement(r) for r in [*project["dependencies"], *extras["cpu"], *extras["dev"]]]
    assert sorted(r.name.lower() for r in declared) == sorted(pins)
    for r in declared:
        assert r.specifier.contains(pins[r.name.lower()]), f"{r.name}=={pins[r.name.lower()]} is outside {r}"
    assert not any(r.name.startswith("tensorflow") for r in map(Requirement, project["dependencies"]))
    cpu, gpu = Requirement(extras["cpu"][0]), Requirement(extras["gpu"][0])
    assert (cpu.name, gpu.name, gpu.extras) == ("tensorflow-cpu", "tensorflow", {"and-cuda"})
    assert cpu.specifier == gpu.specifier, "the same TensorFlow either way"
    assert project["requires-python"] == ">=3.11,<3.14"
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-c constraints.txt", "-e .[cpu,dev]"] and "python=3.11" in env["dependencies"]


def test_lint_and_format_pass():
    """ruff (configured in pyproject.toml) finds nothing in the code, the tests or the notebooks."""
    ruff = [sys.executable, "-m", "ruff"]
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([*ruff, *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


#: ``lib``'s packages, bottom to top: a module imports from its own floor or those below (``lib/__init__.py``).
FLOORS = ["core", "network", "data", "runs", "defense", "sweep", "report", "demo", "steps", "study"]
#: The commands on top of every floor.
COMMANDS = ["eval", "verify"]


def test_lib_is_a_handful_of_packages_imported_downwards_only():
    """``lib/`` holds the floors' packages and the commands, nothing else; no module imports a higher floor or a
    command, and no import circle exists."""
    top = sorted(p.stem for p in (PROJECT_ROOT / "lib").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())
    assert top == sorted([*FLOORS, *COMMANDS, "__init__"])
    rank = {**{f: i for i, f in enumerate(FLOORS)}, **dict.fromkeys(COMMANDS, len(FLOORS))}
    imports = lib_imports()
    upward = [
        f"{m} -> {t}"
        for m, targets in imports.items()
        for t in targets
        if m != "lib" and (t == "lib" or rank[t.split(".")[1]] > rank[m.split(".")[1]])
    ]
    assert upward == []
    graphlib.TopologicalSorter({m: targets & imports.keys() for m, targets in imports.items()}).prepare()  # no circle


def test_no_module_is_only_re_exports():
    """A module that only imports names for others to take from it hides where they live: each name has one home."""
    import ast

    def re_export(node: ast.stmt) -> bool:
        names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        return isinstance(node, (ast.Import, ast.ImportFrom)) or names == ["__all__"]

    for path in (PROJECT_ROOT / "lib").rglob("*.py"):
        body = [n for n in ast.parse(path.read_text(encoding="utf-8")).body if not isinstance(n, ast.Expr)]
        from_lib = [n for n in body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("lib")]
        assert not (from_lib and all(map(re_export, body))), path


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
    assert set(passed) == {p.stem for p in NOTEBOOKS if p.stem != "09_study"}
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
    assert "dataset" in notebook_defaults(path) or path.stem == "09_study"


def _block(marker: str) -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    return text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]


def _table_rows(block: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.strip().splitlines()[2:]]


@pytest.mark.parametrize(
    ("marker", "file", "models"),
    [
        ("goodnet:demo", "goodnet.csv", ["B", "B'_2%", "B'_4%", "B'_10%"]),
        ("clp:demo", "clp.csv", ["CLP_u3", "CLP_2%", "CLP_4%", "CLP_10%"]),
        ("anp:demo", "anp.csv", ["ANP_2%", "ANP_4%", "ANP_10%"]),
    ],
)
def test_readme_demo_tables_quote_the_committed_results(marker, file, models):
    """The README's single-run tables are copied from results/demo*/<file>, rounded: they must not drift."""

    rows = _table_rows(_block(marker))
    tables = {
        d: read_csv(PROJECT_ROOT / "results" / d / file).set_index("model") for d in ("demo", "demo-pruning-aware")
    }
    assert [r[0] for r in rows] == models
    for model, *cells in rows:
        for table, (k, acc, asr) in zip(tables.values(), (cells[:3], cells[3:]), strict=True):
            row = table.loc[model]
            assert int(k) == row["channels_pruned"], model
            assert acc == f"{row['clean_accuracy']:.2f}" and asr == f"{row['attack_success_rate']:.2f}", model


def test_readme_detection_table_quotes_the_committed_results():
    """The README's STRIP table is copied from results/demo*/detection.csv, rounded: it must not drift."""
    rows = _table_rows(_block("strip:demo"))
    tables = [
        read_csv(PROJECT_ROOT / "results" / d / "detection.csv").set_index("detector")
        for d in ("demo", "demo-pruning-aware")
    ]
    assert [r[0] for r in rows] == tables[0].index.tolist() == tables[1].index.tolist()
    for detector, *cells in rows:
        for table, (frr, far, auc) in zip(tables, (cells[:3], cells[3:]), strict=True):
            row = table.loc[detector]
            assert frr == f"{row['FRR']:.1f}" and far == f"{row['FAR']:.1f}", detector
            assert auc == ("n/a" if pd.isna(row["AUC"]) else f"{row['AUC']:.2f}"), detector


#: The committed studies the README quotes (demo-seeds always; the others once their results are committed).
STUDIES = (
    "demo-seeds",
    *(s for s in ("demo-fine-tuning",) if (PROJECT_ROOT / "results" / "studies" / s / "contrasts.csv").is_file()),
)


def _study_file(study: str, name: str):

    return read_csv(PROJECT_ROOT / "results" / "studies" / study / name)


def _study_summary():
    return _study_file("demo-seeds", "summary.csv")


def test_readme_study_table_quotes_the_study_summary():
    """Each cell `mean [low, high]` of the README's study table is its row of summary.csv, rounded; `—` where the
    study has no such row (a part of the study not yet run: the text says which)."""
    summary = _study_summary().set_index(["dataset", "model"])
    rows = _table_rows(_block("study:demo-seeds"))
    assert rows, "no table between the markers"
    for model, *cells in rows:
        for dataset, pair in zip(("demo", "demo-pruning-aware"), (cells[:2], cells[2:]), strict=True):
            if (dataset, model) not in summary.index:
                assert pair == ["—", "—"], (dataset, model)
                continue
            row = summary.loc[(dataset, model)]
            for metric, cell in zip(("clean_accuracy", "attack_success_rate"), pair, strict=True):
                expected = (
                    f"{row[metric + '_mean']:.1f} [{row[metric + '_ci_low']:.1f}, {row[metric + '_ci_high']:.1f}]"
                )
                assert cell == expected, (dataset, model, metric)


def test_readme_learning_rate_table_quotes_the_grid_studys_summary():
    """Each cell of the README's learning-rate table is its row of demo-fine-tuning's summary.csv, rounded."""
    if "demo-fine-tuning" not in STUDIES:
        pytest.skip("demo-fine-tuning's results are not committed")
    summary = _study_file("demo-fine-tuning", "summary.csv").set_index(["dataset", "learning_rate", "model"])
    rows = _table_rows(_block("study:demo-fine-tuning"))
    assert len(rows) == 2 * 3, "FT and FP_4% at each of the three learning rates"
    for rate, model, *cells in rows:
        for (dataset, metric), cell in zip(
            [(d, m) for d in ("demo", "demo-pruning-aware") for m in ("clean_accuracy", "attack_success_rate")],
            cells,
            strict=True,
        ):
            r = summary.loc[(dataset, float(rate), model)]
            assert cell == f"{r[metric + '_mean']:.1f} [{r[metric + '_ci_low']:.1f}, {r[metric + '_ci_high']:.1f}]"


def _demo_section() -> str:
    """The prose of the README's demo results (tables left out), as one line: sentences wrap across lines."""
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Results on the demo scenarios")[1].split("\n## ")[0]
    return " ".join(" ".join(line for line in section.splitlines() if not line.startswith("|")).split())


#: A verdict sentence of ``lib.study.contrasts.verdict_sentence``, as the README quotes them.
_MODEL = r"[A-Za-z][\w'%+]*"  # G_2%+STRIP: a detector of detection_contrasts.csv
_VALUE = r"[\d.e+-]+"
VERDICT = re.compile(
    rf"{_MODEL}(?: at [a-z_]+ {_VALUE}(?:, [a-z_]+ {_VALUE})*)? - (?:{_MODEL}|{_VALUE}(?:, {_VALUE})*): "
    r"-?\+?\d+\.\d points (?:\[-?\d+\.\d, -?\d+\.\d\]|\(one seed: no interval\)), "
    r"Holm p [=<] [^,]+, [^:]+: (?:lower|higher|not separated by these seeds)"
    r"(?: \((?:could detect about ±\d+\.\d points|the interval excludes 0, but the adjusted test does not reject)\))?"
)


def test_every_verdict_the_readme_states_is_the_paired_tests():
    """Each verdict sentence of the demo section is one that contrasts.csv (or, for the detectors,
    detection_contrasts.csv) of a committed study gives, word for word (difference, interval, Holm p, seeds,
    verdict): the README cannot claim what the paired test did not."""
    from lib.study.contrasts import verdict_sentence

    files = [
        (study, name)
        for study in STUDIES
        for name in ("contrasts.csv", "detection_contrasts.csv")
        if (PROJECT_ROOT / "results" / "studies" / study / name).is_file()  # a study before notebook 07 has no STRIP
    ]
    known = {verdict_sentence(row) for study, name in files for _, row in _study_file(study, name).iterrows()}
    quoted = VERDICT.findall(_demo_section())
    assert len(quoted) >= 8, "the demo section states too few verdicts"
    assert [q for q in quoted if q not in known] == [], "verdicts that are not in the contrasts"


def test_every_interval_the_readme_quotes_is_in_a_study_summary():
    """The claims of the demo section name means and intervals: each `m % [l, h]` is one of summary.csv's, and
    no other percentage with a decimal stands in the prose (outside the tables, which are checked above)."""
    known = {
        f"{r[m + '_mean']:.1f} % [{r[m + '_ci_low']:.1f}, {r[m + '_ci_high']:.1f}]"
        for study in STUDIES
        for _, r in _study_file(study, "summary.csv").iterrows()
        for m in ("clean_accuracy", "attack_success_rate")
    }
    prose = VERDICT.sub("", _demo_section())
    quoted = re.findall(r"-?\d+\.\d % \[-?\d+\.\d, -?\d+\.\d\]", prose)
    assert quoted, "the demo section quotes no interval"
    assert not [q for q in quoted if q not in known], "intervals that are not in summary.csv"
    bare = re.findall(r"\d+\.\d %(?! \[)", prose)
    assert bare == [], "percentages without their interval"


#: "ANP_2% pruned nothing in 13 of 20 `demo` seeds and in 8 of 20 `demo-pruning-aware` seeds", "STRIP's AUC is below
#: 0.5 in 3 of 20 `demo` seeds ...": counts of seeds the demo section states, each of a condition on runs.csv or
#: detection.csv of demo-seeds.
_IN_SEEDS = r"in (\d+) of (\d+) `([\w-]+)` seeds"
SEED_COUNT = re.compile(
    rf"({_MODEL} pruned nothing|STRIP's AUC is below 0\.5) {_IN_SEEDS}((?: and {_IN_SEEDS.replace('(', '(?:')})*)"
)


def _seeds_where(subject: str) -> dict[str, tuple[int, int]]:
    """Per dataset: (seeds where the subject holds, seeds that have its row)."""
    if subject.startswith("STRIP"):
        rows = _study_file("demo-seeds", "detection.csv")
        rows = rows[rows["detector"] == "STRIP"]
        holds = rows["AUC"] < 0.5
    else:
        model = subject.removesuffix(" pruned nothing")
        rows = _study_file("demo-seeds", "runs.csv")
        rows = rows[rows["model"] == model]
        holds = rows["channels_pruned"] == 0
    counts = holds.groupby(rows["dataset"]).agg(["sum", "size"])
    return {d: (int(k), int(n)) for d, (k, n) in counts.iterrows()}


def test_every_count_of_seeds_the_readme_states_is_the_studys():
    """Each "X pruned nothing in k of n `dataset` seeds" (and STRIP's AUC below 0.5) of the demo section is the count
    in the committed study: a defense that failed in some seeds is said so, with the number that did."""
    phrases = SEED_COUNT.findall(_demo_section())
    assert phrases, "the demo section states no count of seeds"
    for subject, *first, rest in phrases:
        stated = [first, *re.findall(_IN_SEEDS, rest)]
        actual = _seeds_where(subject)
        for k, n, dataset in stated:
            assert actual.get(dataset) == (int(k), int(n)), (subject, dataset, actual.get(dataset))


def test_readme_what_is_where_names_files_that_exist():
    """Every top-level folder and every lib module the README's tree names is in the repository."""
    block = (PROJECT_ROOT / "README.md").read_text().split("## What is where")[1].split("```")[1]
    entries: dict[str, list[str]] = {}
    for line in block.strip().splitlines():
        if not line.startswith(" "):
            entries[line.split()[0].rstrip("/")] = []
        entries[list(entries)[-1]].append(line)
    assert {"notebooks", "lib", "data", "results", "studies", "checksums", "benchmarks", "tests"} <= set(entries)
    assert all((PROJECT_ROOT / folder).is_dir() for folder in entries), entries.keys()
    named = re.findall(r"\b([a-z_]+\*?\.py|[a-z_]+/)", " ".join(entries["lib"]).removeprefix("lib/"))
    missing = [n for n in named if n != "lib/" and not list((PROJECT_ROOT / "lib").glob(n.rstrip("/")))]
    assert named and not missing, missing
    notebooks = re.findall(r"\b(\d\d_\w+)", " ".join(entries["notebooks"]))
    assert sorted(notebooks) == sorted(p.stem for p in NOTEBOOKS)


def _setup_cell(path) -> str:
    [cell] = [c for c in nbformat.read(path, as_version=4).cells if "setup" in c.metadata.get("tags", [])]
    return cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_starts_with_the_same_set_up_cell(path):
    """The first code cell makes ``lib`` importable where the project is not installed (Kaggle, Colab, a bare
    Jupyter): the same cell in every notebook, before the parameters."""
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "setup" in first.metadata.get("tags", [])
    assert _setup_cell(path) == _setup_cell(NOTEBOOKS[0])


@pytest.mark.parametrize("where", ["notebooks", "."])
def test_the_set_up_cell_finds_the_project_from_where_a_notebook_runs(where, tmp_path):
    """Run by a Python that cannot import ``lib`` (no site-packages: ``-S``), from ``notebooks/`` or the repository
    root, the cell finds the project and ``lib`` imports; off Kaggle and Colab it installs nothing."""
    code = _setup_cell(NOTEBOOKS[0]) + "\nimport lib.core.paths\nprint(lib.core.paths.PROJECT_ROOT)"
    env = {k: v for k, v in os.environ.items() if k not in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=PROJECT_ROOT / where, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(PROJECT_ROOT)
    elsewhere = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert elsewhere.returncode != 0 and "the project is not here" in elsewhere.stderr
