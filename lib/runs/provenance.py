"""What each step of a run read and wrote, with digests: results follow their inputs.

Every step of the pipeline records, in ``run.json`` of its results folder, the digests of the files it
read and wrote; the runner (``lib.runs.notebook``) adds the notebook's parameters and a digest of the code
(``lib/`` and the notebook). Two questions are then answered from the record alone:

* Is a step up to date? Its parameters and code are the ones asked for now, every file it read still has
  the digest it had, and every file it wrote is still there, unchanged. ``make all`` reruns exactly the
  steps that are not, so a changed threshold, a replaced ``bd_net.h5`` or a deleted ``goodnet.csv``
  reruns what depends on it.
* Do two results belong together? A step (or the summary, ``make verify``, a study) that combines the
  outputs of earlier steps first checks that each of them is still what its step wrote, from the inputs
  it read (``require_current``): a folder of results is one consistent run, never a mix of two.

Digests of large files are reused while a file's size and modification time are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.core.atomic import write_text
from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, ResultFiles, shown
from lib.data.checksums import sha256_of

RECORD_VERSION = 1


@dataclass(frozen=True)
class FileState:
    """A file's content digest, with the size and modification time it had when the digest was taken."""

    sha256: str
    size: int
    mtime_ns: int

    def still_describes(self, path: Path) -> bool:
        """Whether ``path`` has the same size and modification time (so the digest can be reused)."""
        try:
            stat = path.stat()
        except OSError:
            return False
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


def file_state(path: Path, known: FileState | None = None) -> FileState | None:
    """The state of ``path`` (None if it is not a file); ``known``'s digest is reused if size and time match."""
    path = Path(path)
    if not path.is_file():
        return None
    if known is not None and known.still_describes(path):
        return known
    stat = path.stat()
    return FileState(sha256_of(path), stat.st_size, stat.st_mtime_ns)


#: Parts of ``lib/`` that no step imports: the commands on top (studies, ``make verify``, the summary, the
#: evaluation of images). Editing them changes no step's results and must not rerun (retrain) every run of
#: every study; ``tests/test_study_grid.py`` checks that no other module of ``lib/`` imports them.
NOT_STEP_CODE = ("lib/study/", "lib/verify.py", "lib/report/summary.py", "lib/eval.py")


def code_digest(notebook: Path | None = None) -> str:
    """One digest of the code a step runs (``lib/**/*.py`` but ``NOT_STEP_CODE``) and, if given, its notebook."""
    digest = hashlib.sha256()
    files = sorted(p for p in (PROJECT_ROOT / "lib").rglob("*.py") if not shown(p).startswith(NOT_STEP_CODE))
    for path in [*files, *([Path(notebook)] if notebook else [])]:
        digest.update(shown(path).encode())
        digest.update(b"\0")
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


