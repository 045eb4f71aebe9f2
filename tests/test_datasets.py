"""Image sets: the CSAW HDF5 schema round-trips, and every bad file gives one InputError naming it and the fix."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import smooth_images

from lib.core.errors import InputError
from lib.data.datasets import (
    IMAGE_SHAPE_NCHW,
    MAX_ATTACK_TARGETS,
    MAX_STRAY_LABEL_FRACTION,
    ImageSet,
    check_clean_validation,
    check_paired,
    check_triggered_labels,
    count_images,
    iter_image_batches,
    load_image_set,
    save_image_set,
)

N = 6
NUM_CLASSES = 10


def _labels(n: int = N) -> np.ndarray:
    return np.arange(n) % NUM_CLASSES


def _write_raw(path: Path, data=None, label=None, **extra) -> Path:
    """An HDF5 file holding exactly the datasets given (None: left out), bypassing save_image_set's conversions."""
    with h5py.File(path, "w") as f:
        if data is not None:
            f.create_dataset("data", data=data)
        if label is not None:
            f.create_dataset("label", data=label)
        for key, value in extra.items():
            f.create_dataset(key, data=value)
    return path


def _good_nchw(n: int = N) -> np.ndarray:
    return np.transpose(smooth_images(n), (0, 3, 1, 2)).astype(np.float32)


def _assert_input_error(exc_info: pytest.ExceptionInfo, path: Path, *phrases: str) -> str:
    """The message names the file, says what is wrong (each phrase, case-insensitive) and carries a fix."""
    message = str(exc_info.value)
    assert str(path) in message, message
    assert "Fix: " in message and exc_info.value.fix.strip(), message
    for phrase in phrases:
        assert re.search(phrase, message, re.IGNORECASE), f"{phrase!r} not in: {message}"
    return message


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_is_channels_first_on_disk_and_channels_last_in_memory(tmp_path):
    images = smooth_images(N, seed=3)
    labels = _labels()
    orig = (labels + 1) % NUM_CLASSES
    path = save_image_set(tmp_path / "set.h5", images, labels, orig_labels=orig)

    with h5py.File(path, "r") as f:
        assert f["data"].shape == (N, *IMAGE_SHAPE_NCHW)
        assert f["label"].shape == (N,)
        np.testing.assert_array_equal(f["data"][()], np.transpose(images, (0, 3, 1, 2)))

    loaded = load_image_set(path, num_classes=NUM_CLASSES)
    assert isinstance(loaded, ImageSet)
    assert loaded.images.shape == (N, 55, 47, 3)
    assert loaded.images.dtype == np.float32 and loaded.images.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(loaded.images, images)
    assert np.issubdtype(loaded.labels.dtype, np.integer)
    np.testing.assert_array_equal(loaded.labels, labels)
    np.testing.assert_array_equal(loaded.orig_labels, orig)
    assert loaded.path == path
    assert len(loaded) == N
    assert count_images(path) == N


def test_round_trip_without_orig_label_has_none(tmp_path):
    path = save_image_set(tmp_path / "set.h5", smooth_images(2), [0, 1])
    with h5py.File(path, "r") as f:
        assert "orig_label" not in f
    assert load_image_set(path).orig_labels is None


def test_save_leaves_no_temporary_file(tmp_path):
    save_image_set(tmp_path / "set.h5", smooth_images(2), [0, 1])
    assert [p.name for p in tmp_path.iterdir()] == ["set.h5"]


def test_save_refuses_images_that_are_not_4d(tmp_path):
    with pytest.raises(ValueError, match="images must be"):
        save_image_set(tmp_path / "set.h5", np.zeros((55, 47, 3)), [0])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("batch_size", [1, 4, N, 100])
def test_iter_image_batches_yields_the_same_images(tmp_path, batch_size):
    images = smooth_images(N, seed=5)
    path = save_image_set(tmp_path / "set.h5", images, _labels())
    batches = list(iter_image_batches(path, batch_size))
    assert [len(b) for b in batches] == [min(batch_size, N - s) for s in range(0, N, batch_size)]
    for b in batches:
        assert b.dtype == np.float32 and b.shape[1:] == (55, 47, 3) and b.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    np.testing.assert_array_equal(np.concatenate(batches), load_image_set(path).images)


