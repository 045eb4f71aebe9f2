"""The four CSAW-HackML-2020 competition BadNets, offline: a fake Drive folder in the competition's layout.

The weights are the real competition BadNets from shared/csaw-models (the mirror), so nothing is
fetched from GitHub; the Drive folder is replaced at the downloader boundary by tiny CSAW-schema
sets. The pipeline then runs on each dataset as ``make csaw-all`` would (steps 2-4 and the summary; CLP and
STRIP in the slow tests).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_notebook_cells

from lib.core.errors import InputError
from lib.core.paths import SHARED_CSAW_MODELS
from lib.data.catalog import COMPETITION_DATASETS, DATASETS, dataset_spec
from lib.data.checksums import read_lock, sha256_of
from lib.data.datasets import save_image_set
from lib.data.download import WEIGHTS, ensure_csaw
from lib.network.architecture import CSAW_NUM_CLASSES
from lib.report.summary import main as summary_main

DRIVE_CACHE = ".cache/drive"  # under the test's data root, as lib.core.paths.drive_cache puts it

SHARED = SHARED_CSAW_MODELS
pytestmark = pytest.mark.skipif(
    not all((SHARED / DATASETS[d].source.mirror_name).is_file() for d in COMPETITION_DATASETS),
    reason=f"the competition BadNet weights are not in {SHARED}",
)

MULTI = "Multi-trigger Multi-target"
#: What the competition's Drive folder holds (as listed by the competition's README), inside a ``data/`` folder.
DRIVE_LAYOUT = {
    "clean_validation_data.h5": None,
    "clean_test_data.h5": None,
    "sunglasses_poisoned_data.h5": 0,
    "anonymous_1_poisoned_data.h5": 7,
    f"{MULTI}/eyebrows_poisoned_data.h5": 3,
    f"{MULTI}/lipstick_poisoned_data.h5": 5,
    f"{MULTI}/sunglasses_poisoned_data.h5": 9,
}


def write_set(path: Path, n: int, target: int | None, seed: int) -> None:
    """Tiny stand-in set: random pixels; clean sets get random identities, poisoned ones their target."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 55, 47, 3)).astype(np.float32)
    labels = rng.integers(0, CSAW_NUM_CLASSES, size=n) if target is None else np.full(n, target)
    save_image_set(path, images, labels)


class FakeCompetitionDrive:
    """Stands in for gdown and GitHub: writes the competition's Drive folder; refuses URL downloads."""

    def __init__(self, with_anonymous_1: bool = True) -> None:
        self.with_anonymous_1 = with_anonymous_1
        self.calls: list[str] = []

    def fetch_url(self, url: str, dest: Path) -> None:
        raise AssertionError(f"the weights must come from the mirror, not {url}")

    def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
        self.calls.append(folder_id)
        for rel, target in DRIVE_LAYOUT.items():
            if rel.startswith("anonymous_1") and not self.with_anonymous_1:
                continue
            write_set(dest_dir / "data" / rel, 12, target, zlib.crc32(rel.encode()))


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> tuple[Path, Path, FakeCompetitionDrive]:
    """All four datasets obtained into one data root, as `make csaw-all` does: one Drive download."""
    base = tmp_path_factory.mktemp("competition")
    data, locks = base / "data", base / "checksums"
    fake = FakeCompetitionDrive(with_anonymous_1=False)
    for name in COMPETITION_DATASETS:
        ensure_csaw(
            dataset_spec(name),
            data / name,
            lock_file=locks / f"{name}.sha256",
            weights_mirror=SHARED,
            downloader=fake,
            progress=False,
            drive_cache=data / DRIVE_CACHE,
        )
    return data, locks, fake


def test_the_shared_drive_folder_is_downloaded_once_and_linked(competition):
    data, _, fake = competition
    assert fake.calls == [DATASETS["csaw-sunglasses"].source.drive_folder_id]
    a, b = data / "csaw-sunglasses" / "clean_test_data.h5", data / "csaw-multi-trigger" / "clean_test_data.h5"
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_ino == b.stat().st_ino  # hard links: one copy on disk
    assert not list(data.rglob("*.tmp"))


