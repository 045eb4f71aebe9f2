"""Obtain the real CSAW inputs (lab 3 and the four competition BadNets), SHA-256 verified, never half-written.

Each file a dataset downloads is a ``RemoteFile`` record (``remote_files``): where it goes, where
it is published, its digest if one was published, and how to tell it is usable. One loop gets
the missing ones:

* the image sets from the dataset's Google Drive folder, with gdown, once for all of them (the
  competition's folder is shared by four datasets: it is downloaded once, kept in the cache
  folder (``lib.core.paths.drive_cache``) and its files hard-linked into each dataset's folder);
* the BadNet's weights (``bd_weights.h5``) from the public GitHub repository, or from a local
  mirror folder (``default_weights_mirror()``), which makes the real weights usable offline.
  ``bd_net.h5`` is then built from them as a full Keras model (``lib.network.models.save_model``).

Every file is checked against the dataset's lock file (``lib.data.checksums``), where the digests of
the first successful download are recorded; where ``checksums/`` is read-only, they go to the cache
folder, and a line says how to commit them.

A dataset's folder may be read-only (Kaggle's ``/kaggle/input``) if it is complete: present files are
only read and checked; one that must still be written stops with ``lib.core.read_only``'s error.

Why staging: everything is downloaded into a temporary folder inside the dataset's folder,
checked (digest, then HDF5 validation) and only then renamed into place, all files together. A
failed or corrupted download, or a full disk, therefore leaves the folder as it was; what a killed
run left in staging is removed by the next run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from lib.core.errors import InputError
from lib.core.paths import SHARED_CSAW_MODELS, checksum_file
from lib.core.read_only import require_writable
from lib.data.catalog import DatasetSpec
from lib.data.checksums import read_lock, recorded_line, sha256_of, writable_lock_file, write_lock
from lib.data.datasets import load_image_set
from lib.data.fetch import (
    STAGING_SUFFIX,
    Downloader,
    NetworkDownloader,
    cached_drive_folder,
    disk_full,
    disk_space,
    evict,
    remove_leftovers,
)
from lib.data.input_scale import with_input_scale
from lib.network.architecture import CSAW_NUM_CLASSES
from lib.network.models import load_model_file, save_model

#: The published weights, in every CSAW dataset's folder (``bd_net.h5`` is built from them).
WEIGHTS = "bd_weights.h5"
_STAGING_PREFIX = ".download-"


@dataclass(frozen=True)
class RemoteFile:
    """One file a dataset downloads: where it goes, where it is published, how it is checked."""

    path: str  # relative to the dataset's folder
    url: str  # where it is published (the file, or the Drive folder that holds it): where to get it by hand
    validate: Callable[[Path], object]  # raises InputError unless the file is usable
    sha256: str | None = None  # the published digest; None: the lock file's, recorded on first download
    drive_folder_id: str | None = None  # found in this Drive folder (fetched once for all its files), not at url
    mirror_name: str | None = None  # its name in a local mirror folder, copied from there when it matches
    optional: bool = False  # not in every copy of the published data: may stay absent


def _validate_image_set(path: Path) -> None:
    load_image_set(path, num_classes=CSAW_NUM_CLASSES)


def remote_files(spec: DatasetSpec) -> list[RemoteFile]:
    """The files ``spec`` downloads, in lock-file order: the weights, then the image sets."""
    source = spec.source
    if source is None:
        raise ValueError(f"{spec.name} is not downloaded (it has no CSAW source)")
    optional = spec.optional_files()
    weights = RemoteFile(
        WEIGHTS, source.weights_url, load_model_file, sha256=source.weights_sha256, mirror_name=source.mirror_name
    )
    drive_url, drive_id = source.drive_folder_url, source.drive_folder_id
    images = [
        RemoteFile(rel, drive_url, _validate_image_set, drive_folder_id=drive_id, optional=rel in optional)
        for rel in spec.image_files()
    ]
    return [weights, *images]


def default_weights_mirror() -> Path | None:
    """``shared/csaw-models`` beside the project, if it exists: the real weights without network."""
    return SHARED_CSAW_MODELS if SHARED_CSAW_MODELS.is_dir() else None


@dataclass
class _Entry:
    """One file of the summary: where it is, its digest, how it got there."""

    path: Path
    sha256: str
    status: str  # 'downloaded' | 'mirror' | 'cache' | 'present' | 'built' | 'not published'
    source: str

    def as_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "status": self.status, "source": self.source}


@dataclass
class _Job:
    """What one call of ``ensure_csaw`` works with: the dataset, its folder, its lock, its tools."""

    spec: DatasetSpec
    root: Path
    lock_file: Path
    expected: dict[str, str]
    downloader: Downloader
    mirror: Path | None
    drive_cache: Path | None
    progress: bool
    missing: list[RemoteFile] = field(default_factory=list)
    #: The Drive folders fetched by this call: folder id -> (where, status).
    drive_folders: dict[str, tuple[Path, str]] = field(default_factory=dict)

    def say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def manual_fix(self, files: list[RemoteFile]) -> str:
        places = ", ".join(str(self.root / f.path) for f in files)
        return (
            "check your connection and run again (Google Drive also refuses for a while after too many downloads: "
            f"wait and retry), or download by hand from {files[0].url} and place the file(s) at {places}"
        )

    def other_bytes_fix(self, f: RemoteFile, expected: str, actual: str) -> str:
        """How to make the pipeline accept different bytes: unpin a recorded digest, or override a published one."""
        if f.sha256 == expected:
            return f"write the line `{actual}  {f.path}` into {self.lock_file} (the file is then not the published one)"
        return f"remove the line for {f.path} from {self.lock_file}"


def _check_present(job: _Job, f: RemoteFile) -> _Entry:
    """A file already in place: keep it if it matches the lock; validate it if nothing is recorded."""
    target, expected = job.root / f.path, job.expected.get(f.path)
    actual = sha256_of(target)
    if expected is None:
        f.validate(target)  # raises InputError naming the file if it is corrupt
    elif actual != expected:
        raise InputError(
            target,
            f"its SHA-256 is {actual}, but {expected} is expected (lock file {job.lock_file}); "
            "the file is damaged, truncated or a different version",
            f"delete it so that it is downloaded again; or, if you replaced it on purpose, "
            f"{job.other_bytes_fix(f, expected, actual)}",
        )
    return _Entry(target, actual, "present", str(target))


def _call_downloader(job: _Job, action: Callable[[], None], files: list[RemoteFile], what: str, into: Path) -> None:
    """Run one download into the folder ``into``; any failure (gdown, requests, a full disk) becomes one InputError."""
    try:
        action()
    except InputError:
        raise
    except Exception as exc:  # gdown/requests raise many types: quota, permissions, DNS, timeouts
        full = disk_full(exc, into, f"downloading {what}")
        if full is not None:
            raise full from None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(
            files[0].url, f"could not download {what} ({exc.__class__.__name__}: {detail})", job.manual_fix(files)
        ) from None


def _accept(job: _Job, f: RemoteFile, tmp: Path, source: str) -> str:
    """Check a staged file: digest against the lock (if recorded), then its validator. Returns the digest."""
    actual, expected = sha256_of(tmp), job.expected.get(f.path)
    if expected is not None and actual != expected:
        raise InputError(
            source,
            f"the downloaded {f.path} has SHA-256 {actual}, but {expected} is expected (lock file {job.lock_file}); "
            "nothing was saved",
            "run again (an interrupted transfer, proxy or captive portal alters downloads); if the file was changed "
            f"upstream on purpose, {job.other_bytes_fix(f, expected, actual)} and run again",
        )
    try:
        f.validate(tmp)
    except InputError as exc:
        raise InputError(
            source, f"the downloaded {f.path} is not usable ({exc.problem}); nothing was saved", job.manual_fix([f])
        ) from None
    return actual


def _find_in_folder(folder: Path, f: RemoteFile, fix: str) -> Path | None:
    """The Drive folder's layout varies (``data/cl/valid.h5``, ``cl/valid.h5``, flat): find by name.

    Several files of that name (the competition has two ``sunglasses_poisoned_data.h5``) are told
    apart by the rest of the path, then by depth (the least nested). None if there is none.
    """
    found = sorted(p for p in folder.rglob(Path(f.path).name) if p.is_file())
    if len(found) > 1:
        matching = [p for p in found if p.relative_to(folder).as_posix().endswith(f.path)] or found
        depth = min(len(p.relative_to(folder).parts) for p in matching)
        found = [p for p in matching if len(p.relative_to(folder).parts) == depth]
    if len(found) > 1:
        listing = ", ".join(sorted(p.relative_to(folder).as_posix() for p in found))
        raise InputError(f.url, f"the Drive folder holds several files for {f.path}: {listing}", fix)
    return found[0] if found else None


def _drive_folder(job: _Job, folder_id: str, staging: Path) -> tuple[Path, str]:
    """The Drive folder's files under ``staging`` and their status, fetched once per call (or linked from the cache)."""
    if folder_id not in job.drive_folders:
        folder = staging / "drive" / folder_id
        folder.mkdir(parents=True)
        wanted = [f for f in job.missing if f.drive_folder_id == folder_id]
        names = ", ".join(f.path for f in wanted)

        def download(dest: Path) -> None:
            job.say(f"{names}: downloading the Drive folder {wanted[0].url}")
            _call_downloader(
                job,
                partial(job.downloader.fetch_drive_folder, folder_id, dest),
                wanted,
                f"the {job.spec.name} data",
                job.drive_cache or job.root,
            )

        if job.drive_cache is None:
            download(folder)
            status = "downloaded"
        else:

            def say(message: str) -> None:
                job.say(f"{names}: {message}")

            status = cached_drive_folder(job.drive_cache, folder_id, folder, download, say)
        job.drive_folders[folder_id] = folder, status
    return job.drive_folders[folder_id]