# --- bad files -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "cl" / "valid.h5"
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "not found", "make data")
    with pytest.raises(InputError) as info:
        next(iter_image_batches(path, 2))
    _assert_input_error(info, path, "not found")


def test_text_file_is_not_hdf5(tmp_path):
    path = tmp_path / "valid.h5"
    path.write_text("<html>Google Drive: virus scan warning</html>\n")
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "not a readable HDF5", "delete the file")


def test_truncated_hdf5(tmp_path):
    path = save_image_set(tmp_path / "valid.h5", smooth_images(N), _labels())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "truncated", "make data")
    with pytest.raises(InputError):
        list(iter_image_batches(path, 2))


@pytest.mark.parametrize("missing", ["data", "label"])
def test_missing_dataset(tmp_path, missing):
    kwargs = {"data": _good_nchw(), "label": _labels()}
    kwargs[missing] = None
    path = _write_raw(tmp_path / "set.h5", **kwargs)
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, rf"missing HDF5 dataset.*'{missing}'", r"\(N, 3, 55, 47\)")


def test_wrong_rank(tmp_path):
    path = _write_raw(tmp_path / "set.h5", np.zeros((N, 3, 55), np.float32), _labels())
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, r"shape \(6, 3, 55\)", r"expected \(N, 3, 55, 47\)", "channels first")


def test_wrong_image_size(tmp_path):
    path = _write_raw(tmp_path / "set.h5", np.zeros((N, 3, 32, 32), np.float32), _labels())
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, r"shape \(6, 3, 32, 32\)", r"expected \(N, 3, 55, 47\)", "55 x 47")


def test_channels_last_data_is_recognised(tmp_path):
    path = _write_raw(tmp_path / "set.h5", smooth_images(N), _labels())  # (N, 55, 47, 3)
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "channels last", r"np\.transpose\(data, \(0, 3, 1, 2\)\)")
    with pytest.raises(InputError, match="channels last"):
        next(iter_image_batches(path, 2))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(tmp_path, bad):
    data = _good_nchw()
    data[2, 1, 10, 10] = bad
    path = _write_raw(tmp_path / "set.h5", data, _labels())
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "NaN or inf pixel", "0-255")
    with pytest.raises(InputError, match="NaN or inf"):
        list(iter_image_batches(path, 2))


@pytest.mark.parametrize("bad", [-1.0, 256.0, 1000.0])
def test_pixels_outside_0_255(tmp_path, bad):
    data = _good_nchw()
    data[0, 0, 0, 0] = bad
    path = _write_raw(tmp_path / "set.h5", data, _labels())
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "outside 0-255", "raw 0-255")


def test_pixels_in_0_1_warn_but_load(tmp_path):
    images = smooth_images(N) / 255.0
    path = save_image_set(tmp_path / "set.h5", images, _labels())
    with pytest.warns(UserWarning, match=r"within \[0, 1\].*multiply by 255") as record:
        loaded = load_image_set(path, num_classes=NUM_CLASSES)
    assert str(path) in str(record[0].message)
    np.testing.assert_allclose(loaded.images, images.astype(np.float32))


def test_edge_pixel_values_0_and_255_are_accepted(tmp_path):
    images = np.zeros((2, 55, 47, 3), np.float32)
    images[1] = 255.0
    load_image_set(save_image_set(tmp_path / "set.h5", images, [0, 1]))


@pytest.mark.parametrize(
    ("labels", "phrase"),
    [
        ([0, 1, -1, 2, 3, 4], r"\[-1, 4\]"),
        ([0, 1, 2, 3, 4, NUM_CLASSES], rf"\[0, {NUM_CLASSES}\].*{NUM_CLASSES} classes"),
    ],
    ids=["negative", "too_large"],
)
def test_labels_outside_the_classes(tmp_path, labels, phrase):
    path = save_image_set(tmp_path / "set.h5", smooth_images(N), labels)
    with pytest.raises(InputError) as info:
        load_image_set(path, num_classes=NUM_CLASSES)
    _assert_input_error(info, path, phrase, "use the data that belongs to this model")


