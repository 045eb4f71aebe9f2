"""One run at a time per results folder, and no reader of a data folder while it is being written.

Two ``make all`` runs on the same dataset would otherwise interleave their writes (the last writer wins,
possibly with other parameters), and one run's clean-up could delete the other's temporary files. A
folder is held through a reader-writer lock file inside it (``filelock.ReadWriteLock``): a results folder
by one writer, a data folder by its data step as writer or by any number of readers (the analysis steps of
a study's runs of one CSAW dataset read it together). A folder this process cannot write (a read-only
dataset) keeps its lock in the cache folder instead (``lib.core.paths.cache_root``), under a name made from
its path. Locks are released by the
operating system if their holder dies, so they never go stale; who holds a folder is written beside the
lock, so that a second run stops with a message that names the holder, at once or, with
``$BACKDOOR_LOCK_TIMEOUT`` seconds, after waiting that long.

A process that holds the locks passes their folders to its children in ``$BACKDOOR_HELD_LOCKS``
(``make`` under ``python -m lib.runs.locks``, the notebook kernel under ``lib.runs.notebook``): they run under
their parent's lock instead of waiting for it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from filelock import ReadWriteLock, Timeout

from lib.core.errors import InputError
from lib.core.paths import CACHE_ENV, cache_root, data_folder, result_files, shown
from lib.core.read_only import is_writable

HELD_ENV = "BACKDOOR_HELD_LOCKS"
TIMEOUT_ENV = "BACKDOOR_LOCK_TIMEOUT"
LOCK_NAME = ".lock"
HOLDER_NAME = ".lock-holder.json"


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def held_by_parent(folder: Path, env: dict[str, str] | None = None) -> bool:
    """Whether an ancestor process holds ``folder``'s lock for us."""
    held = (env if env is not None else os.environ).get(HELD_ENV, "")
    return _key(folder) in held.split(os.pathsep)


def env_holding(folders: Sequence[Path], env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) that tells children these folders are held for them."""
    env = dict(os.environ if env is None else env)
    held = [k for k in env.get(HELD_ENV, "").split(os.pathsep) if k]
    env[HELD_ENV] = os.pathsep.join(dict.fromkeys([*held, *(_key(f) for f in folders)]))
    return env


def _lock_home(folder: Path) -> Path:
    """The folder that holds ``folder``'s lock: itself, or for a folder this process cannot write, the cache's."""
    if is_writable(folder):
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    home = cache_root() / "locks" / hashlib.sha256(_key(folder).encode()).hexdigest()[:16]
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            shown(folder),
            f"the folder is read-only and its lock cannot go to the cache folder {shown(cache_root())} either ({exc})",
            f"set ${CACHE_ENV} to a writable folder",
        ) from None
    return home


def _holder(home: Path) -> str:
    try:
        info = json.loads((home / HOLDER_NAME).read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _acquire(stack: contextlib.ExitStack, folder: Path, shared: bool, timeout: float, what: str) -> None:
    home = _lock_home(folder)
    lock = ReadWriteLock(home / LOCK_NAME, timeout=timeout, is_singleton=False)
    try:
        if shared:
            stack.enter_context(lock.read_lock())
            return  # readers leave the holder file to the writer
        stack.enter_context(lock.write_lock())
    except Timeout:
        raise InputError(
            shown(folder),
            f"in use by {_holder(home)}: one run at a time per folder",
            "wait for that run to finish (or stop it), or point this run at folders of its own "
            "(notebook parameters data_dir=... results_dir=...)",
        ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": what or " ".join(sys.argv)[:200],
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    (home / HOLDER_NAME).write_text(json.dumps(holder) + "\n", encoding="utf-8")
    stack.callback((home / HOLDER_NAME).unlink, missing_ok=True)


@contextlib.contextmanager
def hold(folders: Sequence[str | Path], what: str = "", read: Sequence[str | Path] = ()) -> Iterator[None]:
    """Hold ``folders`` exclusively and ``read`` shared (created if needed) for the duration.

    Folders an ancestor holds for us are skipped. Locks are taken in a fixed order, so two runs that
    share a folder cannot deadlock. Another holder stops us at once, or after ``$BACKDOOR_LOCK_TIMEOUT``.
    """
    timeout = float(os.environ.get(TIMEOUT_ENV, "0"))
    wanted = {_key(Path(f)): (Path(f), True) for f in read}
    wanted.update({_key(Path(f)): (Path(f), False) for f in folders})
    with contextlib.ExitStack() as stack:
        for _, (folder, shared) in sorted(wanted.items()):
            if not held_by_parent(folder):
                _acquire(stack, folder, shared, timeout, what)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.runs.locks (FOLDER... | --dataset NAME [--data-dir D] [--results-dir R]) -- COMMAND...``.

    Runs COMMAND holding the folders' locks: ``make`` runs a dataset's chain of steps this way.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m lib.runs.locks (FOLDER... | --dataset NAME) -- COMMAND...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m lib.runs.locks")
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--dataset", help="hold this dataset's data and results folders")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv[:cut])
    folders = list(args.folders)
    if args.dataset:
        folders += [data_folder(args.dataset, args.data_dir), result_files(args.dataset, args.results_dir).root]
    command = argv[cut + 1 :]
    try:
        with hold(folders, what=" ".join(command)[:200]):
            return subprocess.call(command, env=env_holding(folders))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
