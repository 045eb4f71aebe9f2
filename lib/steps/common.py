"""What every step shares: its name, its dataset's lock, and how to tell the user to rerun it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from lib import locks, rows
from lib.workspace import Workspace

#: Step names are those of the notebooks: ``03_pruning_sweep.ipynb`` runs the step ``pruning_sweep``.
DATA, ACTIVATIONS, SWEEP = "data", "activations", "pruning_sweep"
GOODNET, FINE_PRUNING = rows.GOODNET_STEP, rows.FINE_PRUNING_STEP
STEPS = (DATA, ACTIVATIONS, SWEEP, GOODNET, FINE_PRUNING)
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


def rerun(ws: Workspace, step: str) -> str:
    """The fix for results of ``step`` that are missing or no longer belong together."""
    return f"rerun the {step} notebook (`make {step.replace('_', '-')} {ws.make_target}`), or `make all`"
