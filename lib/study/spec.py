"""A study file (``studies/<name>.yaml``): which runs make up a study, read and checked before anything runs.

A run is one (dataset, seed) pair, or with ``grid:`` one (dataset, seed, grid point) triple. For a demo the
seed builds its own attack instance (``DemoRecipe.seed``: faces, poisoning, training) and seeds the
notebooks; the runs of one dataset and seed share that instance (``Run.data_dir``), whatever their grid
point, so that a grid compares settings on the same BadNet and builds it once. For a CSAW dataset the runs
share ``data/<dataset>`` and the seed only seeds what is random in the notebooks (fine-tuning). Every
mistake in the file stops here with one message that names the key and the fix, instead of failing twenty
runs later.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, StudyFiles, data_folder, shown, study_files
from lib.core.step_names import DATA, STEPS
from lib.data.catalog import DATASETS, dataset_spec
from lib.demo import DemoRecipe

#: Where study files live (``make study STUDY=<name>`` reads ``studies/<name>.yaml``).
STUDIES = PROJECT_ROOT / "studies"
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
KEYS = ("name", "datasets", "seeds", "parameters", "grid", "contrasts", "demo_recipe", "threads_per_run")
#: Notebook parameters the study sets for each run: a study file may not set them for all runs at once.
PER_RUN = {
    "dataset": "list the dataset under datasets:",
    "data_dir": "the study chooses each run's folders",
    "results_dir": "the study chooses each run's folders",
    "seed": "list the seeds under seeds:",
    "demo_recipe": "put recipe overrides under demo_recipe: at the top level",
}
#: ``DemoRecipe`` fields a study may not override: the seed is the run's, the attack is the dataset's.
RECIPE_FIXED = {
    "seed": "each run's seed comes from seeds:",
    "attack": "the dataset chooses the attack: list demo (BadNets) or demo-pruning-aware",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_EXAMPLE = "see studies/demo-seeds.yaml"


def step_notebook(step: str) -> Path:
    """The notebook that runs ``step``: ``notebooks/03_pruning_sweep.ipynb`` for ``pruning_sweep``."""
    (path,) = NOTEBOOK_DIR.glob(f"[0-9][0-9]_{step}.ipynb")
    return path


@functools.cache
def notebook_defaults(step: str) -> dict[str, Any]:
    """The parameters of a step's notebook with their defaults (read once per process)."""
    from lib.runs.notebook import notebook_defaults as read  # papermill: only where notebooks are read

    return read(step_notebook(step))


def study_root(name: str) -> Path:
    """``results/studies/<name>``: the study's aggregates; its runs in ``runs/`` below (not committed)."""
    return study_files(name).root


@dataclass(frozen=True)
class Run:
    """One (dataset, seed[, grid point]) run of a study, and the folders it reads and writes."""

    study: str
    dataset: str
    seed: int
    #: The study folder as the client resolved it; workers on other machines see it at the same path.
    root: Path = field(compare=False)
    #: The run's grid point, ``((parameter, value), ...)`` in the study file's order; empty without a grid.
    grid: tuple[tuple[str, Any], ...] = ()

    @property
    def instance(self) -> str:
        """``<dataset>-seed<k>``: the attack instance, shared by the runs of every grid point."""
        return f"{self.dataset}-seed{self.seed}"

    @property
    def name(self) -> str:
        """``demo-seed3``, or with a grid ``demo-seed3-learning_rate=0.01``: the run's folder and its label."""
        return self.instance + "".join(f"-{k}={grid_value(v)}" for k, v in self.grid)

    @property
    def is_demo(self) -> bool:
        return dataset_spec(self.dataset).is_demo

    @property
    def results_dir(self) -> Path:
        return StudyFiles(self.root).runs / self.name

    @property
    def data_dir(self) -> Path:
        """A demo's attack instance (``runs/<dataset>-seed<k>/data``, shared by the grid points); a CSAW
        dataset's shared ``data/<dataset>``."""
        if self.is_demo:
            return StudyFiles(self.root).runs / self.instance / "data"
        return data_folder(self.dataset).resolve()

    @property
    def shares_data(self) -> bool:
        """Whether other runs read its data folder: its data step then runs in a data job, before theirs."""
        return not self.is_demo or bool(self.grid)


