"""Obtain the real CSAW inputs (lab 3 and the four competition BadNets), SHA-256 verified, never half-written.

Where the files come from (``lib.catalog`` lists them for each dataset):

* the image sets from the lab's or the competition's Google Drive folder, with gdown (the
  competition's folder is shared by four datasets: it is downloaded once, kept in
  ``data/.drive-cache/`` and its files hard-linked into each dataset's folder);
* the BadNet's weights (``bd_weights.h5``) from the public GitHub repository, or from a local
  mirror folder (``default_weights_mirror()``), which makes the real weights usable offline.
  ``bd_net.h5`` is then built from them as a full Keras model (``lib.models.save_model``).

Why a lock file: Drive files can be replaced or corrupted by their owner or by an interrupted
transfer, and nobody published their digests. The first successful download records them in
``checksums/<dataset>.sha256`` (commit it); every later download or present file is checked
against it, so every run of the pipeline sees exactly the same bytes. The weights' digest is known
in advance and pinned here as well. The lock file has the ``sha256sum`` format, so
``cd data/csaw-lab3 && sha256sum -c ../../checksums/csaw-lab3.sha256`` checks the files by hand.

Why staging: everything is downloaded into a temporary folder inside ``root``, checked (digest,
then HDF5 validation) and only then renamed into place, all files together. A failed or
corrupted download therefore leaves ``root`` as it was, and no later step can mistake a
truncated file for a good one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lib.architecture import CSAW_NUM_CLASSES
from lib.atomic import write_text
from lib.catalog import DATASETS, DatasetSpec
from lib.datasets import load_image_set
from lib.errors import InputError
from lib.models import load_model_file, save_model
from lib.paths import PROJECT_ROOT

WEIGHTS = "bd_weights.h5"
BADNET = "bd_net.h5"
LAB3 = DATASETS["csaw-lab3"]
#: The lab-3 names, kept for readers and tests of the lab-3 path.
DRIVE_FOLDER_ID = LAB3.source.drive_folder_id
DRIVE_FOLDER_URL = LAB3.source.drive_folder_url
WEIGHTS_URL = LAB3.source.weights_url
DRIVE_FILES = tuple(LAB3.image_files())
#: Digests known before any download (SHA256SUMS of the shared CSAW weight files).
PINNED_SHA256 = {WEIGHTS: LAB3.source.weights_sha256}
DEFAULT_LOCK_FILE = PROJECT_ROOT / "checksums" / "csaw-lab3.sha256"
#: Where a Drive folder shared by several datasets is kept once (under the data root).
DRIVE_CACHE = ".drive-cache"


def default_lock_file(dataset: str) -> Path:
    """``checksums/<dataset>.sha256``: the digests of the dataset's files, recorded on first download."""
    return PROJECT_ROOT / "checksums" / f"{dataset}.sha256"


_LOCK_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class Downloader(Protocol):
    """The only code that touches the network, so that tests can replace it.

    Both methods raise (any exception) or leave the destination missing on failure;
    ``ensure_csaw_lab3`` turns that into one ``InputError`` that says what to do.
    """

    def fetch_url(self, url: str, dest: Path) -> None:
        """Write the content of ``url`` to the file ``dest``."""

    def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
        """Write the files of a public Google Drive folder (with its subfolders) under ``dest_dir``."""


class NetworkDownloader:
    """The real downloader: requests for plain URLs, gdown for the Drive folder."""

    def __init__(self, progress: bool = True, timeout: float = 60.0) -> None:
        self.progress = progress
        self.timeout = timeout

    def fetch_url(self, url: str, dest: Path) -> None:
        import requests
        from tqdm.auto import tqdm

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

        # Older gdown versions return None instead of raising when Drive refuses (quota, permissions).
        files = gdown.download_folder(id=folder_id, output=str(dest_dir), quiet=not self.progress, timeout=self.timeout)
        if not files:
            raise RuntimeError("gdown could not list or download the folder (no files returned)")


def default_weights_mirror() -> Path | None:
    """``shared/csaw-models`` beside the project, if it exists: the real weights without network."""
    mirror = PROJECT_ROOT.parent / "shared" / "csaw-models"
    return mirror if mirror.is_dir() else None


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
        match = _LOCK_LINE.match(line.rstrip())
        if match is None:
            raise InputError(
                lock_file,
                f"line {number} is not `<64 hex digits>  <relative path>`: {line!r}",
                "fix or delete that line (a deleted line is recorded again from the next good download)",
            )
        digests[match.group(2)] = match.group(1).lower()
    return digests


