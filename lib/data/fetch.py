"""Getting bytes onto the disk for ``lib.data.download``: the network, the shared Drive cache, a full disk.

* ``Downloader`` is the only code that touches the network (gdown, requests), so tests replace it.
* ``cached_drive_folder``: a Drive folder several datasets share (the competition's four BadNets)
  is downloaded once into ``<cache>/drive/<folder id>`` (``lib.core.paths.drive_cache``) and
  hard-linked from there. Datasets may be prepared at the same time, so the folder is filled and
  read under a ``filelock.FileLock`` of its own.
* ``remove_leftovers``: the staging folders of a killed run (possibly gigabytes) are removed by
  the next run that owns them.
* ``disk_space``: a full disk or quota becomes one ``InputError`` that says what to free, instead
  of a network error or a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout
from tqdm import tqdm

from lib.core.errors import InputError

STAGING_SUFFIX = ".tmp"
_COMPLETE = ".complete"  # written last into a cache entry: a folder without it is a leftover
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Downloader(Protocol):
    """The network: both methods raise (any exception) or leave the destination missing on failure.

    ``lib.data.download.ensure_csaw`` turns a failure into one ``InputError`` that says what to do.
    """

    def fetch_url(self, url: str, dest: Path) -> None:
        """Write the content of ``url`` to the file ``dest``."""

    def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
        """Write the files of a public Google Drive folder (with its subfolders) under ``dest_dir``."""


class NetworkDownloader:
    """The real downloader: requests for plain URLs, gdown for Drive folders."""

    def __init__(self, progress: bool = True, timeout: float = 60.0) -> None:
        self.progress = progress
        self.timeout = timeout

    def fetch_url(self, url: str, dest: Path) -> None:
        import requests

        with requests.get(url, stream=True, timeout=self.timeout) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with (
                open(dest, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, disable=not self.progress) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))

    def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
        import gdown

        # gdown < 6.3 (Kaggle's and Colab's 5.2.2) takes no timeout: it would raise TypeError, read as a network
        # problem. Older versions also return None instead of raising when Drive refuses (quota, permissions).
        timeout = {"timeout": self.timeout} if "timeout" in inspect.signature(gdown.download_folder).parameters else {}
        files = gdown.download_folder(id=folder_id, output=str(dest_dir), quiet=not self.progress, **timeout)
        if not files:
            raise RuntimeError("gdown could not list or download the folder (no files returned)")


def tree_size(path: Path) -> int:
    """Bytes in a file, or in all files under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_full(exc: BaseException, folder: Path, doing: str, need: int | None = None) -> InputError | None:
    """One InputError if ``exc``, or what caused it, is a full disk or quota; None for any other error."""
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in _DISK_FULL):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    size = tqdm.format_sizeof(need, "B") if need else None
    return InputError(
        folder,
        f"{os.strerror(cause.errno).lower()} while {doing}{f', which needs {size}' if size else ''}; "
        "nothing half-written was kept",
        f"free {f'at least {size}' if size else 'space'} on the disk that holds {folder} (for example the results "
        "or data folders of datasets you no longer use: they are made or downloaded again when needed) and run again",
    )


@contextlib.contextmanager
def disk_space(folder: Path, doing: str, need: int | None = None) -> Iterator[None]:
    """Report a full disk while ``doing`` something that writes into ``folder`` as one InputError; others pass."""
    try:
        yield
    except OSError as exc:
        full = disk_full(exc, folder, doing, need)
        if full is None:
            raise
        raise full from None


def remove_leftovers(paths: Iterable[Path]) -> None:
    """Delete what a killed run left in staging, saying so in one line (it may free gigabytes)."""
    paths = sorted(paths)
    if paths:
        size = sum(tree_size(p) for p in paths)
        for path in paths:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        names = ", ".join(str(p) for p in paths)
        print(f"removed what an interrupted download left ({tqdm.format_sizeof(size, 'B')}): {names}", flush=True)


@contextlib.contextmanager
def _holding(cache: Path, folder_id: str, say: Callable[[str], None]) -> Iterator[Path]:
    """Own the cache entry of ``folder_id`` (its staging and its move into place) while the block runs.

    What a killed run left in staging beside the cache is removed here, and only here: under the
    lock, no other run can be staging that folder.
    """
    cache.mkdir(parents=True, exist_ok=True)
    lock = FileLock(cache / f"{folder_id}.lock")
    try:
        lock.acquire(blocking=False)
    except Timeout:
        say(f"waiting for another run that is filling {cache / folder_id}")
        lock.acquire()
    try:
        remove_leftovers(cache.parent.glob(f".{folder_id}.*{STAGING_SUFFIX}"))
        yield cache / folder_id
    finally:
        lock.release()


def cached_drive_folder(
    cache: Path, folder_id: str, dest: Path, download: Callable[[Path], None], say: Callable[[str], None]
) -> str:
    """Fill ``dest`` with the Drive folder ``folder_id`` from ``cache``, ``download``-ing it there first if need be.

    Files are hard-linked (copied across file systems): the folder takes disk space once. Returns
    ``'cache'`` when an earlier run had downloaded it, else ``'downloaded'``.
    """
    with _holding(cache, folder_id, say) as cached:
        status = "cache" if (cached / _COMPLETE).is_file() else "downloaded"
        if status == "downloaded":
            staging = Path(tempfile.mkdtemp(prefix=f".{folder_id}.", suffix=STAGING_SUFFIX, dir=cache.parent))
            try:
                download(staging)
                with disk_space(cache, f"putting the Drive folder into {cached}"):
                    (staging / _COMPLETE).touch()
                shutil.rmtree(cached, ignore_errors=True)
                os.replace(staging, cached)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            say(f"linking from {cached} (downloaded for another dataset)")
        for path in cached.rglob("*"):
            if path.is_file() and path.name != _COMPLETE:
                target = dest / path.relative_to(cached)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError as exc:
                    if exc.errno in _DISK_FULL:
                        raise
                    shutil.copyfile(path, target)
    return status


def evict(cache: Path, folder_id: str, say: Callable[[str], None]) -> None:
    """Drop the cache entry of ``folder_id`` (a file in it failed its check), so that the next run downloads it."""
    with _holding(cache, folder_id, say) as cached:
        shutil.rmtree(cached, ignore_errors=True)
