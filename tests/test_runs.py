"""Results follow their inputs, one run at a time per folder, and nothing silently mixes two runs.

``make`` is run as a user would, on the default demo (its published BadNet: no training), with the data
and results roots moved to temporary folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, ResultFiles
from lib.runs import locks, provenance


def make(*args: str, roots: tuple[Path, Path]) -> subprocess.CompletedProcess:
    env = dict(os.environ, BACKDOOR_DATA_ROOT=str(roots[0]), BACKDOOR_RESULTS_ROOT=str(roots[1]))
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )


def ran(output: str) -> list[str]:
    """The notebooks a make run executed (its console lines say 'up to date' for the others)."""
    return [line.split()[0] for line in output.splitlines() if line[:2].isdigit() and "up to date" not in line]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """Steps 1-4 of the default demo, once, by make."""
    base = tmp_path_factory.mktemp("made")
    roots = (base / "data", base / "results")
    done = make("goodnet", "DATASET=demo", roots=roots)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran(done.stdout) == ["01_data", "02_activations", "03_pruning_sweep", "04_goodnet"]
    return roots


@pytest.mark.slow
def test_a_second_make_runs_nothing(made):
    done = make("goodnet", "DATASET=demo", roots=made)
    assert done.returncode == 0 and ran(done.stdout) == []
    assert done.stdout.count("up to date") == 4


@pytest.mark.slow
def test_changed_thresholds_rerun_the_sweep_and_what_follows(made):
    done = make("goodnet", "DATASET=demo", "THRESHOLDS=3, 6", roots=made)
    assert done.returncode == 0, done.stderr
    assert ran(done.stdout) == ["03_pruning_sweep", "04_goodnet"]
    results = ResultFiles(made[1] / "demo")
    assert pd.read_csv(results.thresholds_csv)["threshold"].tolist() == [3.0, 6.0]
    assert pd.read_csv(results.goodnet_csv)["model"].tolist()[1::2] == ["B'_3%", "B'_6%"]
    assert sorted(p.name for p in results.models.glob("bprime_*.h5")) == ["bprime_3.h5", "bprime_6.h5"]
    assert make("goodnet", "DATASET=demo", roots=made).returncode == 0  # back to the defaults


@pytest.mark.slow
def test_a_deleted_contract_file_is_made_again(made):
    results = ResultFiles(made[1] / "demo")
    before = results.sweep_csv.read_bytes()
    results.sweep_csv.unlink()
    done = make("goodnet", "DATASET=demo", roots=made)
    assert done.returncode == 0 and ran(done.stdout) == ["03_pruning_sweep"]
    assert results.sweep_csv.read_bytes() == before


@pytest.mark.slow
def test_a_changed_input_file_reruns_the_step_that_owns_it(made):
    """A demo's data are derived: a tampered image set is generated again, and nothing downstream changes."""
    clean_test = made[0] / "demo" / "cl" / "test.h5"
    good = clean_test.read_bytes()
    clean_test.write_bytes(good[:-10] + b"0123456789")
    done = make("goodnet", "DATASET=demo", roots=made)
    assert done.returncode == 0 and ran(done.stdout) == ["01_data"]
    assert clean_test.read_bytes() == good


@pytest.mark.slow
def test_an_exploratory_run_in_its_own_folder_leaves_the_results_alone(made, tmp_path):
    """The README's way to try other thresholds: a results folder of its own; the default one is untouched."""
    results = ResultFiles(made[1] / "demo")
    before = {p: p.read_bytes() for p in results.root.rglob("*") if p.is_file() and p.name != "run.json"}
    done = make("sweep", "DATASET=demo", f"RESULTS_DIR={tmp_path / 'try'}", "THRESHOLDS=1, 3, 5, 20", roots=made)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "try" / "thresholds.csv")["threshold"].tolist() == [1.0, 3.0, 5.0, 20.0]
    assert {p: p.read_bytes() for p in results.root.rglob("*") if p.is_file() and p.name != "run.json"} == before
    assert ran(make("goodnet", "DATASET=demo", roots=made).stdout) == []