def write_lock(lock_file: Path, digests: dict[str, str], order: list[str] | None = None) -> None:
    """Rewrite the lock file atomically: known files in layout order, then any others the user keeps."""
    order = order or [WEIGHTS, *DRIVE_FILES]
    names = [n for n in order if n in digests] + sorted(n for n in digests if n not in order)
    write_text(lock_file, "".join(f"{digests[n]}  {n}\n" for n in names))


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
    downloader: Downloader | None
    mirror: Path | None
    drive_cache: Path | None
    progress: bool

    @property
    def weights_url(self) -> str:
        return self.spec.source.weights_url

    @property
    def drive_url(self) -> str:
        return self.spec.source.drive_folder_url

    def source_of(self, rel: str) -> str:
        return self.weights_url if rel == WEIGHTS else self.drive_url

    def say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def manual_fix(self, rels: list[str]) -> str:
        places = ", ".join(str(self.root / r) for r in rels)
        return (
            "check your connection and run again (Google Drive also refuses for a while after too many downloads: "
            f"wait and retry), or download by hand from {self.source_of(rels[0])} and place the file(s) at {places}"
        )

    def other_bytes_fix(self, rel: str, expected: str, actual: str) -> str:
        """How to make the pipeline accept different bytes: unpin a recorded digest, or override a pinned one."""
        if rel == WEIGHTS and self.spec.source.weights_sha256 == expected:
            return f"write the line `{actual}  {rel}` into {self.lock_file} (the file is then not the published one)"
        return f"remove the line for {rel} from {self.lock_file}"

    def get_downloader(self) -> Downloader:
        if self.downloader is None:
            self.downloader = NetworkDownloader(self.progress)
        return self.downloader


def _validate(path: Path, rel: str) -> None:
    """Raise InputError unless ``path`` is a usable file for ``rel`` (an image set or the weights)."""
    if rel == WEIGHTS:
        load_model_file(path)
    else:
        load_image_set(path, num_classes=CSAW_NUM_CLASSES)


def _check_present(job: _Job, rel: str) -> _Entry:
    """A file already in ``root``: keep it if it matches the lock; validate it if nothing is recorded."""
    target, expected = job.root / rel, job.expected.get(rel)
    actual = sha256_of(target)
    if expected is None:
        _validate(target, rel)  # raises InputError naming the file if it is corrupt
    elif actual != expected:
        raise InputError(
            target,
            f"its SHA-256 is {actual}, but {expected} is expected (lock file {job.lock_file}); "
            "the file is damaged, truncated or a different version",
            f"delete it so that it is downloaded again; or, if you replaced it on purpose, "
            f"{job.other_bytes_fix(rel, expected, actual)}",
        )
    return _Entry(target, actual, "present", str(target))


def _call_downloader(action: Callable[[], None], source: str, what: str, fix: str) -> None:
    """Run one download; any failure of the network layer (gdown, requests) becomes one InputError."""
    try:
        action()
    except InputError:
        raise
    except Exception as exc:  # gdown/requests raise many types: quota, permissions, DNS, timeouts
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(source, f"could not download {what} ({exc.__class__.__name__}: {detail})", fix) from None


def _accept(job: _Job, tmp: Path, rel: str, source: str) -> str:
    """Check a staged download: digest against the lock (if recorded), then HDF5 validation."""
    actual, expected = sha256_of(tmp), job.expected.get(rel)
    if expected is not None and actual != expected:
        raise InputError(
            source,
            f"the downloaded {rel} has SHA-256 {actual}, but {expected} is expected (lock file {job.lock_file}); "
            "nothing was saved",
            "run again (an interrupted transfer, proxy or captive portal alters downloads); if the file was changed "
            f"upstream on purpose, {job.other_bytes_fix(rel, expected, actual)} and run again",
        )
    try:
        _validate(tmp, rel)
    except InputError as exc:
        raise InputError(
            source, f"the downloaded {rel} is not usable ({exc.problem}); nothing was saved", job.manual_fix([rel])
        ) from None
    return actual