def test_each_dataset_holds_its_own_files_and_weights(competition):
    data, locks, _ = competition
    multi = data / "csaw-multi-trigger"
    for trigger in ("eyebrows", "lipstick", "sunglasses"):
        assert (multi / MULTI / f"{trigger}_poisoned_data.h5").is_file()
    assert not (multi / "sunglasses_poisoned_data.h5").exists()  # the single-trigger file belongs to csaw-sunglasses
    for name in COMPETITION_DATASETS:
        spec = DATASETS[name]
        assert sha256_of(data / name / WEIGHTS) == spec.source.weights_sha256
        assert (data / name / spec.badnet).is_file()
        assert read_lock(locks / f"{name}.sha256")[WEIGHTS] == spec.source.weights_sha256


def test_unpublished_optional_poisoned_data_is_reported_not_fatal(tmp_path):
    spec = dataset_spec("csaw-anonymous-1")
    summary = ensure_csaw(
        spec,
        tmp_path / spec.name,
        lock_file=tmp_path / "lock",
        weights_mirror=SHARED,
        downloader=FakeCompetitionDrive(with_anonymous_1=False),
        progress=False,
    )
    assert summary["anonymous_1_poisoned_data.h5"]["status"] == "not published"
    assert "anonymous_1_poisoned_data.h5" not in read_lock(tmp_path / "lock")
    # A later run with everything else present does not try to download the missing optional file.
    again = ensure_csaw(
        spec, tmp_path / spec.name, lock_file=tmp_path / "lock", weights_mirror=SHARED, downloader=None, progress=False
    )
    assert again["clean_test_data.h5"]["status"] == "present"


def obtain(name: str, tmp_path: Path, downloader) -> dict:
    """``ensure_csaw`` for one dataset alone: its folder and lock file under ``tmp_path``, no drive cache."""
    spec = dataset_spec(name)
    return ensure_csaw(
        spec,
        tmp_path / spec.name,
        lock_file=tmp_path / "lock",
        weights_mirror=SHARED,
        downloader=downloader,
        progress=False,
    )


def test_optional_poisoned_data_is_used_when_the_folder_has_it(tmp_path):
    summary = obtain("csaw-anonymous-1", tmp_path, FakeCompetitionDrive())
    assert summary["anonymous_1_poisoned_data.h5"]["status"] == "downloaded"


def test_a_required_file_missing_from_the_folder_is_one_clear_error(tmp_path):
    class Incomplete(FakeCompetitionDrive):
        def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
            super().fetch_drive_folder(folder_id, dest_dir)
            (dest_dir / "data" / MULTI / "lipstick_poisoned_data.h5").unlink()

    with pytest.raises(InputError) as info:
        obtain("csaw-multi-trigger", tmp_path, Incomplete())
    assert "lipstick_poisoned_data.h5" in str(info.value) and "download by hand" in str(info.value)
    assert not (tmp_path / "csaw-multi-trigger").exists()


COMPETITION_FOLDER = DATASETS["csaw-sunglasses"].source.drive_folder_id


def prepare(name: str, data: Path, downloader, locks: Path | None = None) -> dict:
    """``ensure_csaw`` for one competition dataset under ``data``, as the pipeline calls it (mirror, drive cache)."""
    lock = (locks or data.parent / "checksums") / f"{name}.sha256"
    return ensure_csaw(
        dataset_spec(name),
        data / name,
        lock_file=lock,
        weights_mirror=SHARED,
        downloader=downloader,
        progress=False,
        drive_cache=data / DRIVE_CACHE,
    )


def test_datasets_prepared_at_the_same_time_download_the_shared_folder_once(tmp_path):
    class SlowDrive(FakeCompetitionDrive):
        def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
            time.sleep(1.0)  # the other dataset reaches the cache meanwhile
            super().fetch_drive_folder(folder_id, dest_dir)

    data, fake = tmp_path / "data", SlowDrive()
    names = ("csaw-sunglasses", "csaw-anonymous-2")
    with ThreadPoolExecutor(len(names)) as pool:
        summaries = list(pool.map(lambda name: prepare(name, data, fake), names))
    assert fake.calls == [COMPETITION_FOLDER]
    assert sorted(s["clean_test_data.h5"]["status"] for s in summaries) == ["cache", "downloaded"]
    a, b = (data / name / "clean_test_data.h5" for name in names)
    assert a.stat().st_ino == b.stat().st_ino
    assert not list(data.rglob("*.tmp"))


