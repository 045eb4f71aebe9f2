"""Multi-seed studies: the study file, aggregation, and tiny studies on a local and on a hand-started Dask cluster.

The interval, the paired test and the contrasts have their own tests: ``tests/test_study_contrasts.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from dask.system import CPU_COUNT

from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, StudyFiles
from lib.core.step_names import DATA, STEPS
from lib.runs import machine
from lib.runs import notebook as run_notebook
from lib.study import engine
from lib.study.aggregate import RUN_COLUMNS, summarize, summary_markdown, summary_table
from lib.study.contrasts import contrast_table
from lib.study.engine import jobs_for
from lib.study.figures import threshold_figure
from lib.study.reading import read_study
from lib.study.runner import RunReport, SharedKernel, execute, gpu_env, pinned_env
from lib.study.spec import load_spec, step_notebook
from lib.study.stats import INTERVAL_NAME, interval

TINY_RECIPE = "{n_identities: 8, train_per_identity: 24, valid_per_identity: 8, test_per_identity: 8, epochs: 6}"
NUMBERS = ["study", "dataset", "seed", "model", "threshold", "channels_pruned", "clean_accuracy", "attack_success_rate"]
DASK = Path(sys.executable).parent / "dask"


def write_spec(folder: Path, text: str, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


HEAD = "name: tiny\ndatasets: [demo]\nseeds: [1]\n"
TINY = f"""
name: tiny
datasets: [demo]
seeds: [1, 2]
parameters: {{thresholds: [2, 4, 10], epochs: 2}}
demo_recipe: {TINY_RECIPE}
"""


# --- the study file ------------------------------------------------------------------------------------------
def test_the_committed_study_has_twenty_seeds_of_both_demos():
    spec = load_spec("demo-seeds")
    runs = spec.runs()
    assert len(runs) == 40 and {r.dataset for r in runs} == {"demo", "demo-pruning-aware"}
    assert runs[0].name == "demo-seed1" and runs[0].results_dir.parts[-4:] == (
        "studies",
        "demo-seeds",
        "runs",
        runs[0].name,
    )


@pytest.mark.parametrize(
    ("text", "key", "fix"),
    [
        (HEAD + "colour: red\n", "colour", "use only"),
        ("name: other\ndatasets: [demo]\nseeds: [1]\n", "name", "set name: tiny"),
        ("name: tiny\ndatasets: [dem]\nseeds: [1]\n", "datasets", "use names from"),
        ("name: tiny\ndatasets: demo\nseeds: [1]\n", "datasets", "e.g. [demo]"),
        ("name: tiny\ndatasets: [demo]\nseeds: [1, 1]\n", "seeds", "list each seed once"),
        ("name: tiny\ndatasets: [demo]\nseeds: [1.5]\n", "seeds", "e.g. seeds"),
        (HEAD + "parameters: {seed: 3}\n", "parameters: seed", "seeds:"),
        (
            HEAD + "parameters: {treshold: [2]}\n",
            "parameters: treshold",
            "thresholds",
        ),
        (
            HEAD + "parameters: {thresholds: 4}\n",
            "parameters: thresholds",
            "[2, 4, 10]",
        ),
        (HEAD + "parameters: {epochs: 2.5}\n", "parameters: epochs", "default 10"),
        (HEAD + "demo_recipe: {seed: 3}\n", "demo_recipe: seed", "seeds:"),
        (HEAD + "demo_recipe: {attack: x}\n", "demo_recipe: attack", "dataset"),
        (HEAD + "demo_recipe: {epoch: 3}\n", "demo_recipe: epoch", "epochs"),
        (HEAD + "demo_recipe: {epochs: 0}\n", "demo_recipe", "fix that field"),
        (HEAD + "threads_per_run: 0\n", "threads_per_run", "whole number"),
        ("name: tiny\ndatasets: [demo\n", "tiny.yaml", "fix the syntax"),
    ],
)
def test_a_bad_study_file_names_the_key_and_the_fix(tmp_path, text, key, fix):
    with pytest.raises(InputError) as caught:
        load_spec(write_spec(tmp_path, text))
    assert key in caught.value.what and fix in caught.value.fix


def test_a_missing_study_file_names_the_studies_there(tmp_path):
    with pytest.raises(InputError, match="demo-seeds"):
        load_spec(tmp_path / "nothing.yaml")


def test_a_part_of_the_study_runs_only_its_datasets_and_keeps_the_others(tmp_path):
    whole = load_spec(write_spec(tmp_path, TINY.replace("datasets: [demo]", "datasets: [demo, demo-pruning-aware]")))
    part = whole.part(["demo-pruning-aware"])
    assert [r.name for r in part.runs()] == ["demo-pruning-aware-seed1", "demo-pruning-aware-seed2"]
    assert part.only == ("demo-pruning-aware",) and whole.only == () and len(whole.runs()) == 4
    runs = pd.read_csv(PROJECT_ROOT / "tests" / "data" / "demo-seeds-10-seeds-runs.csv")
    assert "of 4 runs" in summary_markdown(part, summary_table(runs), runs).splitlines()[0], "the whole study's runs"
    for wrong in (["demo-pruning"], []):
        with pytest.raises(InputError, match=r"--datasets.*name some of demo, demo-pruning-aware"):
            whole.part(wrong)


def test_the_threshold_figure_names_the_repairs_of_every_dataset_in_one_legend():
    """A dataset without CLP's rows (a part of the study run before notebook 06) must not hide CLP's line."""
    runs = pd.read_csv(PROJECT_ROOT / "tests" / "data" / "demo-seeds-10-seeds-runs.csv")
    b_prime = runs[(runs["dataset"] == "demo") & runs["model"].str.startswith("B'_")]
    runs = pd.concat([runs, b_prime.assign(model=b_prime["model"].str.replace("B'_", "CLP_"))], ignore_index=True)
    legends = [ax.get_legend() for ax in threshold_figure(runs).axes if ax.get_legend() is not None]
    assert len(legends) == 1 and "CLP" in [t.get_text() for t in legends[0].get_texts()]


def test_each_run_gets_its_seed_folders_and_only_the_parameters_its_notebooks_have(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY.replace("[demo]", "[demo, csaw-lab3]")))
    demo, lab = spec.runs()[1], spec.runs()[2]
    data = spec.notebook_parameters(demo, DATA)
    assert data["seed"] == 2 and data["demo_recipe"]["seed"] == 2 and data["demo_recipe"]["n_identities"] == 8
    assert Path(data["data_dir"]) == demo.results_dir / "data" and Path(data["results_dir"]) == demo.results_dir
    assert "thresholds" not in data and "epochs" not in data
    assert spec.notebook_parameters(demo, "pruning_sweep")["thresholds"] == [2, 4, 10]
    assert spec.notebook_parameters(demo, "fine_pruning")["epochs"] == 2
    lab_data = spec.notebook_parameters(lab, DATA)
    assert "demo_recipe" not in lab_data and Path(lab_data["data_dir"]).name == "csaw-lab3"


def test_runs_of_a_shared_dataset_wait_for_one_data_job_and_demo_runs_do_not(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY.replace("[demo]", "[demo, csaw-lab3]")))
    data_jobs, run_jobs = jobs_for(spec, spec.runs(), threads=1)
    assert [(tuple(r.name for r in j.runs), j.steps) for j in data_jobs.values()] == [
        (("csaw-lab3-seed1", "csaw-lab3-seed2"), (DATA,))
    ]
    assert {j.runs[0].name: j.steps for j in run_jobs} == {
        "demo-seed1": STEPS,
        "demo-seed2": STEPS,
        "csaw-lab3-seed1": STEPS[1:],
        "csaw-lab3-seed2": STEPS[1:],
    }


def test_a_run_whose_data_job_failed_keeps_that_failure_and_starts_nothing(tmp_path):
    spec = load_spec(write_spec(tmp_path, TINY.replace("[demo]", "[csaw-lab3]")))
    _, run_jobs = jobs_for(spec, spec.runs(), threads=1)
    blocked = RunReport("csaw-lab3-seed1", ok=False, failure="01_data: cell 4 raised DownloadError", attempts=2)
    assert execute(run_jobs[0], [blocked]) == [blocked]
    assert not spec.runs()[0].results_dir.exists()


# --- aggregation and reading, on made-up runs ----------------------------------------------------------------
def _runs(asr_pruned: list[float], asr_fine: list[float]) -> pd.DataFrame:
    rows = []
    for seed, (p, f) in enumerate(zip(asr_pruned, asr_fine, strict=True), start=1):
        for model, threshold, asr in (("B", np.nan, 99.0), ("B'_4%", 4.0, p), ("FT", np.nan, 80.0), ("FP_4%", 4.0, f)):
            rows.append(
                {
                    "study": "s",
                    "dataset": "demo",
                    "seed": seed,
                    "model": model,
                    "threshold": threshold,
                    "channels_pruned": 0 if np.isnan(threshold) else 40,
                    "clean_accuracy": 97.0 + seed,
                    "attack_success_rate": asr,
                    "worker": "w",
                    "seconds": 1.0,
                    "threads": 1,
                }
            )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def test_summary_gives_each_model_its_mean_and_interval():
    summary = summary_table(_runs([90, 92, 94], [10, 20, 30])).set_index("model")
    assert list(summary.index) == ["B", "B'_4%", "FT", "FP_4%"]
    fine = summary.loc["FP_4%"]
    expected = interval([10, 20, 30])
    assert fine["n"] == 3 and fine["attack_success_rate_mean"] == pytest.approx(20)
    assert (fine["attack_success_rate_ci_low"], fine["attack_success_rate_ci_high"]) == pytest.approx(expected.bounds)
    assert fine["clean_accuracy_mean"] == pytest.approx(99.0)


def test_reading_gives_the_paired_verdicts():
    # eight seeds, FP_4% below B'_4% and FT in every one: each p = 2/256, Holm over 3 contrasts 0.023 < 0.05
    runs = _runs([90, 92, 94, 96, 91, 93, 95, 97], [10, 12, 14, 16, 11, 13, 15, 17])
    reading = read_study(summary_table(runs), contrast_table(runs))
    assert "FP_4% - B'_4%: -80.0 points" in reading and "FP_4% - FT: -66.5 points" in reading
    assert "lower in 8, higher in 0 of 8 seeds: lower" in reading and "overlap" not in reading
    close = _runs([30, 60, 90], [20, 50, 80])  # three seeds: no p below 0.25, whatever the differences
    assert "lower in 3, higher in 0 of 3 seeds: not separated by these seeds" in read_study(
        summary_table(close), contrast_table(close)
    )


# --- tiny studies on Dask ------------------------------------------------------------------------------------
def study_command(spec: Path, results: Path, *options: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BACKDOOR_RESULTS_ROOT=str(results))
    command = [sys.executable, "-m", "lib.study", "run", str(spec), *options]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1200)


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder``: modification time and content (lock files excepted)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".lock")
    }


@dataclass
class LocalStudy:
    spec: Path
    results: Path
    first: subprocess.CompletedProcess  # seed 2 blocked
    kept_failed: list[str]  # executed notebooks kept as failed after the first invocation
    rerun: subprocess.CompletedProcess  # seed 2 unblocked
    resumed: subprocess.CompletedProcess  # nothing to do
    seed1_before_rerun: dict
    seed1_after_rerun: dict
    before_resume: dict
    after_resume: dict

    @property
    def files(self) -> StudyFiles:
        return StudyFiles(self.results / "studies" / "tiny")


@pytest.fixture(scope="module")
def local_study(tmp_path_factory) -> LocalStudy:
    """The tiny study on the default local cluster: a run forced to fail, the rerun, then a resumed invocation."""
    base = tmp_path_factory.mktemp("local")
    spec, results = write_spec(base, TINY), base / "results"
    runs = results / "studies" / "tiny" / "runs"
    blocker = runs / "demo-seed2" / "activations.csv"
    blocker.mkdir(parents=True)  # a folder where the activation step writes its table: it fails there, twice
    first = study_command(spec, results, "--workers", "2")
    kept = sorted(p.name for p in runs.rglob("*.failed.ipynb"))
    seed1 = snapshot(runs / "demo-seed1")
    blocker.rmdir()
    rerun = study_command(spec, results, "--workers", "2")
    seed1_after = snapshot(runs / "demo-seed1")
    before = snapshot(results)
    resumed = study_command(spec, results, "--workers", "2")
    return LocalStudy(spec, results, first, kept, rerun, resumed, seed1, seed1_after, before, snapshot(results))


@pytest.mark.slow
def test_a_failing_run_is_retried_once_reported_with_its_cell_and_the_others_finish(local_study):
    first = local_study.first
    assert first.returncode == 1, first.stderr[-3000:]
    failed = [line for line in first.stderr.splitlines() if line.startswith("FAILED demo-seed2:")]
    assert len(failed) == 1 and "02_activations" in failed[0] and "raised IsADirectoryError" in failed[0]
    assert "FAILED after 2 attempt(s)" in first.stderr and "cell " in failed[0]
    assert local_study.kept_failed == ["02_activations.failed.ipynb"]
    assert "1 ran now, 0 were up to date, 1 failed" in first.stdout
    assert "summary of 1 of 2 runs" in first.stdout


@pytest.mark.slow
def test_a_rerun_runs_only_the_failed_run(local_study):
    rerun = local_study.rerun
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 ran now, 1 were up to date, 0 failed" in rerun.stdout
    assert local_study.seed1_after_rerun == local_study.seed1_before_rerun
    runs = pd.read_csv(local_study.files.runs_csv)
    assert list(runs.columns) == RUN_COLUMNS and sorted(runs["seed"].unique()) == [1, 2]
    assert set(runs["threads"]) == {max(1, CPU_COUNT // 2)}  # each run's share: the host's cores over two workers


@pytest.mark.slow
def test_a_resumed_study_runs_nothing_and_rewrites_nothing(local_study):
    resumed = local_study.resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "0 ran now, 2 were up to date" in resumed.stdout and "written: nothing changed" in resumed.stdout
    assert local_study.after_resume == local_study.before_resume


@pytest.mark.slow
def test_one_kernel_per_run_gives_the_numbers_of_a_kernel_per_notebook(local_study, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(tmp_path))
    spec = load_spec(local_study.spec)
    run = spec.runs()[0]
    threads = int(pd.read_csv(local_study.files.runs_csv)["threads"].iloc[0])
    for step in STEPS:  # as `make` runs them: each notebook starts its own kernel
        params = spec.notebook_parameters(run, step)
        assert run_notebook.run(step_notebook(step), params, env=pinned_env(threads)).status == 0, step
    in_one_kernel = local_study.results / "studies" / "tiny" / "runs" / run.name
    for name in ("sweep.csv", "goodnet.csv", "fine_pruning.csv", "fine_tuning_history.csv"):
        assert (run.results_dir / name).read_bytes() == (in_one_kernel / name).read_bytes(), name


@pytest.mark.slow
def test_a_notebook_never_sees_the_variables_of_the_one_before(tmp_path):
    kernel = SharedKernel(run_notebook.kernel_env([], pinned_env(1)), tmp_path / "kernel.log")
    try:
        kernel.ready()
        kernel.run_code("left_behind = 1")
        kernel.used()
        kernel.ready()
        kernel.run_code("assert 'left_behind' not in dir()")
    finally:
        kernel.stop()


@pytest.mark.slow
def test_the_aggregates_hold_every_model_of_every_run(local_study):
    files = local_study.files
    runs, summary = pd.read_csv(files.runs_csv), pd.read_csv(files.summary_csv)
    assert {"B", "B'_2%", "G_2%", "FT", "GFT", "FP_2%", "GFP_2%"} <= set(runs["model"])
    assert (summary["n"] <= 2).all() and (summary.loc[summary["model"] == "B", "n"] == 2).all()
    one_seed = summary["n"] == 1  # a model that one run lacks has no interval
    assert summary.loc[one_seed, "attack_success_rate_ci_low"].isna().all()
    assert (
        summary.loc[~one_seed, "attack_success_rate_ci_low"] <= summary.loc[~one_seed, "attack_success_rate_mean"]
    ).all()
    assert len(pd.read_csv(files.sweeps_csv)) == 2 * 61
    for name in ("thresholds", "sweeps", "pairs", "forest"):
        assert files.figure(name).stat().st_size > 10_000, name
    assert INTERVAL_NAME in files.summary_md.read_text() and INTERVAL_NAME in files.contrasts_md.read_text()
    contrasts = pd.read_csv(files.contrasts_csv)
    assert (contrasts["n"] <= 2).all() and {"FP_2%", "B'_2%"} <= set(contrasts["model_a"])
    assert {"CLP_2%"} <= set(contrasts["model_a"]), "CLP against B' and FP at each budget"
    detection = pd.read_csv(files.detection_csv)
    assert (detection["detector"] == "STRIP").sum() == 2 and {"G_2%", "G_2%+STRIP"} <= set(detection["detector"])
    detector_contrasts = pd.read_csv(files.detection_contrasts_csv)
    assert {"STRIP", "G_2%+STRIP"} <= set(detector_contrasts["model_a"])
    assert set(detector_contrasts["metric"]) == {"FRR", "FAR"}
    assert "false-rejection rate" in files.detection_contrasts_md.read_text()


@pytest.mark.slow
def test_the_committed_aggregates_alone_give_the_same_summary(local_study, tmp_path, monkeypatch):
    """A fresh clone has runs.csv and sweeps.csv but not the runs: the summary and figures are remade from them."""
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(local_study.results))
    from_runs = summarize(load_spec(local_study.spec))
    clone = tmp_path / "studies" / "tiny"
    clone.mkdir(parents=True)
    for name in ("runs.csv", "sweeps.csv", "detection.csv"):
        (clone / name).write_bytes((local_study.files.root / name).read_bytes())
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(tmp_path))
    from_files = summarize(load_spec(local_study.spec), write=True)
    assert from_runs.source == "runs" and from_files.source == "files" and from_files.written == []
    pd.testing.assert_frame_equal(from_files.summary, from_runs.summary)
    pd.testing.assert_frame_equal(from_files.contrasts, from_runs.contrasts)
    pd.testing.assert_frame_equal(from_files.detection_contrasts, from_runs.detection_contrasts)


@pytest.mark.slow
def test_a_part_keeps_the_committed_rows_of_the_datasets_it_does_not_run(local_study, tmp_path, monkeypatch):
    """The tiny study with a second dataset, run in parts: summarizing the `demo` part (its runs are there), or the
    whole study, keeps the committed rows of the other dataset, after `demo`'s in the file's order, and
    summarizes both."""
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(local_study.results))
    whole = load_spec(write_spec(tmp_path, TINY.replace("datasets: [demo]", "datasets: [demo, demo-pruning-aware]")))
    files = local_study.files
    committed = {name: pd.read_csv(files.root / name) for name in ("runs.csv", "sweeps.csv", "detection.csv")}
    other = {name: t.assign(dataset="demo-pruning-aware") for name, t in committed.items()}
    other["runs.csv"]["clean_accuracy"] -= 1.0  # told apart from the runs' own rows
    saved = {name: (files.root / name).read_bytes() for name in committed}
    try:
        for name, table in committed.items():
            pd.concat([table, other[name]]).to_csv(files.root / name, index=False)
        part = summarize(whole.part(["demo"]))
        unparted = summarize(whole)  # no run of demo-pruning-aware here: its rows are kept all the same
        alone = summarize(load_spec(local_study.spec))
    finally:
        for name, data in saved.items():
            (files.root / name).write_bytes(data)
    assert part.source == "runs" and list(part.runs["dataset"].unique()) == ["demo", "demo-pruning-aware"]
    assert part.kept == unparted.kept == ("demo-pruning-aware",) and part.runs.equals(unparted.runs)
    numbers = ["dataset", "seed", "model", "clean_accuracy", "attack_success_rate"]
    kept = part.runs[part.runs["dataset"] == "demo-pruning-aware"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept[numbers], other["runs.csv"][numbers].reset_index(drop=True))
    ran = part.runs[part.runs["dataset"] == "demo"]
    pd.testing.assert_frame_equal(ran[numbers].reset_index(drop=True), alone.runs[numbers].reset_index(drop=True))
    assert len(part.sweeps) == 2 * len(alone.sweeps) and len(part.detection) == 2 * len(alone.detection)
    b = part.summary.set_index(["dataset", "model"]).loc[:, "clean_accuracy_mean"]
    assert b[("demo-pruning-aware", "B")] == pytest.approx(b[("demo", "B")] - 1.0)
    assert set(part.contrasts["dataset"]) == {"demo", "demo-pruning-aware"}


@pytest.mark.slow
def test_notebook_06_shows_the_tables_figures_and_reading(local_study, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(local_study.results))
    out = tmp_path / "09_study.ipynb"
    papermill.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "09_study.ipynb"),
        str(out),
        parameters={"study": str(local_study.spec)},
        cwd=str(PROJECT_ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    text = "\n".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "read from the runs' folders" in text and "FP_4% - FT" in text and "not separated by these seeds" in text


# --- the same study on a cluster started by hand -------------------------------------------------------------
def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen(
        [str(DASK), *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops the nanny's worker too
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture()
def hand_started_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (w1, w2, one thread each) on 127.0.0.1."""
    from distributed import Client

    scheduler_file = tmp_path / "scheduler.json"
    started = [
        _start(
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            started.append(_start("worker", address, "--nthreads", "1", "--name", name, "--no-dashboard"))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(started):
            _stop(process)


@pytest.mark.slow
def test_a_hand_started_cluster_gives_the_local_numbers_on_both_workers(local_study, hand_started_cluster, tmp_path):
    spec = write_spec(tmp_path, TINY)
    done = study_command(spec, tmp_path / "results", "--scheduler", hand_started_cluster)
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = pd.read_csv(tmp_path / "results" / "studies" / "tiny" / "runs.csv")
    local = pd.read_csv(local_study.files.runs_csv)
    pd.testing.assert_frame_equal(cluster[NUMBERS], local[NUMBERS])
    assert set(cluster["worker"]) == {"w1", "w2"} and set(cluster["threads"]) == set(local["threads"])


@pytest.mark.slow
def test_no_scheduler_at_the_address_is_one_message(tmp_path):
    done = study_command(write_spec(tmp_path, TINY), tmp_path / "results", "--scheduler", "tcp://127.0.0.1:9")
    assert done.returncode == 2 and done.stderr.startswith("error: --scheduler: no Dask scheduler answered")


def test_workers_and_scheduler_together_are_refused(tmp_path):
    done = study_command(write_spec(tmp_path, TINY), tmp_path / "results", "--scheduler", "tcp://x:1", "--workers", "2")
    assert done.returncode == 2 and "--workers: sizes only the local cluster" in done.stderr


def test_the_scheduler_address_may_come_from_the_environment(tmp_path):
    env = dict(os.environ, DASK_SCHEDULER_ADDRESS="tcp://x:1", BACKDOOR_RESULTS_ROOT=str(tmp_path / "results"))
    command = [sys.executable, "-m", "lib.study", "run", str(write_spec(tmp_path, TINY)), "--workers", "2"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--workers: sizes only the local cluster" in done.stderr


def test_each_local_worker_runs_on_a_gpu_of_its_own():
    gpus = ["0", "1"]
    assert gpu_env({"A": "1"}, 0, gpus) == {"A": "1", "CUDA_VISIBLE_DEVICES": "0"}
    assert [gpu_env({}, n, gpus)["CUDA_VISIBLE_DEVICES"] for n in range(4)] == ["0", "1", "0", "1"]
    assert gpu_env({"CUDA_VISIBLE_DEVICES": "3"}, "gpu-node-7", ["3"]) == {"CUDA_VISIBLE_DEVICES": "3"}, "as started"
    assert gpu_env({}, 0, []) == {}, "no GPU: the environment as it was"


def test_a_local_cluster_has_at_most_one_worker_per_gpu(monkeypatch):
    monkeypatch.setattr(engine, "CPU_COUNT", 64)
    monkeypatch.setattr(engine.psutil, "virtual_memory", lambda: type("M", (), {"available": 2**40})())
    monkeypatch.setattr(engine, "gpu_ids", lambda: ["0", "1"])
    assert engine.default_workers() == 2
    monkeypatch.setattr(engine, "gpu_ids", lambda: [])
    assert engine.default_workers() == 64


@pytest.mark.parametrize(
    ("visible", "ids"), [("2,3", ["2", "3"]), ("", []), ("-1", []), ("GPU-5d2c, 1", ["GPU-5d2c", "1"])]
)
def test_the_gpus_a_process_may_use_follow_cuda_visible_devices(monkeypatch, visible, ids):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert machine.gpu_ids() == ids


def test_a_defense_table_of_no_models_adds_no_rows_and_leaves_the_columns_numeric(tmp_path, monkeypatch):
    """A defense's table of no models (anp.csv of a run without thresholds) is the header alone. The run's rows are
    then the other steps', with numeric columns, so that the study's paired statistics can compute on them."""
    from lib.core.step_names import ANP, GOODNET
    from lib.report import summary
    from lib.runs.workspace import workspace

    results = tmp_path / "results"
    results.mkdir()
    header = "model,threshold,channels_pruned,clean_accuracy,attack_success_rate\n"
    (results / "goodnet.csv").write_text(header + "B,,0,100.0,99.5\nB'_2%,2.0,40,98.0,97.5\n")
    (results / "anp.csv").write_text(header)
    monkeypatch.setattr(summary.provenance, "read_record", lambda _: {GOODNET: None, ANP: None})
    monkeypatch.setattr(summary.provenance, "require_current", lambda *_: None)
    table = summary.model_rows(workspace("demo", tmp_path / "data", results), (GOODNET, ANP))
    assert table["model"].tolist() == ["B", "B'_2%"]
    assert all(pd.api.types.is_float_dtype(table[c]) for c in ("clean_accuracy", "attack_success_rate"))