def _stage_weights(job: _Job, staging: Path) -> tuple[Path, _Entry]:
    """Copy the weights from the mirror if it holds the right file, else download them; verify."""
    tmp, expected, url = staging / WEIGHTS, job.expected.get(WEIGHTS), job.weights_url
    mirrored = job.mirror / job.spec.source.mirror_name if job.mirror is not None else None
    if mirrored is not None and mirrored.is_file():
        if expected is None or sha256_of(mirrored) == expected:
            job.say(f"{WEIGHTS}: copying from {mirrored}")
            shutil.copyfile(mirrored, tmp)
            return tmp, _Entry(job.root / WEIGHTS, _accept(job, tmp, WEIGHTS, str(mirrored)), "mirror", str(mirrored))
        warnings.warn(
            f"{mirrored}: SHA-256 differs from the expected {expected}; downloading {url} instead", stacklevel=3
        )
    job.say(f"{WEIGHTS}: downloading {url}")
    _call_downloader(lambda: job.get_downloader().fetch_url(url, tmp), url, WEIGHTS, job.manual_fix([WEIGHTS]))
    if not tmp.is_file():
        raise InputError(url, f"the download of {WEIGHTS} produced no file", job.manual_fix([WEIGHTS]))
    return tmp, _Entry(job.root / WEIGHTS, _accept(job, tmp, WEIGHTS, url), "downloaded", url)


