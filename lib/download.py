"""Obtain the real lab-3 inputs (``dataset=csaw-lab3``), verified by SHA-256, never half-written.

Where the files come from:

* the four image sets (``cl/valid.h5``, ``cl/test.h5``, ``bd/bd_valid.h5``, ``bd/bd_test.h5``) from
  the lab's Google Drive folder, with gdown;
* the BadNet's weights (``bd_weights.h5``) from the public GitHub repository, or from a local
  mirror folder (``default_weights_mirror()``), which makes the real weights usable offline.
  ``bd_net.h5`` is then built from them as a full Keras model (``lib.models.save_model``).

Why a lock file: Drive files can be replaced or corrupted by their owner or by an interrupted
transfer, and nobody published their digests. The first successful download records them in
``checksums/csaw-lab3.sha256`` (commit it); every later download or present file is checked
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
from lib.datasets import load_image_set
from lib.errors import InputError
from lib.models import load_model_file, save_model
from lib.paths import PROJECT_ROOT, DatasetFiles

DRIVE_FOLDER_ID = "1Rs68uH8Xqa4j6UxG53wzD0uyI8347dSq"
DRIVE_FOLDER_URL = f"https://drive.google.com/drive/folders/{DRIVE_FOLDER_ID}"
WEIGHTS_URL = "https://github.com/csaw-hackml/CSAW-HackML-2020/raw/master/lab3/models/bd_weights.h5"

WEIGHTS = "bd_weights.h5"
#: Paths relative to ``root``, derived from ``lib.paths.DatasetFiles`` so that both always agree.
_LAYOUT = DatasetFiles(Path("."))
BADNET = _LAYOUT.badnet.as_posix()
DRIVE_FILES = tuple(
    p.as_posix() for p in (_LAYOUT.clean_valid, _LAYOUT.clean_test, _LAYOUT.poisoned_valid, _LAYOUT.poisoned_test)
)
#: Digests known before any download (SHA256SUMS of the shared CSAW weight files).
PINNED_SHA256 = {WEIGHTS: "68ec7afdfc570d39acbded72025fe37d4d14e770585001d75a393490d50fc629"}
#: File names in a weights mirror folder (the names used in shared/csaw-models).
MIRROR_NAMES = {WEIGHTS: "lab3_bd_weights.h5"}
DEFAULT_LOCK_FILE = PROJECT_ROOT / "checksums" / "csaw-lab3.sha256"

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
            with open(dest, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=Path(url).name, disable=not self.progress
            ) as bar:
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


def write_lock(lock_file: Path, digests: dict[str, str]) -> None:
    """Rewrite the lock file atomically: known files in layout order, then any others the user keeps."""
    order = [WEIGHTS, *DRIVE_FILES]
    names = [n for n in order if n in digests] + sorted(n for n in digests if n not in order)
    write_text(lock_file, "".join(f"{digests[n]}  {n}\n" for n in names))


@dataclass
class _Entry:
    """One file of the summary: where it is, its digest, how it got there."""

    path: Path
    sha256: str
    status: str  # 'downloaded' | 'mirror' | 'present' | 'built'
    source: str

    def as_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "status": self.status, "source": self.source}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def _source_of(rel: str) -> str:
    return WEIGHTS_URL if rel == WEIGHTS else DRIVE_FOLDER_URL


def _validate(path: Path, rel: str) -> None:
    """Raise InputError unless ``path`` is a usable file for ``rel`` (an image set or the weights)."""
    if rel == WEIGHTS:
        load_model_file(path)
    else:
        load_image_set(path, num_classes=CSAW_NUM_CLASSES)


def _accept_other_bytes(rel: str, expected: str, actual: str, lock_file: Path) -> str:
    """How to make the pipeline accept different bytes: unpin a recorded digest, or override a pinned one."""
    if PINNED_SHA256.get(rel) == expected:
        return f"write the line `{actual}  {rel}` into {lock_file} (the file is then not the published one)"
    return f"remove the line for {rel} from {lock_file}"


def _check_present(target: Path, rel: str, expected: str | None, lock_file: Path) -> _Entry:
    """A file already in ``root``: keep it if it matches the lock; validate it if nothing is recorded."""
    actual = sha256_of(target)
    if expected is None:
        _validate(target, rel)  # raises InputError naming the file if it is corrupt
    elif actual != expected:
        raise InputError(
            target,
            f"its SHA-256 is {actual}, but {expected} is expected (lock file {lock_file}); "
            "the file is damaged, truncated or a different version",
            f"delete it so that it is downloaded again; or, if you replaced it on purpose, "
            f"{_accept_other_bytes(rel, expected, actual, lock_file)}",
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


def _manual_fix(rels: list[str], root: Path) -> str:
    places = ", ".join(str(root / r) for r in rels)
    return (
        "check your connection and run again (Google Drive also refuses for a while after too many downloads: "
        f"wait and retry), or download by hand from {_source_of(rels[0])} and place the file(s) at {places}"
    )


def _accept(tmp: Path, rel: str, expected: str | None, source: str, root: Path, lock_file: Path) -> str:
    """Check a staged download: digest against the lock (if recorded), then HDF5 validation."""
    actual = sha256_of(tmp)
    if expected is not None and actual != expected:
        raise InputError(
            source,
            f"the downloaded {rel} has SHA-256 {actual}, but {expected} is expected (lock file {lock_file}); "
            "nothing was saved",
            "run again (an interrupted transfer, proxy or captive portal alters downloads); if the file was changed "
            f"upstream on purpose, {_accept_other_bytes(rel, expected, actual, lock_file)} and run again",
        )
    try:
        _validate(tmp, rel)
    except InputError as exc:
        raise InputError(
            source,
            f"the downloaded {rel} is not usable ({exc.problem}); nothing was saved",
            _manual_fix([rel], root),
        ) from None
    return actual


def _stage_weights(
    staging: Path, root: Path, expected: str | None, mirror: Path | None, downloader: Downloader, lock_file: Path, progress: bool
) -> tuple[Path, _Entry]:
    """Copy the weights from the mirror if it holds the right file, else download them; verify."""
    tmp = staging / WEIGHTS
    mirrored = mirror / MIRROR_NAMES[WEIGHTS] if mirror is not None else None
    if mirrored is not None and mirrored.is_file():
        if expected is None or sha256_of(mirrored) == expected:
            _say(progress, f"{WEIGHTS}: copying from {mirrored}")
            shutil.copyfile(mirrored, tmp)
            return tmp, _Entry(root / WEIGHTS, _accept(tmp, WEIGHTS, expected, str(mirrored), root, lock_file), "mirror", str(mirrored))
        warnings.warn(f"{mirrored}: SHA-256 differs from the expected {expected}; downloading {WEIGHTS_URL} instead", stacklevel=3)
    _say(progress, f"{WEIGHTS}: downloading {WEIGHTS_URL}")
    _call_downloader(lambda: downloader.fetch_url(WEIGHTS_URL, tmp), WEIGHTS_URL, WEIGHTS, _manual_fix([WEIGHTS], root))
    if not tmp.is_file():
        raise InputError(WEIGHTS_URL, f"the download of {WEIGHTS} produced no file", _manual_fix([WEIGHTS], root))
    return tmp, _Entry(root / WEIGHTS, _accept(tmp, WEIGHTS, expected, WEIGHTS_URL, root, lock_file), "downloaded", WEIGHTS_URL)


def _find_in_folder(folder: Path, rel: str, root: Path) -> Path:
    """The Drive folder's layout varies (``data/cl/valid.h5``, ``cl/valid.h5``, flat): find by name."""
    name, parent = Path(rel).name, Path(rel).parent.name
    found = sorted(p for p in folder.rglob(name) if p.is_file())
    if len(found) > 1:
        found = [p for p in found if p.parent.name == parent]
    if len(found) != 1:
        listing = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        problem = "no file" if not found else "several files"
        raise InputError(
            DRIVE_FOLDER_URL,
            f"the Drive folder holds {problem} named {name} for {rel} (it holds: {', '.join(listing) or 'nothing'})",
            _manual_fix([rel], root),
        )
    return found[0]