def grid_value(value: Any) -> str:
    """A grid value as a run's name shows it: ``0.01``, ``10``, ``True``, ``2-4-10`` for a list."""
    if isinstance(value, list | tuple):
        return "-".join(grid_value(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class StudySpec:
    """A study file, validated: the datasets, the seeds, and what every run's notebooks get."""

    name: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    parameters: dict[str, Any]
    demo_recipe: dict[str, Any]
    path: Path
    #: Threads of each run's TensorFlow, OpenMP and BLAS pools; None: fixed when the study starts, as the
    #: cluster's cores over its workers (``lib.study.engine.threads_for``). Training results depend on it.
    threads_per_run: int | None = None
    #: Notebook parameter -> the values it takes; the runs are datasets x seeds x every combination.
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: ``(model_a, model_b)`` pairs compared beside the standard family (``lib.study.contrasts``).
    contrasts: tuple[tuple[str, str], ...] = ()
    #: The datasets this invocation runs (``--datasets``, ``part``); empty: all of them.
    only: tuple[str, ...] = ()

    def part(self, datasets: Sequence[str]) -> StudySpec:
        """The study run in parts, some datasets at a time: ``runs`` are those of ``datasets``, and the
        aggregates keep the committed rows of the others as they are (``lib.study.aggregate.summarize``). A
        study too long for one sitting, or whose datasets live on different machines, is finished part by part."""
        unknown = [d for d in datasets if d not in self.datasets]
        if unknown or not datasets:
            raise InputError(
                "--datasets",
                f"{unknown[0]!r} is not a dataset of the study {self.name}" if unknown else "names no dataset",
                f"name some of {', '.join(self.datasets)}, separated by commas",
            )
        return replace(self, only=tuple(d for d in self.datasets if d in datasets))

    @property
    def root(self) -> Path:
        return study_root(self.name).resolve()

    def grid_points(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every combination of the grid's values, the first parameter slowest; ``[()]`` without a grid."""
        names = list(self.grid)
        return [tuple(zip(names, values, strict=True)) for values in itertools.product(*self.grid.values())]

    def runs(self) -> list[Run]:
        """Every run (of the ``part``): dataset by dataset, seed by seed, grid point by grid point, in file order."""
        points, datasets = self.grid_points(), self.only or self.datasets
        return [Run(self.name, d, s, self.root, g) for d in datasets for s in self.seeds for g in points]

    def notebook_parameters(self, run: Run, step: str) -> dict[str, Any]:
        """What ``run``'s notebook of ``step`` is given: the run's dataset, folders and seed, and the study's
        shared parameters that this notebook has (each notebook declares its own)."""
        params: dict[str, Any] = {
            "dataset": run.dataset,
            "data_dir": str(run.data_dir),
            "results_dir": str(run.results_dir),
            "seed": run.seed,
        }
        defaults = notebook_defaults(step)
        params.update({k: v for k, v in [*self.parameters.items(), *run.grid] if k in defaults})
        if step == DATA and run.is_demo:
            params["demo_recipe"] = {**self.demo_recipe, "seed": run.seed}
        return params


def spec_path(study: str | Path) -> Path:
    """A study's file: ``study`` itself when it is a path (a ``.yaml`` name or an existing file), else
    ``studies/<study>.yaml``."""
    path = Path(study)
    return path if path.suffix in (".yaml", ".yml") or path.is_file() else STUDIES / f"{study}.yaml"


def load_spec(study: str | Path) -> StudySpec:
    """Read and check a study file (a path, or a name in ``studies/``); every problem is an ``InputError``
    naming the key and the fix."""
    path = spec_path(study)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml"))) or "none yet"
        raise InputError(shown(path), "file not found", f"give the path of a study file (in studies/: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(shown(path), f"not valid YAML{where}", f"fix the syntax there ({_EXAMPLE})") from None
    if not isinstance(data, dict):
        raise InputError(shown(path), "is not a mapping of keys to values", _EXAMPLE)
    where = shown(path)
    unknown = sorted(set(data) - set(KEYS), key=str)
    if unknown:
        raise InputError(f"{where}: {unknown[0]}", "unknown key", f"use only {', '.join(KEYS)}")
    name = _name(data, where, path)
    datasets = _datasets(data.get("datasets"), where)
    seeds = _seeds(data.get("seeds"), where)
    parameters = _parameters(data.get("parameters"), where)
    grid = _grid(data.get("grid"), where, parameters)
    contrasts = _contrasts(data.get("contrasts"), where)
    recipe = _demo_recipe(data.get("demo_recipe"), where, datasets, seeds)
    threads = data.get("threads_per_run")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(
            f"{where}: threads_per_run",
            f"{threads!r} is not a number of threads",
            "give a whole number >= 1, or leave the key out to give each run its share of its worker's cores",
        )
    return StudySpec(name, datasets, seeds, parameters, recipe, path.resolve(), threads, grid, contrasts)


def _name(data: dict, where: str, path: Path) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"{where}: name", f"{name!r} is not a study name", "give a name of letters, digits, '.', '_' and '-'"
        )
    if name != path.stem:
        raise InputError(
            f"{where}: name",
            f"{name!r} differs from the file's name {path.stem!r}",
            f"set name: {path.stem} (or rename the file to {name}.yaml): `make study STUDY=...` finds a study by it",
        )
    return name


def _datasets(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value):
        raise InputError(f"{where}: datasets", "must be a non-empty list of dataset names", "e.g. [demo]")
    for name in value:
        if name not in DATASETS:
            raise InputError(f"{where}: datasets", f"unknown dataset {name!r}", f"use names from {', '.join(DATASETS)}")
    if len(set(value)) != len(value):
        raise InputError(f"{where}: datasets", "lists a dataset twice", "list each dataset once")
    return tuple(value)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: seeds", "must be a non-empty list of whole numbers", "e.g. [1, 2, 3]")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"{where}: seeds", f"{seed!r} is not a whole number >= 0", "e.g. seeds: [1, 2, 3]")
    if len(set(value)) != len(value):
        raise InputError(f"{where}: seeds", "lists a seed twice", "list each seed once: a repeated seed repeats a run")
    return tuple(value)


def _notebook_parameters(keys: Any, section: str) -> dict[str, Any]:
    """Every notebook parameter of the steps with its default, after refusing the first of ``keys`` that is
    set by the study for each run or that no notebook has (``parameters:`` and ``grid:`` take the same)."""
    known: dict[str, Any] = {}
    for step in STEPS:
        for name, default in notebook_defaults(step).items():
            known.setdefault(name, default)
    _refuse_keys(
        section,
        keys,
        PER_RUN,
        "is set by the study for each run",
        set(known),
        "no notebook has this parameter",
        "use parameters of the notebooks",
    )
    return known


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: parameters", "must be a mapping of notebook parameters", "e.g. {thresholds: [2]}")
    known = _notebook_parameters(value, f"{where}: parameters")
    for name, v in value.items():
        _check_kind(f"{where}: parameters: {name}", v, known[name])
    return dict(value)


def _check_kind(section: str, value: Any, default: Any) -> None:
    if not _same_kind(value, default):
        raise InputError(
            section,
            f"{value!r} is not a {type(default).__name__} like its default",
            f"give a value like the notebooks' default {default!r}",
        )


def _grid(value: Any, where: str, parameters: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """``grid:``: notebook parameter -> a non-empty list of distinct values of its kind."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise InputError(f"{where}: grid", "must be a mapping of notebook parameters to lists", _GRID_EXAMPLE)
    known = _notebook_parameters(value, f"{where}: grid")
    grid = {}
    for name, values in value.items():
        section = f"{where}: grid: {name}"
        if name in parameters:
            raise InputError(section, "is also set under parameters:", "give it under grid: or parameters:, not both")
        if not isinstance(values, list) or not values:
            raise InputError(section, "must be a non-empty list of values", _GRID_EXAMPLE)
        for v in values:
            _check_kind(section, v, known[name])
        if len({repr(v) for v in values}) != len(values):
            raise InputError(section, "lists a value twice", "list each value once")
        grid[name] = tuple(values)
    return grid


_GRID_EXAMPLE = "e.g. grid: {learning_rate: [0.0001, 0.001, 0.01]}"


def _contrasts(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    """``contrasts:``: extra ``[model_a, model_b]`` pairs, compared as a - b per seed."""
    if value is None:
        return ()
    pairs = value if isinstance(value, list) else None
    if pairs is None or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(m, str) for m in p) and p[0] != p[1] for p in pairs
    ):
        raise InputError(
            f"{where}: contrasts",
            "must be a list of [model_a, model_b] pairs of two different model names",
            "e.g. contrasts: [[FP_10%, FT]]",
        )
    return tuple((a, b) for a, b in pairs)


def _refuse_keys(
    section: str, keys: Any, fixed: dict[str, str], fixed_problem: str, known: set[str], unknown: str, hint: str
) -> None:
    """One error for the first key the study sets itself (``fixed``: key -> fix) or that is not ``known``."""
    for key in keys:
        if key in fixed:
            raise InputError(f"{section}: {key}", fixed_problem, fixed[key])
        if key not in known:
            raise InputError(f"{section}: {key}", unknown, f"{hint}: {', '.join(sorted(known - set(fixed)))}")


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` can stand where the notebook's literal ``default`` stands (None accepts anything)."""
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _demo_recipe(value: Any, where: str, datasets: tuple[str, ...], seeds: tuple[int, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: demo_recipe", "must be a mapping of DemoRecipe fields", "e.g. {epochs: 6}")
    _refuse_keys(
        f"{where}: demo_recipe",
        value,
        RECIPE_FIXED,
        "cannot be set for a study",
        {f.name for f in fields(DemoRecipe)},
        "is not a field of lib.demo.DemoRecipe",
        "use",
    )
    for name in datasets:
        spec = dataset_spec(name)
        if spec.is_demo:
            try:
                DemoRecipe(**{**spec.demo_recipe, **value, "seed": seeds[0]})
            except (TypeError, ValueError) as exc:
                raise InputError(f"{where}: demo_recipe", str(exc), "fix that field") from None
    return dict(value)
