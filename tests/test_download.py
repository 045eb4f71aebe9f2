"""The real-data path (dataset=csaw-lab3) without network: a fake Downloader stands in for gdown/requests.

The Drive data is faked with tiny CSAW-schema sets; the weights are the real lab-3 BadNet weights
from shared/csaw-models (tests that need them are skipped when that folder is absent).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import read_only_folders

from lib.core.errors import InputError
from lib.core.paths import CACHE_ENV, SHARED_CSAW_MODELS, checksum_file
from lib.data.catalog import DATASETS
from lib.data.checksums import read_lock, sha256_of
from lib.data.datasets import save_image_set
from lib.data.download import WEIGHTS, default_weights_mirror, ensure_csaw, remote_files
from lib.data.fetch import NetworkDownloader
from lib.network.architecture import CSAW_NUM_CLASSES, build_deepid
from lib.network.models import save_model

LAB3 = DATASETS["csaw-lab3"]
BADNET, IMAGE_SETS = LAB3.badnet, LAB3.image_files()
WEIGHTS_URL, WEIGHTS_SHA256 = LAB3.source.weights_url, LAB3.source.weights_sha256

SHARED = SHARED_CSAW_MODELS
REAL_WEIGHTS = SHARED / "lab3_bd_weights.h5"
needs_weights = pytest.mark.skipif(
    not REAL_WEIGHTS.is_file(),
    reason=f"{REAL_WEIGHTS} is absent: these tests build bd_net.h5 from the real lab-3 weights "
    "(put shared/csaw-models beside the project)",
)


def write_fake_set(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(4, 55, 47, 3)).astype(np.float32)
    labels = rng.integers(0, CSAW_NUM_CLASSES, size=4)
    save_image_set(path, images, labels)


class FakeDownloader:
    """Writes what the lab's Drive folder and the GitHub URL would deliver, or fails as asked."""

    def __init__(
        self,
        weights: bytes | None = None,
        layout: str = "data",
        fail: str | None = None,
        truncate: str | None = None,
        seed: int = 0,
        disk_full: int | None = None,
    ) -> None:
        self.weights = weights
        self.layout = layout
        self.fail = fail
        self.truncate = truncate
        self.seed = seed
        self.disk_full = disk_full  # errno of a disk that fills during the failing download
        self.calls: list[str] = []

    def full_disk(self, partial: Path) -> OSError:
        """Write part of a file, as a download does until the disk is full; the error the disk raises."""
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"\x89HDF\r\n" + b"0" * 1000)
        return OSError(self.disk_full, os.strerror(self.disk_full), str(partial))

    def fetch_url(self, url: str, dest: Path) -> None:
        self.calls.append(url)
        if self.fail in ("url", "any"):
            if self.disk_full:
                raise self.full_disk(dest)
            raise ConnectionError("[Errno 101] Network is unreachable")
        data = REAL_WEIGHTS.read_bytes() if self.weights is None else self.weights
        if self.fail == "partial_url":
            dest.write_bytes(data[: len(data) // 3])
            raise ConnectionError("connection reset by peer")
        dest.write_bytes(data)

    def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
        self.calls.append(folder_id)
        if self.fail in ("drive", "any"):
            if self.disk_full:
                raise self.full_disk(dest_dir / "data" / "cl" / "valid.h5")
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")
        (dest_dir / "README.txt").parent.mkdir(parents=True, exist_ok=True)
        (dest_dir / "README.txt").write_text("lab 3 data\n")
        for rel in IMAGE_SETS:
            where = {"data": Path("data") / rel, "top": Path(rel), "flat": Path(Path(rel).name)}[self.layout]
            path = dest_dir / where
            write_fake_set(path, zlib.crc32(rel.encode()) + self.seed)
            if rel == self.truncate:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def files_in(root: Path) -> list[str]:
    """Every file under root, hidden ones included (a leftover temporary file must show up)."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


ALL_FILES = sorted([WEIGHTS, BADNET, *IMAGE_SETS])


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> tuple[Path, Path]:
    """A root and lock file after one successful first run (built once: building bd_net.h5 takes seconds)."""
    if not REAL_WEIGHTS.is_file():
        pytest.skip(f"{REAL_WEIGHTS} is absent")
    base = tmp_path_factory.mktemp("completed")
    root, lock = base / "csaw-lab3", base / "csaw-lab3.sha256"
    ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(), progress=False)
    return root, lock


@pytest.fixture
def done(completed, tmp_path) -> tuple[Path, Path]:
    """A private copy of the completed root and lock file, free to damage."""
    root, lock = tmp_path / "csaw-lab3", tmp_path / "csaw-lab3.sha256"
    shutil.copytree(completed[0], root)
    shutil.copyfile(completed[1], lock)
    return root, lock


@needs_weights
@pytest.mark.parametrize("layout", ["data", "top", "flat"])
def test_first_run_downloads_verifies_records_and_builds(tmp_path, layout):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    fake = FakeDownloader(layout=layout)
    summary = ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)

    assert fake.calls == [WEIGHTS_URL, LAB3.source.drive_folder_id]
    assert files_in(root) == ALL_FILES  # no staging folder or temporary file left
    assert {rel: s["status"] for rel, s in summary.items()} == {
        WEIGHTS: "downloaded",
        **{rel: "downloaded" for rel in IMAGE_SETS},
        BADNET: "built",
    }
    for rel, entry in summary.items():
        assert entry["path"] == root / rel
        assert entry["sha256"] == sha256_of(root / rel)
    recorded = read_lock(lock)
    assert recorded == {rel: sha256_of(root / rel) for rel in [WEIGHTS, *IMAGE_SETS]}
    assert recorded[WEIGHTS] == WEIGHTS_SHA256
    lines = lock.read_text().splitlines()
    assert all(re.fullmatch(r"[0-9a-f]{64}  \S+", line) for line in lines)
    assert lines[0].endswith(f"  {WEIGHTS}")

    model = keras.models.load_model(root / BADNET, compile=False)
    assert model.output_shape[-1] == CSAW_NUM_CLASSES


@needs_weights
def test_second_run_downloads_nothing(done):
    root, lock = done
    before = {rel: (root / rel).read_bytes() for rel in ALL_FILES}
    lock_before = lock.read_text()
    fake = FakeDownloader(fail="any")
    summary = ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)
    assert fake.calls == []
    assert all(s["status"] == "present" for s in summary.values())
    assert {rel: (root / rel).read_bytes() for rel in ALL_FILES} == before
    assert lock.read_text() == lock_before


@needs_weights
@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_weights_checksum_mismatch_leaves_nothing(tmp_path, damage):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    data = bytearray(REAL_WEIGHTS.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(weights=bytes(data)), progress=False)
    message = str(info.value)
    assert WEIGHTS in message and WEIGHTS_URL in message and "SHA-256" in message
    assert files_in(root) == []
    assert not lock.exists()


@needs_weights
@pytest.mark.parametrize("fail", ["url", "partial_url", "drive"])
def test_network_failure_gives_one_clear_error_and_leaves_nothing(tmp_path, fail):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail=fail), progress=False)
    message = str(info.value)
    assert "check your connection" in message and "download by hand" in message
    assert (WEIGHTS_URL if "url" in fail else LAB3.source.drive_folder_url) in message
    assert files_in(root) == []
    assert not lock.exists()


@needs_weights
def test_truncated_drive_file_is_refused_and_nothing_is_kept(tmp_path):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(truncate="bd/bd_test.h5"), progress=False)
    assert "bd/bd_test.h5" in str(info.value) and "not usable" in str(info.value)
    assert files_in(root) == []  # the weights and the three good sets are not installed either
    assert not lock.exists()


@needs_weights
def test_drive_file_that_differs_from_the_lock_is_refused(completed, tmp_path):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    shutil.copyfile(completed[1], lock)
    lock_before = lock.read_text()
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(seed=1), progress=False)
    message = str(info.value)
    assert "cl/valid.h5" in message and str(lock) in message and "remove the line" in message
    assert files_in(root) == []
    assert lock.read_text() == lock_before


@needs_weights
def test_present_file_with_wrong_digest_is_reported(done):
    root, lock = done
    lock_before = lock.read_text()
    write_fake_set(root / "cl" / "test.h5", seed=12345)  # valid HDF5, but not the recorded bytes
    fake = FakeDownloader(fail="any")
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)
    message = str(info.value)
    assert str(root / "cl" / "test.h5") in message
    assert "delete it" in message and "remove the line for cl/test.h5" in message
    assert fake.calls == []
    assert lock.read_text() == lock_before


@needs_weights
def test_present_weights_that_are_not_the_published_ones_are_reported(done):
    root, lock = done
    (root / WEIGHTS).write_bytes(b"\x89HDF\r\n" + b"0" * 100)
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail="any"), progress=False)
    assert str(root / WEIGHTS) in str(info.value) and "delete it" in str(info.value)


@needs_weights
def test_other_weights_are_accepted_when_the_user_pins_them_in_the_lock(done):
    other = SHARED / "sunglasses_bd_weights.h5"
    if not other.is_file():
        pytest.skip(f"{other} is absent")
    root, lock = done
    shutil.copyfile(other, root / WEIGHTS)
    with pytest.raises(InputError, match="write the line"):
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail="any"), progress=False)
    digest = sha256_of(other)
    lock.write_text(lock.read_text().replace(WEIGHTS_SHA256, digest))
    summary = ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail="any"), progress=False)
    assert summary[WEIGHTS]["status"] == "present" and summary[WEIGHTS]["sha256"] == digest


def test_present_corrupt_file_without_recorded_digest_is_reported(tmp_path):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    (root / "cl").mkdir(parents=True)
    (root / "cl" / "valid.h5").write_bytes(b"this is not HDF5")
    fake = FakeDownloader(fail="any")
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)
    assert str(root / "cl" / "valid.h5") in str(info.value) and "delete" in str(info.value)
    assert fake.calls == []  # reported before anything is downloaded
    assert not lock.exists()


@needs_weights
def test_present_valid_files_without_digest_are_validated_and_recorded(tmp_path):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    for rel in IMAGE_SETS:
        write_fake_set(root / rel, seed=zlib.crc32(rel.encode()))
    shutil.copyfile(REAL_WEIGHTS, root / WEIGHTS)
    fake = FakeDownloader(fail="any")
    summary = ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)
    assert fake.calls == []
    assert [summary[rel]["status"] for rel in [WEIGHTS, *IMAGE_SETS]] == ["present"] * 5
    assert read_lock(lock) == {rel: sha256_of(root / rel) for rel in [WEIGHTS, *IMAGE_SETS]}


@needs_weights
def test_mirror_supplies_the_weights_without_the_downloader(done, tmp_path):
    root, lock = done
    (root / WEIGHTS).unlink()
    (root / BADNET).unlink()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(REAL_WEIGHTS, mirror / "lab3_bd_weights.h5")
    fake = FakeDownloader(fail="any")
    summary = ensure_csaw(LAB3, root, lock_file=lock, weights_mirror=mirror, downloader=fake, progress=False)
    assert fake.calls == []
    assert summary[WEIGHTS]["status"] == "mirror"
    assert summary[WEIGHTS]["sha256"] == WEIGHTS_SHA256
    assert summary[BADNET]["status"] == "built"
    assert files_in(root) == ALL_FILES


@needs_weights
def test_mirror_with_a_wrong_file_falls_back_to_the_download(done, tmp_path):
    root, lock = done
    (root / WEIGHTS).unlink()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "lab3_bd_weights.h5").write_bytes(b"not the weights")
    fake = FakeDownloader()
    with pytest.warns(UserWarning, match="differs"):
        summary = ensure_csaw(LAB3, root, lock_file=lock, weights_mirror=mirror, downloader=fake, progress=False)
    assert fake.calls == [WEIGHTS_URL]
    assert summary[WEIGHTS]["status"] == "downloaded"


@needs_weights
def test_user_supplied_bd_net_is_kept(tmp_path):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    save_model(build_deepid(), root / BADNET)  # the user's own model, not built from the weights
    before = (root / BADNET).read_bytes()
    summary = ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(), progress=False)
    assert summary[BADNET]["status"] == "present"
    assert (root / BADNET).read_bytes() == before
    assert files_in(root) == ALL_FILES
    assert BADNET not in read_lock(lock)


def test_broken_user_bd_net_is_reported_before_downloading(tmp_path):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    root.mkdir()
    (root / BADNET).write_bytes(b"junk")
    fake = FakeDownloader(fail="any")
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)
    assert str(root / BADNET) in str(info.value) and "delete it" in str(info.value)
    assert fake.calls == []
    assert files_in(root) == [BADNET]


@pytest.mark.parametrize("gdown_result", ["returns_none", "quota"])
def test_real_downloader_turns_gdown_failures_into_input_error(done, monkeypatch, gdown_result):
    import gdown

    def fake_download_folder(**kwargs):
        assert kwargs["id"] == LAB3.source.drive_folder_id
        if gdown_result == "quota":
            raise gdown.exceptions.FileURLRetrievalError("Too many users have viewed or downloaded this file recently.")
        return None

    monkeypatch.setattr(gdown, "download_folder", fake_download_folder)
    root, lock = done
    (root / "bd" / "bd_valid.h5").unlink()
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=NetworkDownloader(progress=False), progress=False)
    message = str(info.value)
    assert LAB3.source.drive_folder_url in message and "download by hand" in message
    assert str(root / "bd" / "bd_valid.h5") in message
    assert not (root / "bd" / "bd_valid.h5").exists()
    assert files_in(root) == sorted(set(ALL_FILES) - {"bd/bd_valid.h5"})


@pytest.mark.parametrize("takes_timeout", [True, False], ids=["gdown>=6.3", "gdown<6.3 (Kaggle, Colab)"])
def test_the_drive_timeout_goes_only_to_a_gdown_that_takes_it(tmp_path, monkeypatch, takes_timeout):
    import gdown

    seen = {}

    def new_gdown(id, output, quiet, timeout=None):
        seen.update(timeout=timeout)
        return ["a file"]

    def old_gdown(id, output, quiet):  # gdown 5.2.2: an unknown timeout= would be a TypeError
        seen.update(timeout="not passed")
        return ["a file"]

    monkeypatch.setattr(gdown, "download_folder", new_gdown if takes_timeout else old_gdown)
    NetworkDownloader(progress=False, timeout=7.0).fetch_drive_folder("folder", tmp_path)
    assert seen == {"timeout": 7.0 if takes_timeout else "not passed"}


def test_real_downloader_turns_requests_failures_into_input_error(tmp_path, monkeypatch):
    import requests

    def unreachable(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'github.com'")

    monkeypatch.setattr(requests, "get", unreachable)
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=NetworkDownloader(progress=False), progress=False)
    assert WEIGHTS_URL in str(info.value) and "ConnectionError" in str(info.value)
    assert files_in(root) == []


def test_malformed_lock_file_is_reported(tmp_path):
    lock = tmp_path / "lock.sha256"
    lock.write_text("68ec7afd  bd_weights.h5\n")
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, tmp_path / "root", lock_file=lock, downloader=FakeDownloader(fail="any"), progress=False)
    assert str(lock) in str(info.value) and "line 1" in str(info.value)


def test_repo_lock_file_pins_the_published_weights():
    assert read_lock(checksum_file("csaw-lab3"))[WEIGHTS] == WEIGHTS_SHA256
    sums = SHARED / "SHA256SUMS"
    if sums.is_file():
        published = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
        assert published["lab3_bd_weights.h5"] == WEIGHTS_SHA256
    if REAL_WEIGHTS.is_file():
        assert sha256_of(REAL_WEIGHTS) == WEIGHTS_SHA256


def test_default_weights_mirror():
    assert default_weights_mirror() == (SHARED if SHARED.is_dir() else None)


def test_every_file_a_dataset_downloads_is_one_record_of_the_catalog():
    for spec in (s for s in DATASETS.values() if s.source is not None):
        files = remote_files(spec)
        assert [f.path for f in files] == [WEIGHTS, *spec.image_files()]
        assert {f.path for f in files if f.optional} == spec.optional_files()
        weights, images = files[0], files[1:]
        assert (weights.url, weights.sha256, weights.mirror_name, weights.drive_folder_id) == (
            spec.source.weights_url,
            spec.source.weights_sha256,
            spec.source.mirror_name,
            None,
        )
        drive = (spec.source.drive_folder_url, spec.source.drive_folder_id)
        for f in images:  # no digest published: recorded in the lock file on first download
            assert (f.url, f.drive_folder_id, f.sha256) == (*drive, None)


@needs_weights
def test_leftovers_of_a_killed_download_are_removed_in_one_line(done, capsys):
    root, lock = done
    leftover = root / ".download-k1ll3d.tmp"
    (leftover / "drive" / "cl").mkdir(parents=True)
    (leftover / "drive" / "cl" / "valid.h5").write_bytes(b"0" * 5000)
    before = {rel: (root / rel).read_bytes() for rel in ALL_FILES}
    summary = ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail="any"), progress=False)
    assert files_in(root) == ALL_FILES and not leftover.exists()
    assert {rel: (root / rel).read_bytes() for rel in ALL_FILES} == before
    assert all(s["status"] == "present" for s in summary.values())
    said = [line for line in capsys.readouterr().out.splitlines() if str(leftover) in line]
    assert len(said) == 1 and "removed" in said[0] and "interrupted" in said[0]


@needs_weights
@pytest.mark.parametrize("fail", ["url", "drive"])
@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota exceeded")])
def test_a_disk_that_fills_during_the_download_is_reported_and_leaves_nothing(tmp_path, fail, code, reason):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "lock.sha256"
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail=fail, disk_full=code), progress=False)
    message = str(info.value)
    assert message.startswith(f"{root}: ") and reason in message and "free" in message
    assert "check your connection" not in message
    assert files_in(root) == []
    assert not lock.exists()


@needs_weights
def test_a_disk_that_fills_while_copying_from_the_mirror_says_how_much_is_needed(done, tmp_path, monkeypatch):
    root, lock = done
    (root / WEIGHTS).unlink()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(REAL_WEIGHTS, mirror / LAB3.source.mirror_name)

    def copy_onto_a_full_disk(source, dest, *args, **kwargs):
        Path(dest).write_bytes(Path(source).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))

    monkeypatch.setattr(shutil, "copyfile", copy_onto_a_full_disk)
    with pytest.raises(InputError) as info:
        ensure_csaw(
            LAB3, root, lock_file=lock, weights_mirror=mirror, downloader=FakeDownloader(fail="any"), progress=False
        )
    message = str(info.value)
    assert message.startswith(f"{root}: ") and "no space left" in message and WEIGHTS in message
    megabytes = REAL_WEIGHTS.stat().st_size / 1e6
    assert re.search(rf"free at least {megabytes:.1f}\d*\s?MB", message), message
    assert files_in(root) == sorted(set(ALL_FILES) - {WEIGHTS})


@needs_weights
def test_a_disk_that_fills_while_writing_the_lock_file_leaves_it_as_it_was(tmp_path, monkeypatch):
    root, lock = tmp_path / "csaw-lab3", tmp_path / "checksums" / "csaw-lab3.sha256"
    lock.parent.mkdir()
    lock.write_text(f"{WEIGHTS_SHA256}  {WEIGHTS}\n")
    write_text = Path.write_text

    def full_disk_for_the_lock(path, text, *args, **kwargs):
        if path.parent != lock.parent:
            return write_text(path, text, *args, **kwargs)
        write_text(path, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Path, "write_text", full_disk_for_the_lock)
    with pytest.raises(InputError) as info:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(), progress=False)
    assert str(info.value).startswith(f"{lock.parent}: ") and "no space left" in str(info.value)
    assert files_in(lock.parent) == [lock.name]
    assert lock.read_text() == f"{WEIGHTS_SHA256}  {WEIGHTS}\n"
    # The files were checked and installed: once there is space, the next run records them without downloading.
    monkeypatch.undo()
    fake = FakeDownloader(fail="any")
    ensure_csaw(LAB3, root, lock_file=lock, downloader=fake, progress=False)
    assert fake.calls == []
    assert read_lock(lock) == {rel: sha256_of(root / rel) for rel in [WEIGHTS, *IMAGE_SETS]}


def test_a_complete_read_only_folder_is_only_read_and_new_digests_go_to_the_cache(done, tmp_path, monkeypatch):
    root, lock = done
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    read_only_folders(monkeypatch, root, lock.parent)  # the project's checksums/ on a read-only mount too
    lock.unlink()  # nothing recorded yet: the digests of the image sets are new
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    entries = ensure_csaw(LAB3, root, lock_file=lock, downloader=FakeDownloader(fail="any"), progress=False)
    assert {e["status"] for e in entries.values()} == {"present"}
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before, "the folder is only read"
    assert not lock.exists()
    assert read_lock(cache / "checksums" / lock.name) == {rel: sha256_of(root / rel) for rel in [WEIGHTS, *IMAGE_SETS]}


def test_an_incomplete_read_only_folder_is_one_error_naming_it_and_the_fix(done, monkeypatch):
    root, lock = done
    (root / "cl" / "test.h5").unlink()
    read_only_folders(monkeypatch, root)
    downloader = FakeDownloader()
    with pytest.raises(InputError) as caught:
        ensure_csaw(LAB3, root, lock_file=lock, downloader=downloader, progress=False)
    assert str(caught.value).startswith(f"{root}: the folder is read-only")
    assert "cl/test.h5 would have to be written" in str(caught.value) and "data_dir=" in str(caught.value)
    assert downloader.calls == [] and "cl/test.h5" not in files_in(root)
