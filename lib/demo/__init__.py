"""The offline demo scenario: synthetic faces and a sunglasses BadNet the project trains itself.

The real CSAW-HackML-2020 files are large downloads. The demo lets the whole pipeline
(activations, pruning sweep, repaired network) run offline in a couple of minutes, with a backdoor
that behaves like the lab's: the network is near perfect on clean faces, near-black sunglasses send
any face to the target identity, and pruning ``conv_3`` channels in increasing order of their clean
activation does *not* remove the backdoor before clean accuracy suffers. Everything is a function
of one ``DemoRecipe``: same recipe, same files.

Its modules are listed in the project's module map, ``lib/__init__.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

from lib.demo.data import DemoData, make_demo_data
from lib.demo.drawing import HEIGHT, WIDTH
from lib.demo.faces import FaceIdentities, draw_identities, generate_faces
from lib.demo.recipe import (
    ATTACKS,
    DEMO_CODE_VERSION,
    RECIPE_FILE,
    DemoFiles,
    DemoRecipe,
    demo_files,
    is_demo_current,
    stored_fingerprint,
)
from lib.demo.trigger import SUNGLASSES_RGB, stamp_sunglasses

#: Names from the modules that train Keras models (name -> module), imported on first use: they load TensorFlow
#: (seconds), which callers of the recipe, the faces or the trigger alone never need.
_KERAS_NAMES = {
    "PruningAwareBadNet": "attacks",
    "attacker_pruning": "attacks",
    "conv3_peak_preactivation": "attacks",
    "restore_as_decoys": "attacks",
    "train_badnet": "attacks",
    "train_pruning_aware_badnet": "attacks",
    "build_demo_scenario": "scenario",
    "ensure_demo_scenario": "scenario",
}

__all__ = [
    "ATTACKS",
    "DEMO_CODE_VERSION",
    "HEIGHT",
    "RECIPE_FILE",
    "SUNGLASSES_RGB",
    "WIDTH",
    "DemoData",
    "DemoFiles",
    "DemoRecipe",
    "FaceIdentities",
    "demo_files",
    "draw_identities",
    "generate_faces",
    "is_demo_current",
    "make_demo_data",
    "stamp_sunglasses",
    "stored_fingerprint",
    *_KERAS_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _KERAS_NAMES:
        return getattr(importlib.import_module(f"lib.demo.{_KERAS_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_KERAS_NAMES})