@dataclass
class StepRecord:
    """What one step read and wrote (files by their shown path), and what it was asked to do."""

    inputs: dict[str, FileState]
    outputs: dict[str, FileState]
    summary: str = ""
    #: Set by the runner once the notebook succeeded; None after a run outside ``lib.runs.notebook``.
    parameters: dict[str, Any] | None = None
    code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "parameters": self.parameters,
            "code": self.code,
            "details": self.details,
            "inputs": {k: vars(v) for k, v in self.inputs.items()},
            "outputs": {k: vars(v) for k, v in self.outputs.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepRecord:
        return cls(
            inputs={k: FileState(**v) for k, v in data["inputs"].items()},
            outputs={k: FileState(**v) for k, v in data["outputs"].items()},
            summary=data.get("summary", ""),
            parameters=data.get("parameters"),
            code=data.get("code"),
            details=data.get("details", {}),
        )


def read_record(results: ResultFiles) -> dict[str, StepRecord]:
    """Every step's record in ``results`` (empty when nothing was recorded, or the record is unreadable)."""
    try:
        data = json.loads(results.run_record.read_text(encoding="utf-8"))
        if data.get("version") != RECORD_VERSION:
            return {}
        return {name: StepRecord.from_json(step) for name, step in data["steps"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # an unreadable record only means that every step is rerun


def _write_record(results: ResultFiles, steps: Mapping[str, StepRecord]) -> None:
    data = {"version": RECORD_VERSION, "steps": {name: rec.to_json() for name, rec in steps.items()}}
    write_text(results.run_record, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _states(paths: Iterable[Path], known: Mapping[str, FileState]) -> dict[str, FileState]:
    states = {}
    for path in paths:
        state = file_state(Path(path), known.get(shown(path)))
        if state is None:
            raise FileNotFoundError(f"{path}: recorded as a step's file but it does not exist")
        states[shown(path)] = state
    return states


def record_step(
    results: ResultFiles,
    step: str,
    inputs: Iterable[Path],
    outputs: Iterable[Path],
    summary: str = "",
    details: Mapping[str, Any] | None = None,
) -> StepRecord:
    """Record that ``step`` read ``inputs`` and wrote ``outputs``; call it once the outputs are written."""
    steps = read_record(results)
    known = {k: v for rec in steps.values() for k, v in (*rec.inputs.items(), *rec.outputs.items())}
    record = StepRecord(_states(inputs, known), _states(outputs, known), summary, details=dict(details or {}))
    steps[step] = record
    _write_record(results, steps)
    return record


def complete_record(results: ResultFiles, step: str, parameters: Mapping[str, Any], code: str) -> None:
    """The runner's part: the parameters and code that produced the step's record."""
    steps = read_record(results)
    if step not in steps:
        raise InputError(
            results.run_record,
            f"the notebook finished but step {step!r} recorded nothing",
            "end the notebook with its step's record call (lib.steps: record_activations, record_sweep, ...)",
        )
    steps[step].parameters = json.loads(json.dumps(dict(parameters)))  # as JSON will read it back
    steps[step].code = code
    _write_record(results, steps)


def changes(record: StepRecord) -> list[str]:
    """What changed since ``record`` was made: files read that differ, files written that differ or are gone."""
    found = []
    for kind, files in (("input", record.inputs), ("output", record.outputs)):
        for name, state in files.items():
            path = PROJECT_ROOT / name if not Path(name).is_absolute() else Path(name)
            now = file_state(path, state)
            if now is None:
                found.append(f"{kind} {name} is missing")
            elif now.sha256 != state.sha256:
                found.append(f"{kind} {name} changed")
    return found


def stale_reason(results: ResultFiles, step: str, parameters: Mapping[str, Any], code: str) -> str | None:
    """Why ``step`` must run again for these parameters and code; None when its results are current."""
    record = read_record(results).get(step)
    if record is None:
        return "not run yet"
    if record.parameters is None:
        return "last run outside `make` (parameters unknown)"
    asked = json.loads(json.dumps(dict(parameters)))
    if record.parameters != asked:
        changed = sorted(k for k in {*asked, *record.parameters} if asked.get(k) != record.parameters.get(k))
        return "parameters changed: " + ", ".join(
            f"{k} {record.parameters.get(k)!r} -> {asked.get(k)!r}" for k in changed
        )
    if record.code != code:
        return "code changed (lib/ or the notebook)"
    found = changes(record)
    return "; ".join(found[:3]) + (f" (and {len(found) - 3} more)" if len(found) > 3 else "") if found else None


def require_current(results: ResultFiles, step: str, rerun: str) -> StepRecord:
    """The record of ``step``, provided its outputs are still what it wrote from the inputs it read.

    Combining results of two different runs is the silent error this refuses: for example a
    ``goodnet.csv`` made before the sweep was rerun with other thresholds. ``rerun`` says how to fix it.
    """
    record = read_record(results).get(step)
    if record is None:
        raise InputError(results.run_record, f"no record of the {step} step in {shown(results.root)}", rerun)
    found = changes(record)
    if found:
        raise InputError(
            shown(results.root),
            f"the results of the {step} step no longer belong together ({'; '.join(found[:3])})",
            rerun,
        )
    return record


def summaries(results: ResultFiles) -> dict[str, str]:
    """Each recorded step's one-line summary (for the console and ``make verify``)."""
    return {name: rec.summary for name, rec in read_record(results).items()}
