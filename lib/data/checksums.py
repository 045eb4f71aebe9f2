"""The lock files ``checksums/<dataset>.sha256``: the SHA-256 of every file a dataset downloads.

Why: Drive files can be replaced or corrupted by their owner or by an interrupted transfer, and
nobody published their digests. The first successful download records them (commit the file; where
``checksums/`` is read-only they go to the cache folder, ``writable_lock_file``);
every later download or present file is checked against it, so every run of the pipeline sees
exactly the same bytes. The format is ``sha256sum``'s, so
``cd data/csaw-lab3 && sha256sum -c ../../checksums/csaw-lab3.sha256`` checks the files by hand.

A file the project writes itself (a demo's generated image sets) is pinned by what it holds instead
(``arrays_sha256``, under the name ``<relative path>:arrays``): the bytes of an HDF5 file depend on the
HDF5 library that wrote it, so one image set written by two h5py versions has two file digests, and two
numpy versions round some pixels to -0.0 and 0.0.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from lib.core.atomic import write_text
from lib.core.errors import InputError
from lib.core.paths import cache_root, shown
from lib.core.read_only import is_writable

_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (the image sets are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def arrays_key(relative_path: str) -> str:
    """The lock file's name for the digest of what ``relative_path`` holds (``arrays_sha256``), not of its bytes."""
    return f"{relative_path}:arrays"


def arrays_sha256(path: Path) -> str:
    """Hex SHA-256 of every array an HDF5 file holds: name, dtype, shape and little-endian values, by name.

    Equal for equal values whichever HDF5 library wrote the file (its file digest is not) and whichever numpy
    generated them: -0.0 and 0.0 count as one value (the network's arithmetic does not tell them apart).
    """
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        digest = hashlib.sha256()
        for name in sorted(names):
            values = np.ascontiguousarray(f[name][()])
            values = values.astype(values.dtype.newbyteorder("<"), copy=False)
            if values.dtype.kind == "f":
                values = values + values.dtype.type(0)  # -0.0 -> 0.0: numpy 2.4's clip keeps the sign, 2.0's not
            digest.update(f"{name}\0{values.dtype.str}\0{values.shape}\0".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def read_lock(lock_file: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum``-style file; empty if the file does not exist."""
    lock_file = Path(lock_file)
    if not lock_file.is_file():
        return {}
    digests: dict[str, str] = {}
    for number, line in enumerate(lock_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line.rstrip())
        if match is None:
            raise InputError(
                lock_file,
                f"line {number} is not `<64 hex digits>  <relative path>`: {line!r}",
                "fix or delete that line (a deleted line is recorded again from the next good download)",
            )
        digests[match.group(2)] = match.group(1).lower()
    return digests


def write_lock(lock_file: Path, digests: dict[str, str], order: Sequence[str]) -> None:
    """Rewrite the lock file atomically: the files of ``order`` in that order, then any others the user keeps."""
    names = [n for n in order if n in digests] + sorted(n for n in digests if n not in order)
    write_text(lock_file, "".join(f"{digests[n]}  {n}\n" for n in names))


def writable_lock_file(lock_file: Path) -> Path:
    """Where new digests are recorded: ``lock_file``, or where its folder is read-only, its copy in the cache."""
    if is_writable(lock_file.parent):  # written atomically: a temporary file beside it, then a rename
        return lock_file
    return cache_root() / "checksums" / lock_file.name


def recorded_line(recorded: Path, lock_file: Path, new: int) -> str:
    """What to tell the user after recording ``new`` digests in ``recorded``: how to keep them."""
    keep = (
        f"commit {shown(recorded)}" if recorded == lock_file else f"copy {recorded} to {shown(lock_file)} and commit it"
    )
    return (
        f"recorded the SHA-256 of {new} new file(s) in {shown(recorded)}: {keep}, so that every run checks these bytes"
    )
