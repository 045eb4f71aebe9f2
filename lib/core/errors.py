"""One exception type for every bad input, so that users see one clear message, not a traceback.

Every message names the file (or parameter) that is wrong and says what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A file or parameter the pipeline cannot use; the message says which one and how to fix it."""

    def __init__(self, what: str | Path, problem: str, fix: str) -> None:
        self.what = str(what)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.what}: {problem}. Fix: {fix}")
