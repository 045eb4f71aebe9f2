"""Classify face images with a GoodNet G (or any BadNet): the competition's eval command.

Usage::

    python -m lib.eval --model MODEL IMAGE_OR_H5 [IMAGE_OR_H5 ...] [--batch-size N] [--resize]

``MODEL`` is either a GoodNet saved by ``lib.goodnet_model.save_goodnet`` (a ``.keras`` file; its
classes are 0..N, N = number of classes, meaning "poisoned") or any model that
``lib.models.load_model_file`` loads: a BadNet B or a pruned B' (full-model ``.h5``/``.keras``, or a
CSAW weights-only ``.h5``; classes 0..N-1). ``Lambda`` layers are refused, as everywhere here.

Inputs are PNG/JPEG images (anything Pillow reads; converted to RGB, float32 pixel values 0-255
as in the CSAW data, no normalisation; at the network's size, 47x55 width x height on CSAW, or
resized with Pillow's bilinear filter when ``--resize`` is given) and/or HDF5 image sets in the
CSAW schema (``data`` (n, 3, 55, 47), ``label``; labels ignored, never resized). A file is read as
HDF5 when its name ends in ``.h5``, ``.hdf5`` or ``.he5`` or it starts with the HDF5 signature.

Output on stdout, one line per image, in input order, tab-separated, no header::

    NAME<TAB>CLASS              for a BadNet/B' (CLASS in 0..N-1)
    NAME<TAB>CLASS<TAB>STATUS   for a GoodNet (CLASS in 0..N; STATUS ``poisoned`` when CLASS == N, else ``clean``)

NAME is the input as given on the command line; an image of an HDF5 file is ``FILE[INDEX]``
(INDEX from 0). Tabs and newlines in names are written as ``\\t`` and ``\\n``. On stderr: ``note: ...``
lines (an image converted to RGB or resized), ``warning: ...`` lines (doubtful data, e.g. 0-1
pixels in an HDF5 set) and, for a problem, one line ``error: FILE: PROBLEM; FIX``.

Exit status: 0 success; 2 an input the command cannot use (model or image missing, unreadable,
not a model, wrong image size without ``--resize``, corrupt HDF5) or bad arguments; 1 an internal
error (a bug: it comes with a traceback). Nothing is printed on stdout unless every input was read.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before TensorFlow loads: keep its C++ log lines off the command's stderr
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

import keras
import numpy as np
from PIL import Image, UnidentifiedImageError

from lib.datasets import iter_image_batches
from lib.errors import InputError
from lib.goodnet_model import is_goodnet
from lib.models import load_model_file, predict_classes

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HIGH_DEPTH_MODES = ("I", "F")  # Pillow modes of 16/32-bit integer and float images ("I;16" etc. start with "I")
MODEL_FIX = "pass --model a GoodNet saved by lib.goodnet_model.save_goodnet (.keras) or a BadNet (.h5/.keras)"
INPUT_FIX = "pass PNG/JPEG images or HDF5 files in the CSAW schema"


class Prediction(NamedTuple):
    """One output line: the image's name, its class, and for a GoodNet whether it is flagged poisoned."""

    name: str
    label: int
    poisoned: bool | None  # None: the model is not a GoodNet, so it flags nothing

    def line(self) -> str:
        """The tab-separated stdout line (see the module docstring)."""
        fields = [self.name.replace("\t", "\\t").replace("\n", "\\n"), str(self.label)]
        if self.poisoned is not None:
            fields.append("poisoned" if self.poisoned else "clean")
        return "\t".join(fields)


@dataclass
class _Source:
    """One command-line input: decoded pixels of an image file, or an HDF5 set read batch by batch later."""

    name: str
    path: Path
    image: np.ndarray | None = None  # (height, width, 3) float32; None for an HDF5 set


def load_classifier(path: str | Path) -> tuple[keras.Model, bool]:
    """The model and whether it is a GoodNet; a missing or unusable file is an ``InputError``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file not found", MODEL_FIX)
    try:
        model = load_model_file(path)
    except InputError as exc:  # its fixes speak of the notebooks; here the fix is another --model
        raise InputError(exc.what, exc.problem, MODEL_FIX) from None
    shape = tuple(model.inputs[0].shape[1:]) if len(model.inputs) == 1 else ()
    if len(shape) != 3 or shape[-1] != 3 or None in shape:
        raise InputError(path, f"the model takes inputs of shape {shape}, not RGB images (height, width, 3)", MODEL_FIX)
    return model, is_goodnet(model)


def _is_hdf5(path: Path) -> bool:
    """HDF5 by name, or by content: a set saved under another name is still read as one."""
    if path.suffix.lower() in HDF5_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def _decode(path: Path) -> Image.Image:
    """The decoded image; Pillow's many failure types become one ``InputError``."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here with its name
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"not a readable image ({exc.__class__.__name__}: {exc})", INPUT_FIX) from None