def test_mixing_two_runs_is_refused(tmp_path):
    """A step's outputs changed after it recorded them: whoever combines them is told, with the fix."""
    results = ResultFiles(tmp_path / "results")
    results.root.mkdir()
    (tmp_path / "in.csv").write_text("a\n1\n")
    results.goodnet_csv.write_text("model\nB\n")
    provenance.record_step(results, "goodnet", [tmp_path / "in.csv"], [results.goodnet_csv], "B")
    provenance.require_current(results, "goodnet", "rerun it")
    results.goodnet_csv.write_text("model\nB\nB'_1%\n")
    with pytest.raises(InputError, match=r"no longer belong together \(output .*goodnet.csv changed\)"):
        provenance.require_current(results, "goodnet", "rerun it")
    parameters, code = {"thresholds": [2]}, "abc"
    provenance.record_step(results, "goodnet", [tmp_path / "in.csv"], [results.goodnet_csv], "B")
    provenance.complete_record(results, "goodnet", parameters, code)
    assert provenance.stale_reason(results, "goodnet", parameters, code) is None
    assert "thresholds [2] -> [3]" in provenance.stale_reason(results, "goodnet", {"thresholds": [3]}, code)
    assert provenance.stale_reason(results, "goodnet", parameters, "def") == "code changed (lib/ or the notebook)"
    (tmp_path / "in.csv").write_text("a\n2\n")
    assert "in.csv changed" in provenance.stale_reason(results, "goodnet", parameters, code)


def test_a_second_run_on_a_folder_stops_and_names_the_first(tmp_path):
    folder = tmp_path / "results" / "demo"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from lib.runs import locks; import time\nwith locks.hold([{str(folder)!r}], 'make all'):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(InputError, match=rf"in use by process {holder.pid} on .* \(make all, since"),
            locks.hold([folder]),
        ):
            pass
        # Readers of a data folder share it; a writer waits for none of them here and is refused.
        with pytest.raises(InputError, match="in use"), locks.hold([], read=[folder]):
            pass
    finally:
        holder.kill()
        holder.wait()
    with locks.hold([folder]):  # released by the operating system when its holder died
        pass


def test_the_runner_refuses_a_folder_in_use_and_deletes_nothing_of_the_live_run(tmp_path):
    results = tmp_path / "results" / "demo"
    live_temp = results / "notebooks" / ".02_activations.abc.tmp.ipynb"
    live_temp.parent.mkdir(parents=True)
    live_temp.write_text("the live run's half-written notebook")
    env = dict(os.environ, BACKDOOR_RESULTS_ROOT=str(tmp_path / "results"), BACKDOOR_DATA_ROOT=str(tmp_path / "data"))
    with locks.hold([results], "the live run"):
        done = subprocess.run(
            [sys.executable, "-m", "lib.runs.notebook", "notebooks/02_activations.ipynb", "-p", "dataset=demo"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    assert done.returncode == 2 and "in use by process" in done.stderr and "the live run" in done.stderr
    assert live_temp.is_file()


def test_clean_results_refuses_a_name_that_is_not_a_dataset(tmp_path):
    done = make("clean-results", "DATASET=..", roots=(tmp_path, tmp_path))
    assert done.returncode != 0 and "unknown dataset '..'" in done.stderr
    assert (PROJECT_ROOT / "notebooks").is_dir()


def test_make_checks_the_dataset_before_running_anything(tmp_path):
    done = make("all", "DATASET=csaw-lab", roots=(tmp_path / "data", tmp_path / "results"))
    assert done.returncode != 0 and "use one of demo, demo-pruning-aware, csaw-lab3" in done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_holder_file_names_the_run(tmp_path):
    with locks.hold([tmp_path], "make all DATASET=demo"):
        info = json.loads((tmp_path / locks.HOLDER_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "make all DATASET=demo"
    assert not (tmp_path / locks.HOLDER_NAME).exists()


def test_lock_timeout_lets_a_second_run_wait(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from lib.runs import locks; import time\nwith locks.hold([{str(folder)!r}]):\n"
            "    print('held', flush=True); time.sleep(2)",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setenv(locks.TIMEOUT_ENV, "30")
    start = time.monotonic()
    with locks.hold([folder]):
        assert time.monotonic() - start > 0.5
    holder.wait()
