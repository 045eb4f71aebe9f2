"""What every step shares: its dataset's lock, and how its CSVs round mean activations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from lib.core.step_names import DATA
from lib.runs import locks
from lib.runs.workspace import Workspace

#: Significant digits of mean activations in the CSVs: float32 kernels of other processors move them by
#: about 1e-6 relative, which this keeps out of most files while staying within 1e-5 of the exact value.
ACTIVATION_DIGITS = 6


@contextlib.contextmanager
def locked(ws: Workspace, step: str) -> Iterator[None]:
    """Hold the run's results folder, and its data folder (for writing in the data step, else for reading).

    Nothing is taken where the runner already holds the folders for us.
    """
    writes = [ws.data, ws.results.root] if step == DATA else [ws.results.root]
    with locks.hold(writes, what=f"step {step} of {ws.dataset}", read=[] if step == DATA else [ws.data]):
        yield
