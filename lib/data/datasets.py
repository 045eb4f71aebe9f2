"""Read, validate and write image sets in the CSAW HDF5 schema.

Schema (as published for CSAW-HackML-2020): dataset ``data`` of shape (N, 3, 55, 47), channels
first, float pixel values 0-255; dataset ``label`` of shape (N,), integer class ids. The demo
scenario's triggered sets also carry ``orig_label``, the true identity under the trigger.

Keras wants channels last, so everything returned here is (N, 55, 47, 3) float32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lib.core.atomic import atomic_path
from lib.core.errors import InputError
from lib.core.shapes import IMAGE_SHAPE_NHWC

#: A face as the HDF5 files store it: channels first (the networks see ``IMAGE_SHAPE_NHWC``).
IMAGE_SHAPE_NCHW = (IMAGE_SHAPE_NHWC[2], *IMAGE_SHAPE_NHWC[:2])


@dataclass
class ImageSet:
    """Images (N, 55, 47, 3) float32 and integer labels (N,), with the file they came from."""

    images: np.ndarray
    labels: np.ndarray
    path: Path | None = None
    orig_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise InputError(
            path,
            "file not found",
            "run the data notebook (`make data DATASET=...`) or place the file there in the CSAW HDF5 schema",
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            path,
            f"not a readable HDF5 file ({exc.__class__.__name__}: {exc}); a truncated or interrupted download "
            f"looks like this",
            "delete the file and run `make data` again to fetch or rebuild it",
        ) from None


#: Why a link or external storage is refused, and what to store instead (one place for both messages).
_SELF_CONTAINED = "HDF5 would read it from another file on this machine"
_SELF_CONTAINED_FIX = (
    "store it as a plain dataset inside this file (lib.data.datasets.save_image_set writes the schema; "
    "h5py: f.create_dataset(name, data=array))"
)
#: What each dataset of the schema must hold, for the message when it holds something else.
_NUMERIC_FIX = {
    "data": "store pixel values as numbers 0-255 (float32, as the CSAW files do)",
    "label": "store integer class ids, e.g. np.asarray(labels, dtype=np.int64)",
    "orig_label": "store integer class ids, e.g. np.asarray(orig_labels, dtype=np.int64)",
}


def _dtype_words(dtype: np.dtype) -> str:
    """What a non-numeric HDF5 dataset holds, in words for the message."""
    if h5py.check_string_dtype(dtype) is not None or dtype.kind in "SU":
        return "text (strings)"
    if h5py.check_vlen_dtype(dtype) is not None or h5py.check_ref_dtype(dtype) is not None or dtype.kind == "O":
        return "variable-length sequences or object references"
    if dtype.names:
        return f"records with fields {list(dtype.names)} (a compound type)"
    if dtype.kind == "b":
        return "booleans"
    if dtype.kind == "c":
        return "complex numbers"
    return f"values of type {dtype}"


def _plain_dataset(path: Path, f: h5py.File, name: str) -> h5py.Dataset | None:
    """Dataset ``name`` of ``f`` (None if absent), refused unless it is plain, numeric and stored in ``f``.

    The link is looked at before the object is touched: following a soft or external link, or
    reading a dataset with external or virtual storage, makes HDF5 open other files on this machine.
    """
    try:
        link = f.get(name, getlink=True)
    except TypeError:  # h5py's answer for a user-defined link type, which a plugin would resolve
        raise InputError(path, f"`{name}` is a user-defined HDF5 link, not a dataset", _SELF_CONTAINED_FIX) from None
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        raise InputError(
            path,
            f"`{name}` is an external link to {link.path} in {link.filename}; {_SELF_CONTAINED}",
            _SELF_CONTAINED_FIX,
        )
    if not isinstance(link, h5py.HardLink):
        raise InputError(path, f"`{name}` is a soft link to {link.path}, not a dataset", _SELF_CONTAINED_FIX)
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        kind = "an HDF5 group" if isinstance(obj, h5py.Group) else f"a {type(obj).__name__}"
        raise InputError(path, f"`{name}` is {kind}, not a dataset", _SELF_CONTAINED_FIX)
    if obj.is_virtual:
        raise InputError(
            path, f"`{name}` is a virtual dataset mapped from other files; {_SELF_CONTAINED}", _SELF_CONTAINED_FIX
        )
    plist = obj.id.get_create_plist()
    if plist.get_external_count():
        files = [plist.get_external(i)[0].decode(errors="replace") for i in range(plist.get_external_count())]
        raise InputError(
            path, f"`{name}` keeps its values in external file(s) {files}; {_SELF_CONTAINED}", _SELF_CONTAINED_FIX
        )
    if obj.dtype.kind not in "iuf":
        raise InputError(path, f"`{name}` holds {_dtype_words(obj.dtype)}, not numbers", _NUMERIC_FIX[name])
    return obj


@dataclass
class _Schema:
    """The checked datasets of one file: nothing has been read from them yet."""

    data: h5py.Dataset
    label: h5py.Dataset
    orig_label: h5py.Dataset | None


def _check_layout(path: Path, f: h5py.File, image_shape: tuple[int, int, int]) -> _Schema:
    """Every reader of the schema goes through here: datasets present, plain, numeric, of matching shapes, not empty."""
    missing = [k for k in ("data", "label") if f.get(k, getlink=True) is None]
    if missing:
        raise InputError(
            path,
            f"missing HDF5 dataset(s) {missing}; found {sorted(f.keys())}",
            "the file must hold `data` (N, 3, 55, 47) and `label` (N,) as in the CSAW-HackML-2020 files",
        )
    data, label, orig = (_plain_dataset(path, f, name) for name in ("data", "label", "orig_label"))
    shape = tuple(data.shape or ())  # None for a dataset with no dataspace
    channels_last = (image_shape[1], image_shape[2], image_shape[0])
    if len(shape) == 4 and tuple(shape[1:]) == channels_last:
        raise InputError(
            path,
            f"`data` has shape {shape}: channels last, but the CSAW schema is channels first {(None, *image_shape)}",
            "transpose the images with np.transpose(data, (0, 3, 1, 2)) before saving",
        )
    if len(shape) != 4 or tuple(shape[1:]) != image_shape:
        raise InputError(
            path,
            f"`data` has shape {shape}, expected (N, {', '.join(map(str, image_shape))})",
            "store images channels first at the network's input size (3 x 55 x 47 for CSAW)",
        )
    if shape[0] == 0:
        raise InputError(
            path,
            f"`data` holds no images (shape {shape}): every activation and accuracy measured on it would be NaN",
            "rebuild or re-download the file (`make data DATASET=...`); an image set needs at least one image",
        )
    lshape = tuple(label.shape or ())
    if len(lshape) != 1 or lshape[0] != shape[0]:
        raise InputError(
            path,
            f"`label` has shape {lshape} for {shape[0]} images",
            "store one integer class id per image, shape (N,)",
        )
    if orig is not None and tuple(orig.shape or ()) != (shape[0],):
        raise InputError(
            path,
            f"`orig_label` has shape {tuple(orig.shape or ())} for {shape[0]} images",
            "store the true identity of every image, shape (N,), or leave `orig_label` out",
        )
    return _Schema(data, label, orig)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    if labels.size and not np.all(np.isfinite(labels)):
        raise InputError(path, "`label` holds NaN or inf", "store integer class ids")
    as_int = labels.astype(np.int64)
    if labels.size and not np.array_equal(as_int, labels):
        raise InputError(path, "`label` holds non-integer values", "store integer class ids")
    if num_classes is not None and labels.size:
        lo, hi = int(as_int.min()), int(as_int.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(
                path,
                f"labels range over [{lo}, {hi}] but the model has {num_classes} classes (0..{num_classes - 1})",
                "use the data that belongs to this model, or a model with as many outputs as there are classes",
            )
    return as_int


def _check_pixels(path: Path, images: np.ndarray) -> None:
    if images.size == 0:
        return
    if not np.all(np.isfinite(images)):
        raise InputError(path, "`data` holds NaN or inf pixel values", "regenerate the file; pixels must be 0-255")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 255:
        raise InputError(
            path, f"pixel values range over [{lo:g}, {hi:g}], outside 0-255", "store raw 0-255 pixel values"
        )
    if hi <= 1.0:
        warnings.warn(
            f"{path}: pixel values are all within [0, 1]; the CSAW networks expect 0-255 "
            "(multiply by 255 if the images were normalised)",
            stacklevel=3,
        )


def _read(path: Path, dataset: h5py.Dataset, selection: slice | tuple = ()) -> np.ndarray:
    try:
        return dataset[selection]
    except OSError as exc:
        raise InputError(
            path,
            f"could not read the data ({exc}); the file is truncated or damaged",
            "delete it and run `make data` again",
        ) from None


def load_image_set(
    path: str | Path, num_classes: int | None = None, image_shape: tuple[int, int, int] = IMAGE_SHAPE_NCHW
) -> ImageSet:
    """Load and validate one HDF5 image set; return channels-last float32 images.

    Raises ``InputError`` naming the file for a missing or corrupt file, missing keys, links,
    external or virtual storage and non-numeric values where the schema has plain numeric
    datasets, a wrong image shape (channels-last data is recognised and reported as such), no
    images, NaN/inf pixels, pixels outside 0-255 and labels outside ``[0, num_classes)``.
    Warns for 0-1 pixels.
    """
    path = Path(path)
    with _open(path) as f:
        schema = _check_layout(path, f, image_shape)
        data = _read(path, schema.data)
        labels = _read(path, schema.label)
        orig = None if schema.orig_label is None else _read(path, schema.orig_label)
    images = np.ascontiguousarray(np.transpose(data, (0, 2, 3, 1)), dtype=np.float32)
    _check_pixels(path, images)
    labels = _check_labels(path, labels, num_classes)
    if orig is not None:
        orig = _check_labels(path, orig, num_classes)
    return ImageSet(images=images, labels=labels, path=path, orig_labels=orig)


def iter_image_batches(
    path: str | Path, batch_size: int, image_shape: tuple[int, int, int] = IMAGE_SHAPE_NCHW
) -> Iterator[np.ndarray]:
    """Yield channels-last float32 batches straight from the HDF5 file (validated as ``load_image_set`` does).

    For sets too large to hold in memory: only one batch of images is read at a time.
    """
    path = Path(path)
    with _open(path) as f:
        data = _check_layout(path, f, image_shape).data
        for start in range(0, data.shape[0], batch_size):
            batch = np.transpose(_read(path, data, slice(start, start + batch_size)), (0, 2, 3, 1))
            batch = batch.astype(np.float32)
            _check_pixels(path, batch)
            yield np.ascontiguousarray(batch)


def count_images(path: str | Path) -> int:
    """Number of images in an HDF5 set (validated as ``load_image_set`` does, at least one), without reading them."""
    path = Path(path)
    with _open(path) as f:
        return int(_check_layout(path, f, IMAGE_SHAPE_NCHW).data.shape[0])


def save_image_set(
    path: str | Path, images_nhwc: np.ndarray, labels: np.ndarray, orig_labels: np.ndarray | None = None
) -> Path:
    """Write images (given channels last) in the CSAW schema, atomically."""
    path = Path(path)
    images_nhwc = np.asarray(images_nhwc)
    if images_nhwc.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images_nhwc.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=np.transpose(images_nhwc, (0, 3, 1, 2)).astype(np.float32))
        f.create_dataset("label", data=np.asarray(labels, dtype=np.float32))
        if orig_labels is not None:
            f.create_dataset("orig_label", data=np.asarray(orig_labels, dtype=np.float32))
    return path


def check_paired(clean: ImageSet, poisoned: ImageSet) -> None:
    """Clean and triggered sets that must describe the same images must have the same size."""
    if len(clean) != len(poisoned):
        raise InputError(
            poisoned.path or "poisoned set",
            f"{len(poisoned)} triggered images but {len(clean)} clean ones in {clean.path}",
            "use the triggered set made from the same clean images (bd_valid.h5 with valid.h5, bd_test.h5 with "
            "test.h5)",
        )


#: A clean validation set needs at least this many classes: the defense chooses its pruned models by
#: their accuracy on it, and accuracy on one class only measures how often the model answers that class.
MIN_VALIDATION_CLASSES = 2


def check_clean_validation(image_set: ImageSet) -> None:
    """Refuse a clean validation set whose labels cover fewer than ``MIN_VALIDATION_CLASSES`` classes."""
    classes = np.unique(image_set.labels)
    if len(classes) >= MIN_VALIDATION_CLASSES:
        return
    what = "no images" if not classes.size else f"{len(image_set)} images of a single class ({int(classes[0])})"
    raise InputError(
        image_set.path or "clean validation set",
        f"the clean validation set holds {what}; the defense's clean accuracy on it, which chooses the pruned "
        f"models, would mean nothing",
        "use the clean validation set that comes with the BadNet's data, with images of many identities "
        "(at least two classes)",
    )


#: A single-target attack labels every triggered image with one class, a multi-target one with a
#: handful: labels beyond the ``MAX_ATTACK_TARGETS`` most common ones are not attack targets (an
#: all-to-all attack, one target per identity, would be reported too; the CSAW attacks are not).
MAX_ATTACK_TARGETS = 10
#: Share of a triggered set's images that may carry labels beyond those targets (room for a few
#: stray or mislabelled images) before the labels are reported as not looking like targets.
MAX_STRAY_LABEL_FRACTION = 0.10
#: Share of a triggered set's labels that may equal the images' true identities. A target equals
#: the truth only for images of the target's own identity (1 in 1283 on CSAW), so a majority means
#: the file holds true identities, against which an attack success rate measures nothing.
MAX_TRUE_LABEL_FRACTION = 0.5


def _label_doubts(triggered: ImageSet, paired_clean: ImageSet | None) -> list[str]:
    """Why ``triggered``'s labels do not look like attack targets (empty when they do)."""
    labels, n = triggered.labels, len(triggered)
    if n == 0:
        return []
    doubts = []
    counts = np.sort(np.unique(labels, return_counts=True)[1])[::-1]
    stray = int(n - counts[:MAX_ATTACK_TARGETS].sum())
    if stray > MAX_STRAY_LABEL_FRACTION * n:
        doubts.append(
            f"its {n} images carry {len(counts)} distinct labels, {stray} of them ({stray / n:.0%}) outside the "
            f"{MAX_ATTACK_TARGETS} most common, where a single-target attack has one label and a multi-target "
            f"attack a handful"
        )
    truths = [("its `orig_label` (the true identities)", triggered.orig_labels)]
    if paired_clean is not None:
        truths.append(
            (f"the labels of the clean images they were made from ({paired_clean.path})", paired_clean.labels)
        )
    for name, truth in truths:
        if truth is not None and len(truth) == n:
            same = float(np.mean(labels == truth))
            if same > MAX_TRUE_LABEL_FRACTION:
                doubts.append(f"{same:.0%} of its labels equal {name}")
    return doubts


