"""Data folders this process cannot write: Kaggle's ``/kaggle/input``, a read-only mount, another user's copy.

Such a folder is fine as long as it already holds a complete, verified dataset: the steps only read it, and
its lock (``lib.runs.locks``) lives in the cache folder instead. What would have to write it (a missing or
damaged file) stops with one error that names the folder and both ways out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lib.core.errors import InputError
from lib.core.paths import shown


def is_writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder`` (or, if it does not exist yet, in its nearest ancestor).

    ``os.access`` answers for read-only mounts (EROFS) as well as for permissions, root included.
    """
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def require_writable(folder: Path, needs: Sequence[str], dataset: str) -> None:
    """Stop with one clear error if ``folder`` is read-only but ``needs`` (relative names) must be written in it."""
    if not needs or is_writable(folder):
        return
    raise InputError(
        shown(folder),
        f"the folder is read-only and does not hold a complete, verified {dataset} dataset "
        f"({', '.join(needs)} would have to be written)",
        "add those files to it, or copy it to a writable folder and point the run there: notebook parameter "
        "data_dir=<folder> (make ... DATA_DIR=<folder>)",
    )
