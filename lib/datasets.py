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

from lib.atomic import atomic_path
from lib.errors import InputError

IMAGE_SHAPE_NCHW = (3, 55, 47)
IMAGE_SHAPE_NHWC = (55, 47, 3)


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


def _check_layout(path: Path, f: h5py.File, image_shape: tuple[int, int, int]) -> None:
    missing = [k for k in ("data", "label") if k not in f]
    if missing:
        raise InputError(
            path,
            f"missing HDF5 dataset(s) {missing}; found {sorted(f.keys())}",
            "the file must hold `data` (N, 3, 55, 47) and `label` (N,) as in the CSAW-HackML-2020 files",
        )
    shape = f["data"].shape
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
    lshape = f["label"].shape
    if len(lshape) != 1 or lshape[0] != shape[0]:
        raise InputError(
            path,
            f"`label` has shape {lshape} for {shape[0]} images",
            "store one integer class id per image, shape (N,)",
        )


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


def load_image_set(
    path: str | Path, num_classes: int | None = None, image_shape: tuple[int, int, int] = IMAGE_SHAPE_NCHW
) -> ImageSet:
    """Load and validate one HDF5 image set; return channels-last float32 images.

    Raises ``InputError`` naming the file for a missing or corrupt file, missing keys, a wrong
    image shape (channels-last data is recognised and reported as such), NaN/inf pixels,
    pixels outside 0-255 and labels outside ``[0, num_classes)``. Warns for 0-1 pixels.
    """
    path = Path(path)
    with _open(path) as f:
        _check_layout(path, f, image_shape)
        try:
            data = f["data"][()]
            labels = f["label"][()]
            orig = f["orig_label"][()] if "orig_label" in f else None
        except OSError as exc:
            raise InputError(
                path,
                f"could not read the data ({exc}); the file is truncated or damaged",
                "delete it and run `make data` again",
            ) from None
    images = np.ascontiguousarray(np.transpose(data, (0, 2, 3, 1)), dtype=np.float32)
    _check_pixels(path, images)
    labels = _check_labels(path, labels, num_classes)
    if orig is not None:
        orig = _check_labels(path, orig, num_classes)
    return ImageSet(images=images, labels=labels, path=path, orig_labels=orig)


def iter_image_batches(
    path: str | Path, batch_size: int, image_shape: tuple[int, int, int] = IMAGE_SHAPE_NCHW
) -> Iterator[np.ndarray]:
    """Yield channels-last float32 batches straight from the HDF5 file.

    For sets too large to hold in memory: only one batch of images is read at a time.
    """
    path = Path(path)
    with _open(path) as f:
        _check_layout(path, f, image_shape)
        data = f["data"]
        for start in range(0, data.shape[0], batch_size):
            batch = np.transpose(data[start : start + batch_size], (0, 2, 3, 1)).astype(np.float32)
            _check_pixels(path, batch)
            yield np.ascontiguousarray(batch)


def count_images(path: str | Path) -> int:
    """Number of images in an HDF5 set, without reading them."""
    path = Path(path)
    with _open(path) as f:
        _check_layout(path, f, IMAGE_SHAPE_NCHW)
        return int(f["data"].shape[0])


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