def check_triggered_labels(triggered: ImageSet, paired_clean: ImageSet | None = None) -> None:
    """Warn (one message naming the file) when a triggered set's labels do not look like the attacker's targets.

    The attack success rate is the share of triggered images classified as their label, so it only
    means something when the label is the target the trigger sends faces to. The rules:
    more than ``MAX_STRAY_LABEL_FRACTION`` of the images labelled outside the ``MAX_ATTACK_TARGETS``
    most common labels, or more than ``MAX_TRUE_LABEL_FRACTION`` of the labels equal to the true
    identities, read from the set's ``orig_label`` if it has one and from ``paired_clean``, the
    clean set it was made from image for image in the same order, when the dataset has one (lab 3;
    their sizes are checked with ``check_paired``). It warns rather than refuses: only the
    attacker knows the targets, so this is a strong hint, not a proof.
    """
    if paired_clean is not None:
        check_paired(paired_clean, triggered)
    doubts = _label_doubts(triggered, paired_clean)
    if doubts:
        warnings.warn(
            f"{triggered.path or 'triggered set'}: its labels do not look like the attacker's target(s): "
            f"{'; '.join(doubts)}. The attack success rate measured on it will not mean anything. Check that "
            "`label` holds the class the trigger sends faces to, not their true identity (that belongs in "
            "`orig_label`), and that this is the triggered set of this BadNet",
            stacklevel=2,
        )