def _to_rgb(img: Image.Image, path: Path, log: TextIO) -> Image.Image:
    """CSAW faces are 8-bit RGB: convert grayscale/palette/alpha images, refuse 16-bit and float ones."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith(HIGH_DEPTH_MODES):
        raise InputError(
            path, f"its pixels are {img.mode} (16-bit or floating point)", "save it as an 8-bit RGB PNG or JPEG"
        )
    dropped = " (transparency dropped)" if "A" in img.mode or "transparency" in img.info else ""
    print(f"note: {path}: converted from {img.mode} to RGB{dropped}", file=log)
    return img.convert("RGB")


def read_image(
    path: str | Path, size_hw: tuple[int, int], resize: bool = False, log: TextIO | None = None
) -> np.ndarray:
    """Pixels (height, width, 3) float32 0-255 of one image file, at the network's size or an ``InputError``.

    Resizing changes the pixels the network sees, so it only happens when asked (``resize=True``).
    """
    path, log = Path(path), log or sys.stderr
    if not path.is_file():
        raise InputError(path, "not a file" if path.exists() else "file not found", INPUT_FIX)
    img = _to_rgb(_decode(path), path, log)
    (height, width), (w, h) = size_hw, img.size
    if (h, w) != (height, width):
        if not resize:
            raise InputError(
                path,
                f"the image is {w}x{h} (width x height) but the network expects {width}x{height}",
                "pass --resize to resize it with bilinear interpolation",
            )
        print(f"note: {path}: resized from {w}x{h} to {width}x{height} (bilinear)", file=log)
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _check_hdf5(path: Path, shape_nchw: tuple[int, int, int]) -> None:
    """Open the set and read its first image, so that a bad file fails before anything is classified."""
    batches = iter_image_batches(path, 1, shape_nchw)
    try:
        next(batches, None)
    finally:
        batches.close()


def _sources(inputs: Iterable[str | Path], size_hw: tuple[int, int], resize: bool, log: TextIO) -> list[_Source]:
    """Read every image and check every HDF5 set up front: one bad input fails the run before any output."""
    sources = []
    for item in inputs:
        path = Path(item)
        if path.is_file() and _is_hdf5(path):
            _check_hdf5(path, (3, *size_hw))
            sources.append(_Source(str(item), path))
        else:
            sources.append(_Source(str(item), path, read_image(path, size_hw, resize, log)))
    return sources


def _blocks(
    sources: Sequence[_Source], shape_nchw: tuple[int, int, int], batch_size: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(names, images) per image file and per HDF5 chunk, in input order; HDF5 sets are never held whole."""
    for src in sources:
        if src.image is not None:
            yield [src.name], src.image[None]
            continue
        start = 0
        for batch in iter_image_batches(src.path, batch_size, shape_nchw):
            yield [f"{src.name}[{start + k}]" for k in range(len(batch))], batch
            start += len(batch)


def _rebatch(blocks: Iterable[tuple[list[str], np.ndarray]], batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Regroup into batches of exactly ``batch_size`` (the last may be smaller).

    So the network sees the same batches as ``predict(all_images, batch_size=batch_size)``: float32
    results on CPU can depend on a batch's composition, and G's classes must match the notebooks'.
    """
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for block_names, block in blocks:
        names += block_names
        arrays.append(block)
        while len(names) >= batch_size:
            images = np.concatenate(arrays)
            yield names[:batch_size], images[:batch_size]
            names, arrays = names[batch_size:], [images[batch_size:]]
    if names:
        yield names, np.concatenate(arrays)


def classify(
    model_path: str | Path,
    inputs: Sequence[str | Path],
    batch_size: int = 1024,
    resize: bool = False,
    log: TextIO | None = None,
) -> list[Prediction]:
    """G's (or a BadNet's) class of every image of ``inputs``, in order; notes go to ``log`` (stderr).

    Raises ``InputError`` for the first input (or model) it cannot use, before classifying anything.
    """
    log = log or sys.stderr
    if batch_size < 1:
        raise InputError(
            "--batch-size", f"must be at least 1, got {batch_size}", "pass a positive batch size, e.g. 1024"
        )
    model, goodnet = load_classifier(model_path)
    height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
    shape_nchw = (channels, height, width)
    poisoned_class = int(model.outputs[0].shape[-1]) - 1 if goodnet else None
    rows: list[Prediction] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sources = _sources(inputs, (height, width), resize, log)
        for names, images in _rebatch(_blocks(sources, shape_nchw, batch_size), batch_size):
            classes = predict_classes(model, images, batch_size=batch_size)
            rows += [_prediction(n, int(c), poisoned_class) for n, c in zip(names, classes, strict=True)]
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        print(f"warning: {message}", file=log)
    return rows


def _prediction(name: str, label: int, poisoned_class: int | None) -> Prediction:
    """A G answers N (its last output index) for "poisoned"; a plain model (``poisoned_class`` None) never flags."""
    return Prediction(name, label, None if poisoned_class is None else label == poisoned_class)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m lib.eval",
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(doc.split("\n\n")[3:]),  # model kinds, inputs, output format and exit codes
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="a GoodNet .keras file (classes 0..N, N = poisoned, third column poisoned/clean) "
        "or a BadNet/B' model file (classes 0..N-1, two columns)",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_H5", help="PNG/JPEG images and/or CSAW HDF5 sets")
    parser.add_argument("--batch-size", type=_positive_int, default=1024, help="images per forward pass (default 1024)")
    parser.add_argument(
        "--resize",
        action="store_true",
        help="resize images of another size to the network's (Pillow bilinear); default: refuse them",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 unusable input, see the module docstring)."""
    args = _parser().parse_args(argv)
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.setLevel(max(tf_logger.level, logging.ERROR))  # no retracing advice between the answers
    try:
        rows = classify(args.model, args.inputs, args.batch_size, args.resize)
    except InputError as exc:
        print(f"error: {exc.what}: {exc.problem}; {exc.fix}", file=sys.stderr)
        return EXIT_INPUT
    try:
        sys.stdout.write("".join(row.line() + "\n" for row in rows))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