def _stage_drive(
    staging: Path, root: Path, rels: list[str], expected: dict[str, str], downloader: Downloader, lock_file: Path, progress: bool
) -> dict[str, tuple[Path, _Entry]]:
    """Download the Drive folder once and check each wanted file in it."""
    folder = staging / "drive"
    folder.mkdir()
    _say(progress, f"{', '.join(rels)}: downloading the Drive folder {DRIVE_FOLDER_URL}")
    _call_downloader(
        lambda: downloader.fetch_drive_folder(DRIVE_FOLDER_ID, folder), DRIVE_FOLDER_URL, "the lab-3 data", _manual_fix(rels, root)
    )
    staged = {}
    for rel in rels:
        tmp = _find_in_folder(folder, rel, root)
        digest = _accept(tmp, rel, expected.get(rel), DRIVE_FOLDER_URL, root, lock_file)
        staged[rel] = (tmp, _Entry(root / rel, digest, "downloaded", DRIVE_FOLDER_URL))
    return staged


def _obtain_missing(
    root: Path, missing: list[str], expected: dict[str, str], mirror: Path | None, downloader: Downloader, lock_file: Path, progress: bool
) -> dict[str, _Entry]:
    """Stage and verify every missing file, then move them all into place; on failure, leave nothing."""
    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", suffix=".tmp", dir=root))
    try:
        staged: dict[str, tuple[Path, _Entry]] = {}
        if WEIGHTS in missing:
            staged[WEIGHTS] = _stage_weights(staging, root, expected.get(WEIGHTS), mirror, downloader, lock_file, progress)
        drive = [r for r in missing if r in DRIVE_FILES]
        if drive:
            staged.update(_stage_drive(staging, root, drive, expected, downloader, lock_file, progress))
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


