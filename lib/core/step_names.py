"""The steps of the defenses, named as their notebooks: ``03_pruning_sweep.ipynb`` runs ``pruning_sweep``."""

from __future__ import annotations

DATA, ACTIVATIONS, SWEEP, GOODNET, FINE_PRUNING = "data", "activations", "pruning_sweep", "goodnet", "fine_pruning"
CLP, STRIP, ANP = "clp", "strip", "anp"
STEPS = (DATA, ACTIVATIONS, SWEEP, GOODNET, FINE_PRUNING, CLP, STRIP, ANP)


def notebook_of(step: str) -> str:
    """``pruning_sweep`` -> ``notebooks/03_pruning_sweep.ipynb``."""
    return f"notebooks/{STEPS.index(step) + 1:02d}_{step}.ipynb"