def test_largest_valid_label_is_accepted(tmp_path):
    path = save_image_set(tmp_path / "set.h5", smooth_images(2), [0, NUM_CLASSES - 1])
    np.testing.assert_array_equal(load_image_set(path, num_classes=NUM_CLASSES).labels, [0, NUM_CLASSES - 1])


def test_bad_orig_label_is_reported_too(tmp_path):
    path = save_image_set(tmp_path / "set.h5", smooth_images(2), [0, 1], orig_labels=[0, NUM_CLASSES])
    with pytest.raises(InputError) as info:
        load_image_set(path, num_classes=NUM_CLASSES)
    _assert_input_error(info, path, "classes")


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 1.5, 2, 3, 4, 5]), np.array([0, np.nan, 2, 3, 4, 5])],
    ids=["fractional", "nan"],
)
def test_non_integer_labels(tmp_path, labels):
    path = _write_raw(tmp_path / "set.h5", _good_nchw(), labels)
    with pytest.raises(InputError) as info:
        load_image_set(path, num_classes=NUM_CLASSES)
    _assert_input_error(info, path, "`label`", "store integer class ids")


@pytest.mark.parametrize("n_labels", [N - 1, N + 1])
def test_label_count_differs_from_image_count(tmp_path, n_labels):
    path = _write_raw(tmp_path / "set.h5", _good_nchw(), _labels(n_labels))
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, rf"\({n_labels},\) for {N} images", "one integer class id per image")


def test_two_dimensional_labels(tmp_path):
    path = _write_raw(tmp_path / "set.h5", _good_nchw(), _labels().reshape(N, 1))
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, r"`label` has shape \(6, 1\)")


def test_check_paired(tmp_path):
    clean = load_image_set(save_image_set(tmp_path / "valid.h5", smooth_images(N), _labels()))
    same = load_image_set(save_image_set(tmp_path / "bd_valid.h5", smooth_images(N, seed=1), _labels()))
    check_paired(clean, same)  # no error
    fewer = load_image_set(save_image_set(tmp_path / "bd_test.h5", smooth_images(N - 2), _labels(N - 2)))
    with pytest.raises(InputError) as info:
        check_paired(clean, fewer)
    message = _assert_input_error(
        info, fewer.path, f"{N - 2} triggered images but {N} clean", "bd_valid.h5 with valid.h5"
    )
    assert str(clean.path) in message


# --- every reader refuses the same files ----------------------------------------------------------

READERS = {
    "load_image_set": load_image_set,
    "iter_image_batches": lambda path: list(iter_image_batches(path, 2)),
    "count_images": count_images,
}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_set_without_images(tmp_path, reader):
    path = _write_raw(tmp_path / "valid.h5", np.zeros((0, *IMAGE_SHAPE_NCHW), np.float32), np.zeros(0))
    with pytest.raises(InputError) as info:
        reader(path)
    _assert_input_error(info, path, "no images", "at least one image")


def _typed(shape: tuple[int, ...], kind: str) -> np.ndarray:
    """An array of ``shape`` holding values of a non-numeric kind, as h5py writes them."""
    if kind == "bytes":
        return np.full(shape, b"7", dtype="S3")
    if kind == "str":
        return np.full(shape, "7", dtype=object)
    if kind == "compound":
        return np.zeros(shape, dtype=[("value", "f4"), ("flag", "i1")])
    if kind == "bool":
        return np.ones(shape, dtype=bool)
    return np.ones(shape, dtype=np.complex64)


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [
        ("bytes", "text"),
        ("str", "text"),
        ("compound", "compound"),
        ("bool", "booleans"),
        ("complex", "complex"),
    ],
)
@pytest.mark.parametrize("name", ["data", "label", "orig_label"])
def test_values_that_are_not_numbers(tmp_path, name, kind, phrase):
    shapes = {"data": (N, *IMAGE_SHAPE_NCHW), "label": (N,), "orig_label": (N,)}
    arrays = {"data": _good_nchw(), "label": _labels(), "orig_label": _labels()}
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key == name:
                dtype = h5py.string_dtype() if kind == "str" else None
                f.create_dataset(key, data=_typed(shapes[key], kind), dtype=dtype)
            else:
                f.create_dataset(key, data=value)
    with pytest.raises(InputError) as info:
        load_image_set(path, num_classes=NUM_CLASSES)
    _assert_input_error(info, path, f"`{name}` holds .*{phrase}.*not numbers", "store (pixel values|integer class ids)")


