"""The lock files ``checksums/<dataset>.sha256``: the SHA-256 of every file a dataset downloads.

Why: Drive files can be replaced or corrupted by their owner or by an interrupted transfer, and
nobody published their digests. The first successful download records them (commit the file);
every later download or present file is checked against it, so every run of the pipeline sees
exactly the same bytes. The format is ``sha256sum``'s, so
``cd data/csaw-lab3 && sha256sum -c ../../checksums/csaw-lab3.sha256`` checks the files by hand.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from lib.core.atomic import write_text
from lib.core.errors import InputError

_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (the image sets are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
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