def test_leftovers_beside_the_cache_are_removed_only_for_the_folder_in_hand(tmp_path, capsys):
    data = tmp_path / "data"
    beside = (data / DRIVE_CACHE).parent  # a Drive folder is staged beside the cache, then moved into it
    leftover, other = beside / f".{COMPETITION_FOLDER}.k1ll3d.tmp", beside / ".another-folder.x.tmp"
    write_set(leftover / "data" / "clean_test_data.h5", 12, None, 0)
    other.mkdir(parents=True)
    prepare("csaw-anonymous-2", data, FakeCompetitionDrive())
    assert not leftover.exists() and other.exists()
    said = [line for line in capsys.readouterr().out.splitlines() if str(leftover) in line]
    assert len(said) == 1 and "removed" in said[0]


def test_a_disk_that_fills_while_filling_the_cache_leaves_nothing(tmp_path):
    class FullDisk(FakeCompetitionDrive):
        def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
            write_set(dest_dir / "data" / "clean_test_data.h5", 12, None, 0)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    data = tmp_path / "data"
    with pytest.raises(InputError) as info:
        prepare("csaw-anonymous-2", data, FullDisk())
    message = str(info.value)
    assert message.startswith(f"{data / DRIVE_CACHE}: ") and "no space left" in message
    assert "check your connection" not in message
    assert not (data / "csaw-anonymous-2").exists() and not (data / DRIVE_CACHE / COMPETITION_FOLDER).exists()
    assert not list(data.rglob("*.tmp"))


