"""A data folder the run cannot write (Kaggle's /kaggle/input, a read-only mount): read, never written, or one error."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import read_only_folders

from lib.core.errors import InputError
from lib.core.paths import CACHE_ENV, PROJECT_ROOT, result_files
from lib.runs import locks


def test_a_read_only_folder_keeps_its_lock_in_the_cache_and_still_excludes(tmp_path, monkeypatch):
    folder, cache = tmp_path / "data" / "demo", tmp_path / "cache"
    folder.mkdir(parents=True)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    read_only_folders(monkeypatch, folder)
    with locks.hold([], read=[folder]):
        assert list(folder.iterdir()) == [], "nothing written in the read-only folder"
        assert [p.name for p in (cache / "locks").glob("*/*")] == [locks.LOCK_NAME]
        with pytest.raises(InputError, match="in use"), locks.hold([folder]):
            pass  # a writer of the same folder is still refused (the data step, a second run)


def test_a_read_only_folder_without_room_for_its_lock_names_the_setting(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "demo"
    folder.mkdir(parents=True)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "data" / ".cache"))
    read_only_folders(monkeypatch, tmp_path / "data")
    monkeypatch.setattr(Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with (
        pytest.raises(InputError, match=rf"read-only .* set \${CACHE_ENV} to a writable folder"),
        locks.hold([], read=[folder]),
    ):
        pass


def _can_mount_read_only() -> bool:
    probe = "mount --bind / /mnt 2>/dev/null && mount -o remount,bind,ro /mnt"
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-m", "sh", "-c", probe]).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_read_only(), reason="needs a mount namespace (unshare -m) to mount read-only")
def test_the_pipeline_runs_on_a_read_only_data_folder_and_writes_only_its_results(tmp_path):
    """The demo's data made by a first run, then mounted read-only: notebooks 01-05 verify it and only read it."""
    data, view, results, cache = tmp_path / "data", tmp_path / "view", tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, CACHE_ENV: str(cache), "BACKDOOR_RESULTS_ROOT": str(tmp_path / "scratch")}
    python = str(PROJECT_ROOT / ".venv" / "bin" / "python") if (PROJECT_ROOT / ".venv").is_dir() else "python"
    first = [python, "-m", "lib.runs.notebook", "notebooks/01_data.ipynb", "-p", "dataset=demo"]
    made = subprocess.run([*first, "-p", f"data_dir={data}"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    before = sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*"))
    view.mkdir()
    script = (
        f'mount --bind "{data}" "{view}" && mount -o remount,bind,ro "{view}" && touch "{view}/probe" 2>/dev/null '
        f'&& exit 99; make --no-print-directory all DATASET=demo DATA_DIR="{view}" RESULTS_DIR="{results}"'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*")) == before, "data untouched"
    committed, ours = result_files("demo"), result_files("demo", results)
    expected, got = pd.read_csv(committed.goodnet_csv), pd.read_csv(ours.goodnet_csv)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-5, rtol=0)