def _find_in_folder(job: _Job, folder: Path, rel: str) -> Path | None:
    """The Drive folder's layout varies (``data/cl/valid.h5``, ``cl/valid.h5``, flat): find by name.

    Several files of that name (the competition has two ``sunglasses_poisoned_data.h5``) are told
    apart by the rest of ``rel``'s path, then by depth (the least nested). None if there is none.
    """
    name = Path(rel).name
    found = sorted(p for p in folder.rglob(name) if p.is_file())
    if len(found) > 1:
        matching = [p for p in found if p.relative_to(folder).as_posix().endswith(rel)] or found
        depth = min(len(p.relative_to(folder).parts) for p in matching)
        found = [p for p in matching if len(p.relative_to(folder).parts) == depth]
    if len(found) > 1:
        listing = sorted(p.relative_to(folder).as_posix() for p in found)
        raise InputError(
            job.drive_url,
            f"the Drive folder holds several files for {rel}: {', '.join(listing)}",
            job.manual_fix([rel]),
        )
    return found[0] if found else None


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link (or, across file systems, copy) every file of ``source`` into ``dest``."""
    for path in source.rglob("*"):
        if path.is_file():
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)


def _fetch_drive_folder(job: _Job, folder: Path, rels: list[str]) -> str:
    """Fill ``folder`` with the Drive folder: from the shared cache when it holds it, else downloaded.

    A downloaded folder that several datasets share is kept in the cache (files hard-linked, no
    second copy on disk), so the competition's four BadNets download it once. Returns the status.
    """
    source = job.spec.source
    cached = (
        job.drive_cache / source.drive_folder_id if job.drive_cache is not None and source.shared_drive_folder else None
    )
    if cached is not None and (cached / ".complete").is_file():
        job.say(f"{', '.join(rels)}: linking from {cached} (downloaded for another dataset)")
        _link_tree(cached, folder)
        (folder / ".complete").unlink(missing_ok=True)
        return "cache"
    job.say(f"{', '.join(rels)}: downloading the Drive folder {job.drive_url}")
    _call_downloader(
        lambda: job.get_downloader().fetch_drive_folder(source.drive_folder_id, folder),
        job.drive_url,
        f"the {job.spec.name} data",
        job.manual_fix(rels),
    )
    if cached is not None:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{source.drive_folder_id}.", suffix=".tmp", dir=job.drive_cache.parent)
        )
        _link_tree(folder, staging)
        (staging / ".complete").touch()
        shutil.rmtree(cached, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, cached)
    return "downloaded"


def _stage_drive(job: _Job, staging: Path, rels: list[str]) -> dict[str, tuple[Path, _Entry]]:
    """Get the Drive folder once and check each wanted file in it; optional files may be absent."""
    folder = staging / "drive"
    folder.mkdir()
    status = _fetch_drive_folder(job, folder, rels)
    optional = job.spec.optional_files()
    staged = {}
    for rel in rels:
        tmp = _find_in_folder(job, folder, rel)
        if tmp is None and rel in optional:
            job.say(f"{rel}: not in the Drive folder (not published for every copy of the data): skipped")
            continue
        if tmp is None:
            listing = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            raise InputError(
                job.drive_url,
                f"the Drive folder holds no file named {Path(rel).name} for {rel} "
                f"(it holds: {', '.join(listing) or 'nothing'})",
                job.manual_fix([rel]),
            )
        staged[rel] = (tmp, _Entry(job.root / rel, _accept(job, tmp, rel, job.drive_url), status, job.drive_url))
    return staged


def _obtain_missing(job: _Job, missing: list[str]) -> dict[str, _Entry]:
    """Stage and verify every missing file, then move them all into place; on failure, leave nothing."""
    root = job.root
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", suffix=".tmp", dir=root))
    try:
        staged: dict[str, tuple[Path, _Entry]] = {}
        if WEIGHTS in missing:
            staged[WEIGHTS] = _stage_weights(job, staging)
        drive = [r for r in missing if r != WEIGHTS]
        if drive:
            staged.update(_stage_drive(job, staging, drive))
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
    """``bd_net.h5`` as a full Keras model, so that later steps need not know the architecture."""
    target, weights = job.root / BADNET, job.root / WEIGHTS
    job.say(f"{BADNET}: building the full model from {weights}")
    save_model(load_model_file(weights), target)
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

    Present files are checked first (digest against ``lock_file``, by default
    ``checksums/<dataset>.sha256``, or validated and recorded when no digest is known), so a
    damaged file is reported before anything is downloaded. Missing files are fetched (weights
    from ``weights_mirror`` when it holds them with the right digest; a Drive folder shared by
    several datasets from ``drive_cache`` when an earlier dataset downloaded it), checked and moved
    into place together. New digests are written to ``lock_file``. A ``bd_net.h5`` that loads is
    kept as it is; otherwise it is built from ``bd_weights.h5``. A file the dataset marks optional
    (poisoned data not every copy of the Drive folder holds) never triggers a download by itself
    and may stay absent.

    Returns ``{relative path: {"path", "sha256", "status", "source"}}`` with status
    ``'downloaded'``, ``'mirror'``, ``'cache'``, ``'present'``, ``'not published'`` (an optional
    file that is absent) or (for ``bd_net.h5``) ``'built'``. Raises ``InputError`` naming the
    file or URL and what to do for every failure.
    """
    if spec.source is None:
        raise ValueError(f"{spec.name} is not downloaded (it has no CSAW source)")
    root = Path(root)
    lock_file = Path(lock_file) if lock_file is not None else default_lock_file(spec.name)
    lock = read_lock(lock_file)
    expected = {WEIGHTS: spec.source.weights_sha256, **lock}  # the lock wins: the user may knowingly pin other bytes
    job = _Job(spec, root, lock_file, expected, downloader, weights_mirror, drive_cache, progress)
    files = [WEIGHTS, *spec.image_files()]
    entries: dict[str, _Entry] = {rel: _check_present(job, rel) for rel in files if (root / rel).is_file()}
    missing = [rel for rel in files if rel not in entries]
    # A broken bd_net.h5 is reported before anything is downloaded.
    badnet = _check_badnet(root / BADNET) if (root / BADNET).is_file() else None
    if set(missing) - spec.optional_files():  # optional files ride along with a download, never start one
        entries.update(_obtain_missing(job, missing))
    updated = {**lock, **{rel: entry.sha256 for rel, entry in entries.items()}}
    if updated != lock:
        write_lock(lock_file, updated, order=files)
    entries[BADNET] = badnet or _build_badnet(job)
    for rel in files:
        entries.setdefault(rel, _Entry(root / rel, "", "not published", job.drive_url))
    return {rel: entries[rel].as_dict() for rel in [*files, BADNET]}


def ensure_csaw_lab3(
    root: Path,
    lock_file: Path = DEFAULT_LOCK_FILE,
    weights_mirror: Path | None = None,
    downloader: Downloader | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """``ensure_csaw`` for the lab-3 dataset (``data/csaw-lab3``, ``checksums/csaw-lab3.sha256``)."""
    return ensure_csaw(LAB3, root, lock_file, weights_mirror, downloader, progress)