def _stage(job: _Job, f: RemoteFile, staging: Path) -> tuple[Path, str, str] | None:
    """Get ``f`` into ``staging``: from the mirror when it holds the right file, else from where it is published.

    Returns (the staged file, its status, where it came from); None for an optional file the Drive folder lacks.
    """
    expected = job.expected.get(f.path)
    mirrored = job.mirror / f.mirror_name if job.mirror is not None and f.mirror_name else None
    tmp = staging / "files" / f.path
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if mirrored is not None and mirrored.is_file():
        if expected is None or sha256_of(mirrored) == expected:
            job.say(f"{f.path}: copying from {mirrored}")
            with disk_space(job.root, f"copying {f.path} from {mirrored}", mirrored.stat().st_size):
                shutil.copyfile(mirrored, tmp)
            return tmp, "mirror", str(mirrored)
        warnings.warn(f"{mirrored}: SHA-256 differs from the expected {expected}; downloading {f.url}", stacklevel=4)
    if f.drive_folder_id is None:
        job.say(f"{f.path}: downloading {f.url}")
        _call_downloader(job, lambda: job.downloader.fetch_url(f.url, tmp), [f], f.path, job.root)
        if not tmp.is_file():
            raise InputError(f.url, f"the download of {f.path} produced no file", job.manual_fix([f]))
        return tmp, "downloaded", f.url
    folder, status = _drive_folder(job, f.drive_folder_id, staging)
    found = _find_in_folder(folder, f, job.manual_fix([f]))
    if found is None and f.optional:
        job.say(f"{f.path}: not in the Drive folder (not published for every copy of the data): skipped")
        return None
    if found is None:
        listing = ", ".join(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))
        raise InputError(
            f.url,
            f"the Drive folder holds no file named {Path(f.path).name} for {f.path} (it holds: {listing or 'nothing'})",
            job.manual_fix([f]),
        )
    return found, status, f.url