def _build_badnet(root: Path, progress: bool) -> _Entry:
    """``bd_net.h5`` as a full Keras model, so that later steps need not know the architecture."""
    target, weights = root / BADNET, root / WEIGHTS
    _say(progress, f"{BADNET}: building the full model from {weights}")
    save_model(load_model_file(weights), target)
    return _Entry(target, sha256_of(target), "built", str(weights))


def ensure_csaw_lab3(
    root: Path,
    lock_file: Path = DEFAULT_LOCK_FILE,
    weights_mirror: Path | None = None,
    downloader: Downloader | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Make ``root`` (normally ``data/csaw-lab3``) hold the lab-3 layout, every file verified.

    Present files are checked first (digest against ``lock_file``, or validated and recorded when
    no digest is known), so a damaged file is reported before anything is downloaded. Missing files
    are fetched (weights from ``weights_mirror`` when it holds them with the right digest), checked
    and moved into place together. New digests are written to ``lock_file``. A ``bd_net.h5`` that
    loads is kept as it is; otherwise it is built from ``bd_weights.h5``.

    Returns ``{relative path: {"path", "sha256", "status", "source"}}`` with status
    ``'downloaded'``, ``'mirror'``, ``'present'`` or (for ``bd_net.h5``) ``'built'``.
    Raises ``InputError`` naming the file or URL and what to do for every failure.
    """
    root, lock_file = Path(root), Path(lock_file)
    lock = read_lock(lock_file)
    expected = {**PINNED_SHA256, **lock}  # the lock wins: the user may knowingly pin other bytes
    entries: dict[str, _Entry] = {}
    for rel in (WEIGHTS, *DRIVE_FILES):
        if (root / rel).is_file():
            entries[rel] = _check_present(root / rel, rel, expected.get(rel), lock_file)
    missing = [rel for rel in (WEIGHTS, *DRIVE_FILES) if rel not in entries]
    # A broken bd_net.h5 is reported before anything is downloaded.
    badnet = _check_badnet(root / BADNET) if (root / BADNET).is_file() else None
    if missing:
        entries.update(
            _obtain_missing(root, missing, expected, weights_mirror, downloader or NetworkDownloader(progress), lock_file, progress)
        )
    updated = {**lock, **{rel: entry.sha256 for rel, entry in entries.items()}}
    if updated != lock:
        write_lock(lock_file, updated)
    entries[BADNET] = badnet or _build_badnet(root, progress)
    order = [WEIGHTS, *DRIVE_FILES, BADNET]
    return {rel: entries[rel].as_dict() for rel in order}
