"""The demos' published BadNets: pinned with their image sets, used as they are, refused when changed."""

from __future__ import annotations

import shutil

import pytest
from conftest import read_only_folders

from lib.core import paths
from lib.core.errors import InputError
from lib.data.catalog import DEMO_DATASETS, dataset_spec
from lib.data.checksums import arrays_key, arrays_sha256, read_lock, sha256_of, write_lock
from lib.demo import published


@pytest.mark.parametrize("dataset", DEMO_DATASETS)
def test_each_demo_pins_its_badnet_and_image_sets(dataset):
    spec = dataset_spec(dataset)
    pins = read_lock(paths.checksum_file(dataset))
    assert set(pins) == {spec.badnet, *map(arrays_key, spec.image_files())}, "the sets by their arrays, not bytes"
    assert sha256_of(published.verified_badnet(dataset)) == pins[spec.badnet]
    record = published.published_record(dataset)
    assert record["fingerprint"] == published.dataset_recipe(dataset).fingerprint(), "published for its own recipe"
    assert record["summary"]["trained_on"]["cpu"], "the machine that trained it is recorded"


@pytest.fixture
def copied(tmp_path, monkeypatch):
    """The published demo and its pins, copied where a test may damage them."""
    shutil.copytree(paths.PUBLISHED / "demo", tmp_path / "published" / "demo")
    (tmp_path / "checksums").mkdir()
    shutil.copy(paths.checksum_file("demo"), tmp_path / "checksums")
    monkeypatch.setattr(published, "PUBLISHED", tmp_path / "published")
    monkeypatch.setattr(paths, "CHECKSUMS", tmp_path / "checksums")
    return tmp_path


def test_a_changed_byte_in_the_published_badnet_is_an_error_naming_it(copied):
    badnet = copied / "published" / "demo" / "bd_net.h5"
    data = bytearray(badnet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    badnet.write_bytes(bytes(data))
    with pytest.raises(
        InputError, match=r"published/demo/bd_net\.h5: its SHA-256 is .* the published BadNet was changed"
    ):
        published.ensure_demo(copied / "data", "demo", progress=False)
    assert not (copied / "data" / "bd_net.h5").exists()


def test_the_data_step_uses_the_published_badnet_and_warns_about_sets_that_differ(copied):
    root = copied / "data"
    summary = published.ensure_demo(root, "demo", progress=False)
    assert sha256_of(root / "bd_net.h5") == sha256_of(copied / "published" / "demo" / "bd_net.h5")
    assert summary == published.published_record("demo")["summary"], "no training: the published figures"
    pins = read_lock(paths.checksum_file("demo"))
    for rel in dataset_spec("demo").image_files():
        assert arrays_sha256(root / rel) == pins[arrays_key(rel)], f"{rel} reproduces"
    pins[arrays_key("cl/test.h5")] = "0" * 64  # as if this machine's numpy generated other pixels
    write_lock(paths.checksum_file("demo"), pins, order=list(pins))
    with pytest.warns(UserWarning, match=r"cl/test\.h5: the image set generated on this machine holds other pixels"):
        published.ensure_demo(root, "demo", progress=False)


def test_a_folder_that_holds_the_pinned_demo_is_only_read(copied):
    root = copied / "data"
    published.ensure_demo(root, "demo", progress=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    published.ensure_demo(root, "demo", progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before, "nothing rewritten"
    (root / "bd" / "bd_test.h5").write_bytes(b"not HDF5")
    published.ensure_demo(root, "demo", progress=False)
    assert (
        arrays_sha256(root / "bd" / "bd_test.h5") == read_lock(paths.checksum_file("demo"))[arrays_key("bd/bd_test.h5")]
    )


def test_an_incomplete_read_only_demo_folder_is_one_error_naming_it(copied, monkeypatch):
    root = copied / "data"
    published.ensure_demo(root, "demo", progress=False)
    (root / "cl" / "test.h5").unlink()
    read_only_folders(monkeypatch, root)
    with pytest.raises(InputError, match=r"data: the folder is read-only .* demo dataset \(cl/valid\.h5, .*data_dir="):
        published.ensure_demo(root, "demo", progress=False)


def test_another_recipe_trains_a_badnet_of_its_own(copied, monkeypatch):
    trained = []
    monkeypatch.setattr(published, "ensure_demo_scenario", lambda root, recipe, progress: trained.append(recipe))
    published.ensure_demo(copied / "data", "demo", {"seed": 7}, progress=False)
    assert [r.seed for r in trained] == [7]
