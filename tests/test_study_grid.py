"""Grid studies (``grid:``): runs over datasets x seeds x grid points, one attack instance per dataset and seed,
and one thread count per study, fixed when it starts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import lib_imports
from test_study import NUMBERS, TINY_RECIPE, hand_started_cluster, snapshot, study_command, write_spec

from lib.core.errors import InputError
from lib.core.step_names import DATA, STEPS
from lib.study.aggregate import RUN_COLUMNS, with_grid
from lib.study.engine import jobs_for, threads_for
from lib.study.spec import load_spec

__all__ = ["hand_started_cluster"]  # the fixture, shared with test_study

GRID = f"""
name: tiny
datasets: [demo]
seeds: [1]
grid: {{learning_rate: [0.001, 0.01]}}
parameters: {{thresholds: [4], epochs: 2}}
demo_recipe: {TINY_RECIPE}
"""
HEAD = "name: tiny\ndatasets: [demo]\nseeds: [1]\n"


def test_a_grid_multiplies_the_runs_and_each_grid_point_names_its_run(tmp_path):
    spec = load_spec(write_spec(tmp_path, GRID.replace("seeds: [1]", "seeds: [1, 2]")))
    runs = spec.runs()
    assert [r.name for r in runs] == [
        "demo-seed1-learning_rate=0.001",
        "demo-seed1-learning_rate=0.01",
        "demo-seed2-learning_rate=0.001",
        "demo-seed2-learning_rate=0.01",
    ]
    assert runs[0].data_dir == runs[1].data_dir != runs[2].data_dir  # one attack instance per dataset and seed
    assert runs[0].data_dir.parent.name == "demo-seed1" and runs[0].results_dir != runs[1].results_dir
    assert spec.notebook_parameters(runs[1], "fine_pruning")["learning_rate"] == 0.01
    assert "learning_rate" not in spec.notebook_parameters(runs[1], "pruning_sweep")
    data = spec.notebook_parameters(runs[1], DATA)
    assert data["demo_recipe"]["seed"] == 1 and Path(data["data_dir"]) == runs[0].data_dir


def test_the_runs_of_one_instance_wait_for_one_data_job(tmp_path):
    spec = load_spec(write_spec(tmp_path, GRID.replace("seeds: [1]", "seeds: [1, 2]")))
    data_jobs, run_jobs = jobs_for(spec, spec.runs(), threads=3)
    assert [[r.name for r in j.runs] for j in data_jobs.values()] == [
        ["demo-seed1-learning_rate=0.001", "demo-seed1-learning_rate=0.01"],
        ["demo-seed2-learning_rate=0.001", "demo-seed2-learning_rate=0.01"],
    ]
    assert all(j.steps == (DATA,) for j in data_jobs.values()) and all(j.steps == STEPS[1:] for j in run_jobs)
    assert {j.threads for j in [*data_jobs.values(), *run_jobs]} == {3}


def test_the_committed_grid_study_compares_three_learning_rates_on_both_demos():
    spec = load_spec("demo-fine-tuning")
    assert spec.datasets == ("demo", "demo-pruning-aware") and len(spec.seeds) >= 10
    rates = spec.grid["learning_rate"]
    assert len(rates) == 3 and max(rates) / min(rates) == 100  # two orders of magnitude
    assert len(spec.runs()) == 2 * len(spec.seeds) * 3


def test_grid_columns_follow_the_seed():
    spec = load_spec("demo-fine-tuning")
    columns = with_grid(RUN_COLUMNS, spec)
    assert columns[columns.index("seed") + 1] == "learning_rate" and len(columns) == len(RUN_COLUMNS) + 1


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        (HEAD + "grid: {learning_rat: [0.1]}\n", "grid: learning_rat", "learning_rate"),
        (HEAD + "grid: {seed: [1, 2]}\n", "grid: seed", "seeds:"),
        (HEAD + "grid: {learning_rate: []}\n", "grid: learning_rate", "learning_rate: [0.0001"),
        (HEAD + "grid: {learning_rate: 0.1}\n", "grid: learning_rate", "learning_rate: [0.0001"),
        (HEAD + "grid: {learning_rate: [0.1, 0.1]}\n", "grid: learning_rate", "each value once"),
        (HEAD + "grid: {epochs: [2.5]}\n", "grid: epochs", "default 10"),
        (HEAD + "grid: [learning_rate]\n", "grid", "learning_rate: [0.0001"),
        (
            HEAD + "parameters: {epochs: 2}\ngrid: {epochs: [2, 3]}\n",
            "grid: epochs",
            "not both",
        ),
        (HEAD + "contrasts: [[FP_4%]]\n", "contrasts", "[[FP_10%, FT]]"),
        (HEAD + "contrasts: [[FT, FT]]\n", "contrasts", "[[FP_10%, FT]]"),
    ],
)
def test_a_bad_grid_or_contrast_names_the_key_and_the_fix(tmp_path, text, key, fix):
    with pytest.raises(InputError) as caught:
        load_spec(write_spec(tmp_path, text))
    assert key in caught.value.what and fix in caught.value.fix


def test_extra_contrasts_are_read_as_pairs(tmp_path):
    spec = load_spec(write_spec(tmp_path, HEAD + "contrasts: [[FP_10%, FT], [B'_10%, B]]\n"))
    assert spec.contrasts == (("FP_10%", "FT"), ("B'_10%", "B"))


class _Client:
    """What ``threads_for`` asks of a Dask client: the workers and each one's host cores."""

    def __init__(self, workers: dict[str, tuple[str, int, int]]) -> None:
        self.workers = workers  # address -> (host, threads, host cores)

    def scheduler_info(self, n_workers: int = 0) -> dict:
        return {"workers": {a: {"host": h, "nthreads": n} for a, (h, n, _) in self.workers.items()}}

    def run(self, function) -> dict[str, int]:
        return {a: cores for a, (_, _, cores) in self.workers.items()}


