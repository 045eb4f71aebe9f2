"""Classify face images with a GoodNet G (or any BadNet): the competition's eval command.

Usage::

    python -m lib.eval --model MODEL IMAGE_OR_H5 [IMAGE_OR_H5 ...] [--batch-size N] [--resize]

``MODEL`` is either a GoodNet saved by ``lib.defense.goodnet_model.save_goodnet`` (a ``.keras`` file; its
classes are 0..N, N = number of classes, meaning "poisoned") or any model that
``lib.network.models.load_model_file`` loads: a BadNet B or a pruned B' (full-model ``.h5``/``.keras``, or a
CSAW weights-only ``.h5``; classes 0..N-1). ``Lambda`` layers are refused, as everywhere here.

Inputs are images and/or HDF5 image sets in the CSAW schema (``data`` (n, 3, 55, 47), ``label``; labels ignored,
never resized), read as HDF5 when named ``*.h5``/``*.hdf5``/``*.he5`` or starting with the HDF5 signature.

An image is read as a careful photo tool would. Its format is told by its content, never its name: PNG, JPEG, BMP,
TIFF or WebP; no other Pillow plugin ever reads it (EPS/PS/PDF would start Ghostscript). Refused from the header,
before decoding: more pixels than 4096x4096 (a face crop needs far fewer), several frames (animated PNG/WebP,
multi-page TIFF, multi-picture JPEG: extract the frame you want), more than 8 bits per channel or floating point.
The EXIF orientation is applied, then the conversion to RGB (from grayscale, palette, alpha, CMYK): float32 values
0-255 as in the CSAW data, not normalised, of the network's size (47x55 on CSAW) unless ``--resize`` (bilinear).

Output on stdout, one line per image, in input order, tab-separated, no header::

    NAME<TAB>CLASS              for a BadNet/B' (CLASS in 0..N-1)
    NAME<TAB>CLASS<TAB>STATUS   for a GoodNet (CLASS in 0..N; STATUS ``poisoned`` when CLASS == N, else ``clean``)

NAME is the input as given on the command line; an image of an HDF5 file is ``FILE[INDEX]`` (INDEX from 0). In
names, on stdout and stderr alike, tabs and newlines are written as ``\\t`` and ``\\n``, each byte that the file
system's encoding cannot decode (a non-UTF-8 name) as ``\\xNN``, and a character that the output's encoding lacks as
Python's backslashreplace does (``\\xNN``, ``\\uNNNN``). On stderr: ``note: ...`` lines (an EXIF orientation
applied, an image converted to RGB or resized), ``warning: ...`` lines (doubtful data, e.g. 0-1 pixels in an HDF5
set) and, for a problem, one line ``error: FILE: PROBLEM; FIX``.

Exit status: 0 success; 2 an input the command cannot use (model or image missing, unreadable,
not a model, refused as above, wrong image size without ``--resize``, corrupt HDF5) or bad arguments; 1 an
internal error (a bug: it comes with a traceback). Nothing is printed on stdout unless every input was read.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # stderr is for the command's notes: TensorFlow loads without its start-up lines
    from lib.core.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()

import argparse
import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

import keras
import numpy as np

from lib.core.errors import InputError
from lib.data.catalog import InputScale
from lib.data.datasets import iter_image_batches
from lib.data.images import FORMATS_TEXT, display_name, read_image, say
from lib.data.input_scale import with_input_scale
from lib.defense.goodnet_model import is_goodnet
from lib.network.models import BATCH_SIZE, is_weights_only, load_model_file, predict_classes

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MODEL_FIX = "pass --model a GoodNet saved by lib.defense.goodnet_model.save_goodnet (.keras) or a BadNet (.h5/.keras)"


class Prediction(NamedTuple):
    """One output line: the image's name, its class, and for a GoodNet whether it is flagged poisoned."""

    name: str
    label: int
    poisoned: bool | None  # None: the model is not a GoodNet, so it flags nothing

    def line(self) -> str:
        """The tab-separated stdout line (see the module docstring)."""
        fields = [display_name(self.name), str(self.label)]
        if self.poisoned is not None:
            fields.append("poisoned" if self.poisoned else "clean")
        return "\t".join(fields)


@dataclass
class _Source:
    """One command-line input: decoded pixels of an image file, or an HDF5 set read batch by batch later."""

    name: str
    path: Path
    image: np.ndarray | None = None  # (height, width, 3) float32; None for an HDF5 set


def load_classifier(
    path: str | Path, input_scale: InputScale | None = None, log: TextIO | None = None
) -> tuple[keras.Model, bool]:
    """The model, fed raw 0-255 pixels as it expects them, and whether it is a GoodNet.

    A model saved by this project carries its input scale (``lib.data.input_scale``); a bare weights file says
    nothing, so raw pixels are assumed (the lab-3 BadNet's) and a note says so, unless ``input_scale`` is
    given. A missing or unusable file is an ``InputError``.
    """
    path, log = Path(path), log or sys.stderr
    if not path.is_file():
        raise InputError(path, "model file not found", MODEL_FIX)
    try:
        model = load_model_file(path)
        if input_scale is not None:
            model = with_input_scale(model, input_scale, path)
    except InputError as exc:  # its fixes speak of the notebooks; here the fix is another --model
        raise InputError(exc.what, exc.problem, MODEL_FIX) from None
    if input_scale is None and is_weights_only(path):
        say(
            log,
            "note",
            path,
            f"a weights file says nothing of its input scale: feeding {InputScale.RAW.description} pixels (the "
            f"lab-3 BadNet's); the competition BadNets' weights take x/255: pass --input-scale x/255",
        )
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


def _check_hdf5(path: Path, shape_nchw: tuple[int, int, int]) -> None:
    """Open the set and read its first image, so that a bad file fails before anything is classified."""
    with contextlib.closing(iter_image_batches(path, 1, shape_nchw)) as batches:
        next(batches, None)


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
    batch_size: int = BATCH_SIZE,
    resize: bool = False,
    log: TextIO | None = None,
    input_scale: InputScale | None = None,
) -> list[Prediction]:
    """G's (or a BadNet's) class of every image of ``inputs``, in order; notes go to ``log`` (stderr).

    Raises ``InputError`` for the first input (or model) it cannot use, before classifying anything.
    """
    log = log or sys.stderr
    if batch_size < 1:
        raise InputError(
            "--batch-size", f"must be at least 1, got {batch_size}", f"pass a positive batch size, e.g. {BATCH_SIZE}"
        )
    model, goodnet = load_classifier(model_path, input_scale, log)
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
        print(display_name(f"warning: {message}"), file=log)
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
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_H5", help=f"{FORMATS_TEXT} images and/or CSAW HDF5 sets")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=BATCH_SIZE, help=f"images per forward pass (default {BATCH_SIZE})"
    )
    parser.add_argument(
        "--input-scale",
        type=InputScale,
        choices=list(InputScale),
        help="for a bare weights file: how its network sees pixels (models saved by this project carry it)",
    )
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
        rows = classify(args.model, args.inputs, args.batch_size, args.resize, input_scale=args.input_scale)
    except InputError as exc:
        say(sys.stderr, "error", exc.what, f"{exc.problem}; {exc.fix}")
        return EXIT_INPUT
    if isinstance(sys.stdout, io.TextIOWrapper):  # a name this locale cannot encode is escaped, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        sys.stdout.write("".join(row.line() + "\n" for row in rows))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
