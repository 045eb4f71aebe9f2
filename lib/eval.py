"""Classify face images with a GoodNet G (or any BadNet): the competition's eval command.

Usage::

    python -m lib.eval --model MODEL IMAGE_OR_H5 [IMAGE_OR_H5 ...] [--batch-size N] [--resize]

``MODEL`` is either a GoodNet saved by ``lib.goodnet_model.save_goodnet`` (a ``.keras`` file; its
classes are 0..N, N = number of classes, meaning "poisoned") or any model that
``lib.models.load_model_file`` loads: a BadNet B or a pruned B' (full-model ``.h5``/``.keras``, or a
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

if __name__ == "__main__":  # before TensorFlow loads: keep its C++ log lines off the command's stderr
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import contextlib
import io
import logging
import re
import struct
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

import keras
import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

from lib.datasets import iter_image_batches
from lib.errors import InputError
from lib.goodnet_model import is_goodnet
from lib.models import load_model_file, predict_classes

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Pillow plugins tried, by content only: no other plugin ever reads an input (EPS/PS/PDF would start Ghostscript)
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
FORMATS_TEXT = "PNG, JPEG, BMP, TIFF or WebP"
# A face crop is about 47x55 (2,585 pixels); 4096x4096 is a whole 16-megapixel photo (48 MiB as RGB). The header's
# size is checked against it before decoding, so that a file of a few KB cannot make the command decode gigabytes.
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)  # what Pillow raises for a bad file
# EXIF orientation -> what ImageOps.exif_transpose does to show the image upright
ORIENTATIONS = {
    2: "flipped left-right",
    3: "rotated 180 degrees",
    4: "flipped top-bottom",
    5: "transposed (flipped about the main diagonal)",
    6: "rotated 90 degrees clockwise",
    7: "transversed (flipped about the other diagonal)",
    8: "rotated 90 degrees counter-clockwise",
}
UNDECODABLE = re.compile("[\udc80-\udcff]")  # how os.fsdecode keeps bytes the file system encoding cannot decode
MODEL_FIX = "pass --model a GoodNet saved by lib.goodnet_model.save_goodnet (.keras) or a BadNet (.h5/.keras)"
INPUT_FIX = f"pass {FORMATS_TEXT} images or HDF5 files in the CSAW schema"


def display_name(text: str) -> str:
    """``text`` as one line printable in any locale: tab and newline as ``\\t`` and ``\\n``, a byte of a file name
    that the file system encoding cannot decode as ``\\xNN``, other lone surrogates as ``\\udNNN``; valid names kept"""
    text = UNDECODABLE.sub(lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}", text.replace("\t", "\\t").replace("\n", "\\n"))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _say(log: TextIO, kind: str, what: str | Path, text: str) -> None:
    """One stderr line ``KIND: WHAT: TEXT``, escaped as the names on stdout: no name can break or crash it."""
    print(display_name(f"{kind}: {what}: {text}"), file=log)


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


def _open(path: Path) -> ImageFile.ImageFile:
    """The file opened by the plugin of the allowed format its content matches; no other plugin ever reads it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS, lower, is checked next
            return Image.open(path, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:  # Pillow refuses over twice its MAX_IMAGE_PIXELS before we see the size
        raise _too_large(path, f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        found = _signature_format(path)
        if found in ALLOWED_FORMATS:
            problem = f"not a readable image: a {found} file Pillow cannot parse (damaged, truncated or a rare variant)"
            raise InputError(path, problem, INPUT_FIX) from None
        content = f"its content is {found}, not" if found else "not a readable image: its content is none of"
        problem = f"{content} {FORMATS_TEXT} (recognised by content, not by name)"
        raise InputError(path, problem, "convert it to PNG or JPEG" if found else INPUT_FIX) from None
    except DECODE_ERRORS as exc:
        raise InputError(path, f"not a readable image ({exc.__class__.__name__}: {exc})", INPUT_FIX) from None


def _signature_format(path: Path) -> str | None:
    """The Pillow format whose signature the file starts with, by the plugins' byte checks alone (none parses it)."""
    Image.init()
    with path.open("rb") as f:
        prefix = f.read(16)  # what Image.open hands the same checks
    for name in Image.ID:
        accept = Image.OPEN[name][1]  # None: a plugin without a signature, which would claim any file
        with contextlib.suppress(SyntaxError, IndexError, TypeError, struct.error):  # as Image.open does
            if accept is not None and accept(prefix):
                return name
    return None


def _too_large(path: Path, size: str) -> InputError:
    limit = f"the {MAX_PIXELS:,} ({MAX_SIDE}x{MAX_SIDE}) this command decodes"
    return InputError(path, f"the image is {size}, more than {limit}", "crop the face from it and pass the crop")


def _check_header(img: ImageFile.ImageFile, path: Path) -> None:
    """Refuse, before decoding, what cannot be one 8-bit face: too many pixels, several frames, deep samples."""
    (w, h), frames = img.size, getattr(img, "n_frames", 1)
    if w * h > MAX_PIXELS:
        raise _too_large(path, f"{w}x{h} (width x height), {w * h:,} pixels")
    if frames > 1:
        problem = f"the {img.format} file holds {frames} frames (animation, pages or multi-picture), not one image"
        raise InputError(path, problem, "extract the frame you want into a file of its own, e.g. a PNG")
    bits = 8  # as Pillow reads JPEG, BMP and WebP; it reads 16-bit RGB(A) PNG/TIFF as 8-bit without a word
    if img.format == "TIFF":
        bits = int(np.max(img.tag_v2.get(TiffImagePlugin.BITSPERSAMPLE, 1)))  # 1: TIFF's default
    elif img.format == "PNG":
        with path.open("rb") as f:
            bits = f.read(25)[24]  # the bit depth in IHDR, which the PNG standard puts first
    if bits > 8 or img.mode.startswith(("I", "F")):  # Pillow's 16/32-bit integer and float modes (I;16 etc.)
        kind = "floating-point values" if img.mode == "F" else f"{bits}-bit per channel"
        problem = f"its pixels are {kind} but the network takes 8-bit values 0-255"
        raise InputError(path, problem, "save it as an 8-bit RGB PNG or JPEG")


def _decode(path: Path, log: TextIO) -> Image.Image:
    """The upright decoded image; what the header alone can refuse is refused before decoding."""
    with _open(path) as img:
        _check_header(img, path)
        try:
            orientation = img.getexif().get(ExifTags.Base.Orientation)
            upright = ImageOps.exif_transpose(img)  # decodes now, so that a truncated file fails here with its name
        except DECODE_ERRORS as exc:
            raise InputError(path, f"not a readable image ({exc.__class__.__name__}: {exc})", INPUT_FIX) from None
    if orientation in ORIENTATIONS:
        _say(log, "note", path, f"EXIF orientation {orientation} applied: {ORIENTATIONS[orientation]}")
    return upright


def read_image(
    path: str | Path, size_hw: tuple[int, int], resize: bool = False, log: TextIO | None = None
) -> np.ndarray:
    """Pixels (height, width, 3) float32 0-255 of one image file, at the network's size or an ``InputError``.

    Resizing changes the pixels the network sees, so it only happens when asked (``resize=True``).
    """
    path, log = Path(path), log or sys.stderr
    if not path.is_file():
        raise InputError(path, "not a file" if path.exists() else "file not found", INPUT_FIX)
    img = _decode(path, log)
    if img.mode != "RGB":  # CSAW faces are 8-bit RGB (deeper images are refused before decoding)
        dropped = " (transparency dropped)" if "A" in img.mode or "transparency" in img.info else ""
        _say(log, "note", path, f"converted from {img.mode} to RGB{dropped}")
        img = img.convert("RGB")
    (height, width), (w, h) = size_hw, img.size
    if (h, w) != (height, width):
        if not resize:
            raise InputError(
                path,
                f"the image is {w}x{h} (width x height) but the network expects {width}x{height}",
                "pass --resize to resize it with bilinear interpolation",
            )
        _say(log, "note", path, f"resized from {w}x{h} to {width}x{height} (bilinear)")
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


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
        _say(sys.stderr, "error", exc.what, f"{exc.problem}; {exc.fix}")
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