def test_every_run_gets_the_thread_count_fixed_when_the_study_starts(tmp_path):
    spec = load_spec(write_spec(tmp_path, GRID))
    four_cores_two_workers = _Client({"a1": ("a", 1, 4), "a2": ("a", 1, 4)})
    assert threads_for(spec, four_cores_two_workers) == 2
    mixed = _Client({"a1": ("a", 1, 4), "a2": ("a", 1, 4), "b1": ("b", 1, 2), "b2": ("b", 1, 2)})
    assert threads_for(spec, mixed) == 1  # the fewest cores per slot over the hosts, for every run
    pinned = load_spec(write_spec(tmp_path, GRID + "threads_per_run: 3\n"))
    assert threads_for(pinned, mixed) == 3


# --- a tiny grid study, on the local cluster and on a hand-started one ----------------------------------------
@pytest.fixture(scope="module")
def local_grid(tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    base = tmp_path_factory.mktemp("grid")
    spec, results = write_spec(base, GRID), base / "results"
    first = study_command(spec, results, "--workers", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(results)
    resumed = study_command(spec, results, "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "0 ran now, 2 were up to date" in resumed.stdout and "written: nothing changed" in resumed.stdout
    return spec, results, before, snapshot(results)


@pytest.mark.slow
def test_a_grid_study_builds_each_instance_once_and_resumes_without_rewriting(local_grid):
    _, results, before, after = local_grid
    assert after == before
    runs_dir = results / "studies" / "tiny" / "runs"
    assert sorted(p.name for p in runs_dir.iterdir()) == [
        "demo-seed1",
        "demo-seed1-learning_rate=0.001",
        "demo-seed1-learning_rate=0.01",
    ]
    assert sorted(p.name for p in (runs_dir / "demo-seed1").iterdir()) == ["data"]  # the shared instance only
    runs = pd.read_csv(results / "studies" / "tiny" / "runs.csv")
    assert list(runs.columns) == with_grid(RUN_COLUMNS, load_spec(local_grid[0]))
    assert sorted(runs["learning_rate"].unique()) == [0.001, 0.01]
    b = runs[runs["model"] == "B"]
    assert len(b) == 2 and b["attack_success_rate"].nunique() == 1  # the same B at both grid points
    fine = runs[runs["model"] == "FT"].set_index("learning_rate")["attack_success_rate"]
    assert len(fine) == 2


@pytest.mark.slow
def test_a_grid_study_on_a_hand_started_cluster_gives_the_local_numbers(local_grid, hand_started_cluster, tmp_path):
    spec, local_results, _, _ = local_grid
    done = study_command(spec, tmp_path / "results", "--scheduler", hand_started_cluster)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "; every run with 1 thread(s)" in done.stdout
    cluster = pd.read_csv(tmp_path / "results" / "studies" / "tiny" / "runs.csv")
    local = pd.read_csv(local_results / "studies" / "tiny" / "runs.csv")
    columns = [*NUMBERS, "learning_rate"]
    pd.testing.assert_frame_equal(cluster[columns], local[columns])
    assert set(cluster["threads"]) == set(local["threads"])


def test_no_step_code_imports_the_commands_left_out_of_its_digest():
    """``lib.runs.provenance.NOT_STEP_CODE`` leaves the commands (studies, verify, summary, eval) out of each step's
    code digest: editing how a study is summarized must not mark every run of every study out of date. So no other
    module of ``lib/`` may import them, at its top or inside a function."""
    from lib.runs.provenance import NOT_STEP_CODE

    left_out = [p.removesuffix("/").removesuffix(".py").replace("/", ".") for p in NOT_STEP_CODE]

    def is_left_out(module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in left_out)

    found = [
        f"{module}: {target}"
        for module, targets in sorted(lib_imports().items())
        if not is_left_out(module)
        for target in sorted(targets)
        if is_left_out(target)
    ]
    assert left_out == ["lib.study", "lib.verify", "lib.report.summary", "lib.eval"] and found == []


def test_make_verify_compares_a_fresh_run_with_the_default_setting_only():
    """A study that sets a parameter away from its notebook's default, or a grid study's other points, ran another
    pipeline: ``make verify``'s spread leaves them out."""
    from lib.core.paths import studies_root
    from lib.study.aggregate import default_setting_runs
    from lib.study.spec import notebook_defaults

    runs = default_setting_runs()
    seeds = pd.read_csv(studies_root() / "demo-seeds" / "runs.csv")
    assert len(runs[runs["study"] == "demo-seeds"]) == len(seeds)
    spec = load_spec("demo-fine-tuning")
    grid_file = studies_root() / "demo-fine-tuning" / "runs.csv"
    if grid_file.is_file():
        grid = pd.read_csv(grid_file)
        defaults = {k: v for step in STEPS for k, v in notebook_defaults(step).items()}
        at_default = all(defaults[k] == v for k, v in spec.parameters.items())
        expected = (grid["learning_rate"] == defaults["learning_rate"]).sum() if at_default else 0
        assert len(runs[runs["study"] == "demo-fine-tuning"]) == expected