def _obtain_missing(job: _Job) -> dict[str, _Entry]:
    """Stage and verify every missing file, then move them all into place; on failure, leave nothing."""
    root = job.root
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, suffix=STAGING_SUFFIX, dir=root))
    try:
        staged: dict[str, tuple[Path, _Entry]] = {}
        for f in job.missing:
            got = _stage(job, f, staging)
            if got is None:
                continue
            tmp, status, source = got
            try:
                staged[f.path] = tmp, _Entry(root / f.path, _accept(job, f, tmp, source), status, source)
            except InputError:
                if job.drive_cache is not None and f.drive_folder_id is not None:
                    evict(job.drive_cache, f.drive_folder_id, job.say)  # "run again" must download it again
                raise
        for tmp, entry in staged.values():
            entry.path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, entry.path)
        return {rel: entry for rel, (_, entry) in staged.items()}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_root and not any(root.iterdir()):
            root.rmdir()


def _check_badnet(target: Path) -> _Entry:
    """A ``bd_net.h5`` already there is used as it is, provided it loads."""
    try:
        load_model_file(target)
    except InputError as exc:
        raise InputError(
            target, f"this model file does not load ({exc.problem})", f"delete it so that it is rebuilt from {WEIGHTS}"
        ) from None
    return _Entry(target, sha256_of(target), "present", str(target))