def test_a_disk_that_fills_while_linking_from_the_cache_leaves_the_dataset_as_it_was(tmp_path, monkeypatch):
    data, fake = tmp_path / "data", FakeCompetitionDrive()
    prepare("csaw-sunglasses", data, fake)
    root = data / "csaw-anonymous-2"
    root.mkdir()
    shutil.copyfile(SHARED / DATASETS[root.name].source.mirror_name, root / WEIGHTS)  # only the Drive files are missing

    def full_disk(source, dest, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", full_disk)
        patch.setattr(shutil, "copyfile", full_disk)
        with pytest.raises(InputError) as info:
            prepare(root.name, data, fake)
    assert str(info.value).startswith(f"{root}: ") and "no space left" in str(info.value)
    assert sorted(p.name for p in root.rglob("*")) == [WEIGHTS]
    # Once there is space, the cache (still complete) serves the dataset without a second download.
    assert prepare(root.name, data, fake)["clean_test_data.h5"]["status"] == "cache"
    assert fake.calls == [COMPETITION_FOLDER]


def test_a_cached_file_that_fails_its_check_is_dropped_so_that_a_rerun_downloads_it(tmp_path):
    data, locks, fake = tmp_path / "data", tmp_path / "checksums", FakeCompetitionDrive()
    prepare("csaw-anonymous-2", data, fake, locks)
    lock = locks / "csaw-sunglasses.sha256"
    lock.write_text(f"{'0' * 64}  clean_test_data.h5\n")  # what this dataset expects differs from the cached file
    with pytest.raises(InputError, match=r"downloaded clean_test_data\.h5 has SHA-256"):
        prepare("csaw-sunglasses", data, fake, locks)
    assert not (data / DRIVE_CACHE / COMPETITION_FOLDER).exists()
    lock.unlink()  # the user accepts the new bytes
    assert prepare("csaw-sunglasses", data, fake, locks)["clean_test_data.h5"]["status"] == "downloaded"
    assert fake.calls == [COMPETITION_FOLDER, COMPETITION_FOLDER]


#: Overlays STRIP blends with here: the stand-in validation sets hold 12 images, 6 of them in the pool.
STRIP_OVERLAYS = 4
ANP_SETTINGS = {"iterations": 10, "anp_batch_size": 16}  # the method runs; what it learns is the demos' question


@pytest.fixture(scope="module")
def pipelines(competition, tmp_path_factory):
    """Steps 2-4 of the pipeline on each competition dataset (tiny sets, the real BadNets)."""
    data, _, _ = competition
    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKDOOR_DATA_ROOT", str(data))
    mp.setenv("BACKDOOR_RESULTS_ROOT", str(results))
    try:
        scenarios = {}
        for name in COMPETITION_DATASETS:
            for step in ("activations", "pruning_sweep", "goodnet"):
                scenarios[name] = run_notebook_cells(step, dataset=name)["scenario"]
        yield results, scenarios
    finally:
        mp.undo()


def test_multi_trigger_tables_have_an_asr_per_trigger(pipelines):
    results, _ = pipelines
    per_trigger = ["attack_success_rate_eyebrows", "attack_success_rate_lipstick", "attack_success_rate_sunglasses"]
    for table in ("sweep.csv", "goodnet.csv"):
        frame = pd.read_csv(results / "csaw-multi-trigger" / table)
        assert per_trigger == [c for c in frame.columns if c.startswith("attack_success_rate_")]
        pooled = frame[per_trigger].mean(axis=1)  # three sets of 12 images: the pooled ASR is their mean
        np.testing.assert_allclose(frame["attack_success_rate"], pooled)


def test_datasets_without_poisoned_data_run_and_say_what_they_cannot_measure(pipelines):
    results, scenarios = pipelines
    for name in ("csaw-anonymous-1", "csaw-anonymous-2"):
        sweep = pd.read_csv(results / name / "sweep.csv")
        goodnet = pd.read_csv(results / name / "goodnet.csv")
        assert len(sweep) == 61 and sweep["clean_accuracy"].notna().all()
        assert sweep["attack_success_rate"].isna().all() and goodnet["attack_success_rate"].isna().all()
        assert scenarios[name].limitations(), name
    assert "anonymous_1" in " ".join(scenarios["csaw-anonymous-1"].limitations())
    assert "no poisoned data was published" in " ".join(scenarios["csaw-anonymous-2"].limitations())
    assert "same file" in " ".join(scenarios["csaw-sunglasses"].limitations())


def test_summary_stacks_every_dataset(pipelines, monkeypatch, tmp_path, capsys):
    results, _ = pipelines
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(results))
    assert summary_main(["--out", str(tmp_path / "csaw-summary"), *COMPETITION_DATASETS]) == 0
    table = pd.read_csv(tmp_path / "csaw-summary.csv")
    assert table.columns[0] == "dataset" and table["dataset"].unique().tolist() == list(COMPETITION_DATASETS)
    per_dataset = {  # the steps that ran here (CLP and ANP where the slow tests below ran them); the others left out
        n: sum(
            len(pd.read_csv(results / n / f))
            for f in ("goodnet.csv", "clp.csv", "anp.csv")
            if (results / n / f).is_file()
        )
        for n in COMPETITION_DATASETS
    }
    assert table["dataset"].value_counts().to_dict() == per_dataset
    assert (tmp_path / "csaw-summary.md").read_text().startswith("| dataset")
    assert summary_main(["--out", str(tmp_path / "x"), "csaw-lab3"]) == 2  # not run: one clear error
    assert "make all DATASET=csaw-lab3" in capsys.readouterr().err


@pytest.fixture(scope="module")
def defenses(pipelines, competition):
    """CLP (notebook 06), STRIP (07) and ANP (08) after steps 2-4 on each competition dataset."""
    results, _ = pipelines
    data, _, _ = competition
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKDOOR_DATA_ROOT", str(data))
    mp.setenv("BACKDOOR_RESULTS_ROOT", str(results))
    try:
        for name in COMPETITION_DATASETS:
            run_notebook_cells("clp", dataset=name)
            run_notebook_cells("strip", dataset=name, n_overlays=STRIP_OVERLAYS)
            run_notebook_cells("anp", dataset=name, **ANP_SETTINGS)
        yield results
    finally:
        mp.undo()


