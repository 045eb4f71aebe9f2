"""The five steps of the defense, one function each; the notebooks call these and show what they return.

=======================  ==========================  ==============================================================
notebook                 step                        what it does (module)
=======================  ==========================  ==============================================================
``01_data``              ``prepare_data``            get the dataset into its data folder (demos: published or
                                                     built; CSAW: downloaded), check B against its publishers'
                                                     figures (``lib.steps.data``)
``02_activations``       ``analyse_activations``     mean activation of every channel of the pooling layer on clean
                                                     validation data (``lib.steps.activations``)
``03_pruning_sweep``     ``run_sweep``               prune in increasing order of activation; accuracy and ASR after
                                                     every step; save B' at each threshold (``lib.steps.pruning_sweep``,
                                                     engine in ``lib.sweep``)
``04_goodnet``           ``evaluate_goodnets``       test accuracy and ASR of B, each B' and each GoodNet G
                                                     (``lib.steps.goodnet``)
``05_fine_pruning``      ``fine_prune``              fine-tune B and each B' on clean validation data; test them and
                                                     their GoodNets (``lib.steps.fine_pruning``)
=======================  ==========================  ==============================================================

Each step holds its dataset's lock (``lib.locks``), writes its own files atomically, figures included, and
records what it read and wrote (``lib.provenance``); a step that uses an earlier step's files first checks
that they are still the ones that step wrote, so a results folder is always one consistent run.
"""

from __future__ import annotations

from lib.scenario import Scenario, image_set_overview, load_scenario
from lib.steps.activations import analyse_activations
from lib.steps.data import prepare_data
from lib.steps.fine_pruning import fine_prune
from lib.steps.goodnet import evaluate_goodnets
from lib.steps.pruning_sweep import run_sweep
from lib.workspace import Workspace, workspace

__all__ = [
    "Scenario",
    "Workspace",
    "analyse_activations",
    "evaluate_goodnets",
    "fine_prune",
    "image_set_overview",
    "load_scenario",
    "prepare_data",
    "run_sweep",
    "workspace",
]