def _link_file(tmp_path: Path, name: str, how: str) -> tuple[Path, str]:
    """A set whose ``name`` is stored some other way than as a plain dataset, and what the message must say."""
    other = tmp_path / "other.h5"
    values = {"data": _good_nchw(), "label": _labels(), "orig_label": _labels()}
    with h5py.File(other, "w") as f:
        f.create_dataset(name, data=values[name])
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as f:
        for key, value in values.items():
            if key != name:
                f.create_dataset(key, data=value)
        if how == "external link":
            f[name] = h5py.ExternalLink(str(other), name)
            return path, rf"external link to {name} in {re.escape(str(other))}.*another file"
        if how == "soft link":
            f.create_dataset("stash", data=values[name])
            f[name] = h5py.SoftLink("/stash")
            return path, "soft link to /stash"
        if how == "group":
            f.create_group(name).create_dataset("inside", data=values[name])
            return path, "HDF5 group, not a dataset"
        if how == "external storage":
            values[name].tofile(tmp_path / "raw.bin")
            f.create_dataset(name, shape=values[name].shape, dtype=values[name].dtype, external=[("raw.bin", 0, 2**20)])
            return path, r"external file\(s\) \['raw.bin'\].*another file"
        layout = h5py.VirtualLayout(shape=values[name].shape, dtype=values[name].dtype)
        layout[...] = h5py.VirtualSource(str(other), name, shape=values[name].shape)
        f.create_virtual_dataset(name, layout)
        return path, "virtual dataset mapped from other files"


LINKS = ["external link", "soft link", "group", "external storage", "virtual"]


@pytest.mark.parametrize("how", LINKS)
@pytest.mark.parametrize("name", ["data", "label", "orig_label"])
def test_datasets_stored_elsewhere_are_refused(tmp_path, name, how):
    """Each of these would make HDF5 read another file (or is not data at all); the other file holds a
    valid set, so only a refusal made before following the link gives an InputError."""
    path, phrase = _link_file(tmp_path, name, how)
    with pytest.raises(InputError) as info:
        load_image_set(path, num_classes=NUM_CLASSES)
    _assert_input_error(info, path, rf"`{name}` is|`{name}` keeps", phrase, "plain dataset inside this file")


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize("how", LINKS)
def test_every_reader_refuses_data_stored_elsewhere(tmp_path, reader, how):
    path, phrase = _link_file(tmp_path, "data", how)
    with pytest.raises(InputError) as info:
        reader(path)
    _assert_input_error(info, path, phrase)


def test_link_that_leads_nowhere_is_refused_not_followed(tmp_path):
    path = _write_raw(tmp_path / "set.h5", _good_nchw())
    with h5py.File(path, "a") as f:
        f["label"] = h5py.ExternalLink(str(tmp_path / "missing.h5"), "label")
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, "external link")


@pytest.mark.parametrize("n_orig", [N - 1, N + 1])
def test_orig_label_count_differs_from_image_count(tmp_path, n_orig):
    path = _write_raw(tmp_path / "set.h5", _good_nchw(), _labels(), orig_label=_labels(n_orig))
    with pytest.raises(InputError) as info:
        load_image_set(path)
    _assert_input_error(info, path, rf"`orig_label` has shape \({n_orig},\) for {N} images")


# --- the clean validation set's role ---------------------------------------------------------------


def _image_set(labels, path: str = "set.h5", orig=None) -> ImageSet:
    labels = np.asarray(labels, np.int64)
    images = np.zeros((len(labels), 55, 47, 3), np.float32)
    return ImageSet(images, labels, Path(path), None if orig is None else np.asarray(orig, np.int64))