def _build_badnet(job: _Job) -> _Entry:
    """``bd_net.h5`` as a full Keras model that takes raw 0-255 pixels, its input scale built in.

    So later steps need not know the architecture, and ``python -m lib.eval`` on it is right as is.
    """
    target, weights = job.root / job.spec.badnet, job.root / WEIGHTS
    job.say(f"{job.spec.badnet}: building the full model from {weights} (input: {job.spec.input_scale.description})")
    save_model(with_input_scale(load_model_file(weights), job.spec.input_scale, weights), target)
    return _Entry(target, sha256_of(target), "built", str(weights))


def ensure_csaw(
    spec: DatasetSpec,
    root: Path,
    lock_file: Path | None = None,
    weights_mirror: Path | None = None,
    downloader: Downloader | None = None,
    progress: bool = True,
    drive_cache: Path | None = None,
) -> dict[str, dict]:
    """Make ``root`` (normally ``data/<dataset>``) hold the dataset's files, every file verified.

    ``root`` must belong to this call (the pipeline holds a lock per dataset): what a killed run
    left in staging there is removed first, in one printed line. Present files are checked then
    (digest against ``lock_file``, by default ``checksums/<dataset>.sha256``, or validated and
    recorded when no digest is known), so a damaged file is reported before anything is
    downloaded. Missing files are fetched (a file of a local ``weights_mirror`` when it holds it
    with the right digest; a Drive folder shared by several datasets from ``drive_cache`` when
    an earlier dataset downloaded it, under a lock of its own), checked and moved into place
    together. New digests are written to ``lock_file``. A ``bd_net.h5`` that loads is kept as it
    is; otherwise it is built from ``bd_weights.h5``. A file the dataset marks optional (poisoned
    data not every copy of the Drive folder holds) never triggers a download by itself and may
    stay absent.

    Returns ``{relative path: {"path", "sha256", "status", "source"}}`` with status
    ``'downloaded'``, ``'mirror'``, ``'cache'``, ``'present'``, ``'not published'`` (an optional
    file that is absent) or (for ``bd_net.h5``) ``'built'``. Raises ``InputError`` naming the
    file or URL and what to do for every failure, a full disk included.
    """
    files = remote_files(spec)
    root = Path(root)
    if root.is_dir():
        remove_leftovers(root.glob(f"{_STAGING_PREFIX}*{STAGING_SUFFIX}"))
    lock_file = Path(lock_file) if lock_file is not None else checksum_file(spec.name)
    recorded = writable_lock_file(lock_file)
    lock = {**read_lock(recorded), **read_lock(lock_file)}
    # The lock wins over a published digest: the user may knowingly pin other bytes.
    expected = {**{f.path: f.sha256 for f in files if f.sha256}, **lock}
    shared_cache = drive_cache if spec.source.shared_drive_folder else None
    downloader = downloader or NetworkDownloader(progress)
    job = _Job(spec, root, lock_file, expected, downloader, weights_mirror, shared_cache, progress)
    entries = {f.path: _check_present(job, f) for f in files if (root / f.path).is_file()}
    job.missing = [f for f in files if f.path not in entries]
    badnet = root / spec.badnet
    # A broken bd_net.h5 is reported before anything is downloaded.
    badnet_entry = _check_badnet(badnet) if badnet.is_file() else None
    must_write = [f.path for f in job.missing if not f.optional] + ([] if badnet_entry else [spec.badnet])
    require_writable(root, must_write, spec.name)
    with disk_space(root, f"writing the {spec.name} files"):
        if any(not f.optional for f in job.missing):  # optional files ride along with a download, never start one
            entries.update(_obtain_missing(job))
        updated = {**lock, **{rel: entry.sha256 for rel, entry in entries.items()}}
        if updated != lock:
            with disk_space(recorded.parent, f"writing the lock file {recorded}"):
                write_lock(recorded, updated, order=[f.path for f in files])
            job.say(recorded_line(recorded, lock_file, len(updated) - len(lock)))
        entries[spec.badnet] = badnet_entry or _build_badnet(job)
    for f in files:
        entries.setdefault(f.path, _Entry(root / f.path, "", "not published", f.url))
    return {rel: entries[rel].as_dict() for rel in [*(f.path for f in files), spec.badnet]}