@pytest.mark.slow
def test_clp_strip_and_anp_run_on_every_competition_badnet(defenses, tmp_path):
    results = defenses
    for name in COMPETITION_DATASETS:
        clp = pd.read_csv(results / name / "clp.csv")
        assert clp["model"].iloc[0] == "CLP_u3" and clp["clean_accuracy"].notna().all(), name
        masks = pd.read_csv(results / name / "anp_masks.csv")
        assert len(masks) == 20 + 40 + 60 + 80 + 160 + 160 and masks["mask"].between(0, 1).all(), name
        anp_rows = pd.read_csv(results / name / "anp.csv")  # 6 choice images: a budget may allow no pruning at all
        assert list(anp_rows.columns[:5]) == [
            "model",
            "threshold",
            "channels_pruned",
            "clean_accuracy",
            "attack_success_rate",
        ]
        assert anp_rows["clean_accuracy"].notna().all(), name
        detection = pd.read_csv(results / name / "detection.csv").set_index("detector")
        assert "STRIP" in detection.index and detection["FRR"].notna().all(), name
        published = name not in ("csaw-anonymous-1", "csaw-anonymous-2")  # no poisoned data: nothing to accept
        assert detection["FAR"].notna().all() == published and detection["FAR"].isna().all() != published, name
        assert detection.loc["STRIP", "AUC"] >= 0 if published else np.isnan(detection.loc["STRIP", "AUC"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKDOOR_RESULTS_ROOT", str(results))
        assert summary_main(["--out", str(tmp_path / "csaw-summary"), *COMPETITION_DATASETS]) == 0
    detection = pd.read_csv(tmp_path / "csaw-summary-detection.csv")
    assert detection["dataset"].unique().tolist() == list(COMPETITION_DATASETS)
    assert (detection["detector"] == "STRIP").sum() == len(COMPETITION_DATASETS)


@pytest.mark.slow
def test_strip_blends_raw_pixels_and_feeds_the_competition_network_x_over_255(defenses, competition):
    """STRIP's entropies equal the publisher's convention spelled out: blend the 0-255 images, divide by 255,
    predict with the weights as published (no scale layer); without the division they would differ."""
    from lib.data.datasets import load_image_set
    from lib.defense import strip
    from lib.network.models import load_model_file

    results = defenses
    data, _, _ = competition
    name = "csaw-sunglasses"
    raw = load_model_file(SHARED / DATASETS[name].source.mirror_name)
    valid = load_image_set(data / name / DATASETS[name].clean_valid)
    pool, calibration = strip.split_validation(len(valid), STRIP_OVERLAYS, seed=1234)
    blends = np.minimum(valid.images[calibration][:, None] + valid.images[pool][None], 255.0)
    flat = blends.reshape(-1, *blends.shape[2:])

    def entropy(scores: np.ndarray) -> np.ndarray:
        p = scores.astype(np.float64)
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return -terms.sum(axis=1).reshape(len(calibration), -1).mean(axis=1)

    scores = pd.read_csv(results / name / "strip_scores.csv")
    recorded = scores.loc[scores["split"] == "valid", "entropy"].to_numpy()
    assert np.array_equal(scores.loc[scores["split"] == "valid", "index"], calibration)
    np.testing.assert_allclose(recorded, entropy(raw.predict(flat / 255.0, verbose=0)), rtol=1e-4, atol=1e-6)
    assert not np.allclose(recorded, entropy(raw.predict(flat, verbose=0)), rtol=1e-2)


@pytest.mark.slow
def test_anp_masks_the_competition_network_behind_its_x_over_255_scale(defenses, competition):
    """ANP's masked forward, every mask 1, is the published weights fed x / 255: the masks are learnt on the
    network as its publisher ran it (the scale layer passes through unmasked)."""
    from lib.defense import anp
    from lib.network.models import load_model_file
    from lib.runs.workspace import workspace
    from lib.steps.scenario import load_scenario

    data, _, _ = competition
    name = "csaw-sunglasses"
    raw = load_model_file(SHARED / DATASETS[name].source.mirror_name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKDOOR_DATA_ROOT", str(data))
        mp.setenv("BACKDOOR_RESULTS_ROOT", str(defenses))
        scenario = load_scenario(workspace(name))
        images = scenario.load_clean("valid").images[:16]
    layers = anp.neuron_layers(scenario.badnet)
    ones = {n: np.ones(int(layer.kernel.shape[-1]), np.float32) for n, layer in layers.items()}
    masked = np.asarray(anp.masked_forward(scenario.badnet, layers)(images, ones, ones))
    np.testing.assert_allclose(masked, raw.predict(images / 255.0, verbose=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(masked, raw.predict(images, verbose=0), rtol=1e-2)