def test_clean_validation_set_with_one_class_is_refused():
    with pytest.raises(InputError) as info:
        check_clean_validation(_image_set([3] * 8, "cl/valid.h5"))
    _assert_input_error(info, "cl/valid.h5", r"8 images of a single class \(3\)", "mean nothing", "many identities")
    check_clean_validation(_image_set([3] * 7 + [4]))  # two classes: accepted


def test_clean_validation_set_from_a_file(tmp_path):
    path = save_image_set(tmp_path / "valid.h5", smooth_images(N), np.zeros(N))
    with pytest.raises(InputError) as info:
        check_clean_validation(load_image_set(path))
    _assert_input_error(info, path, "single class")


# --- triggered sets whose labels are not attack targets -----------------------------------------


def _no_warning(*args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_triggered_labels(*args)


def _one_warning(*args) -> str:
    with pytest.warns(UserWarning) as record:
        check_triggered_labels(*args)
    assert len(record) == 1, [str(r.message) for r in record]
    message = str(record[0].message)
    assert str(args[0].path) in message and "attack success rate" in message and "`label`" in message, message
    return message


def test_single_and_multi_target_sets_do_not_warn():
    identities = np.arange(200) % 40 + 1
    _no_warning(_image_set(np.zeros(200), orig=identities))
    _no_warning(_image_set(np.arange(200) % 3, orig=identities), _image_set(identities))
    _no_warning(_image_set(np.arange(200) % MAX_ATTACK_TARGETS, orig=identities))


def test_a_few_stray_labels_do_not_warn():
    labels = np.zeros(200)
    labels[: int(MAX_STRAY_LABEL_FRACTION * 200)] = np.arange(int(MAX_STRAY_LABEL_FRACTION * 200)) + 1
    _no_warning(_image_set(labels))


def test_labels_spread_over_many_classes_warn():
    message = _one_warning(_image_set(np.arange(200) % 40, "bd/bd_valid.h5"))
    assert "40 distinct labels" in message and "single-target" in message


def test_target_with_many_other_labels_warns():
    labels = np.zeros(200)
    labels[:60] = np.arange(60) + 1
    _one_warning(_image_set(labels))


def test_labels_equal_to_orig_label_warn_even_with_few_classes():
    identities = np.arange(20) % 3
    message = _one_warning(_image_set(identities, orig=identities))
    assert "100% of its labels equal its `orig_label`" in message


def test_labels_equal_to_the_paired_clean_labels_warn():
    identities = np.arange(20) % 3
    message = _one_warning(_image_set(identities, "bd/bd_valid.h5"), _image_set(identities, "cl/valid.h5"))
    assert "cl/valid.h5" in message


def test_true_identities_over_many_classes_give_one_warning_with_every_reason():
    identities = np.arange(200) % 40
    message = _one_warning(_image_set(identities, orig=identities), _image_set(identities, "cl/valid.h5"))
    assert "distinct labels" in message and "orig_label" in message and "cl/valid.h5" in message


def test_paired_sets_of_different_sizes_are_refused():
    with pytest.raises(InputError, match="5 triggered images but 6 clean"):
        check_triggered_labels(_image_set(np.zeros(5), "bd/bd_valid.h5"), _image_set(np.arange(6), "cl/valid.h5"))


def test_the_demo_triggered_sets_do_not_warn_and_their_true_identities_would(tmp_path):
    from lib.demo import DemoRecipe, make_demo_data

    data = make_demo_data(DemoRecipe(n_identities=12, train_per_identity=2, valid_per_identity=3, test_per_identity=3))
    for name, images, labels, orig in [
        ("bd_valid.h5", data.x_valid_bd, data.y_valid_bd, data.orig_valid_bd),
        ("bd_test.h5", data.x_test_bd, data.y_test_bd, data.orig_test_bd),
    ]:
        triggered = load_image_set(save_image_set(tmp_path / name, images, labels, orig_labels=orig))
        _no_warning(triggered)
        relabelled = load_image_set(save_image_set(tmp_path / f"true_{name}", images, orig, orig_labels=orig))
        _one_warning(relabelled)
