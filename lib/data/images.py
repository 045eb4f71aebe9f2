"""Read an image file as a careful photo tool would: the network sees exactly the pixels the file holds, or nothing.

An image's format is told by its content, never its name: PNG, JPEG, BMP, TIFF or WebP; no other Pillow plugin
ever reads it (EPS/PS/PDF would start Ghostscript). Refused from the header, before decoding: more pixels than
4096x4096 (a face crop needs far fewer), several frames (animated PNG/WebP, multi-page TIFF, multi-picture JPEG),
more than 8 bits per channel or floating point. The EXIF orientation is applied, then the conversion to RGB (from
grayscale, palette, alpha, CMYK): float32 values 0-255 as in the CSAW data, of the network's size unless resizing
is asked for. Every problem is one ``InputError`` naming the file; names are printed safely in any locale.
"""

from __future__ import annotations

import contextlib
import re
import struct
import sys
import warnings
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, TiffImagePlugin, UnidentifiedImageError

from lib.core.errors import InputError

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
INPUT_FIX = f"pass {FORMATS_TEXT} images or HDF5 files in the CSAW schema"


def display_name(text: str) -> str:
    """``text`` as one line printable in any locale: tab and newline as ``\\t`` and ``\\n``, a byte of a file name
    that the file system encoding cannot decode as ``\\xNN``, other lone surrogates as ``\\udNNN``; valid names kept"""
    text = UNDECODABLE.sub(lambda m: f"\\x{ord(m[0]) - 0xDC00:02x}", text.replace("\t", "\\t").replace("\n", "\\n"))
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def say(log: TextIO, kind: str, what: str | Path, text: str) -> None:
    """One stderr line ``KIND: WHAT: TEXT``, escaped as the names on stdout: no name can break or crash it."""
    print(display_name(f"{kind}: {what}: {text}"), file=log)


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
        say(log, "note", path, f"EXIF orientation {orientation} applied: {ORIENTATIONS[orientation]}")
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
        say(log, "note", path, f"converted from {img.mode} to RGB{dropped}")
        img = img.convert("RGB")
    (height, width), (w, h) = size_hw, img.size
    if (h, w) != (height, width):
        if not resize:
            raise InputError(
                path,
                f"the image is {w}x{h} (width x height) but the network expects {width}x{height}",
                "pass --resize to resize it with bilinear interpolation",
            )
        say(log, "note", path, f"resized from {w}x{h} to {width}x{height} (bilinear)")
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)
