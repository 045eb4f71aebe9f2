"""The repaired network G ("GoodNet") as one Keras model that can be saved, shipped and loaded.

``lib.defense.goodnet.goodnet_classes`` computes G's answers from two prediction arrays; the competition
wants G itself: a single file that, given an image, answers a class in ``[0, N]`` (N = number of
classes, 1283 on CSAW, meaning "poisoned"). ``build_goodnet`` puts a copy of the BadNet B (sub-model
``badnet``) and of its pruned copy B' (sub-model ``repaired``) side by side behind one input, and a
``GoodNetDecision`` layer turns their two score vectors into G's (batch, N + 1) scores:

* B and B' agree (same argmax): B's scores, with a last column that cannot win (0 for softmax scores);
* they disagree: one-hot at index N.

So ``argmax(G.predict(x))`` is G's class. ``GoodNetDecision`` is a registered custom layer, not a
``Lambda`` (``lib.defense.model_layers``, with STRIP's): loading a GoodNet runs no code from the file, and
``lib.network.models.load_model_file`` keeps refusing ``Lambda`` layers. Importing this module registers the
layers, which loading needs.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from lib.core.errors import InputError
from lib.defense.model_layers import GoodNetDecision
from lib.network.models import (
    BATCH_SIZE,
    UNSAFE_LAYER_CLASSES,
    copy_model,
    load_model_file,
    predict_classes,
    save_model,
)

BADNET_NAME = "badnet"
REPAIRED_NAME = "repaired"
DECISION_NAME = "goodnet_decision"


def _single_io(model: keras.Model, role: str) -> tuple[tuple, int]:
    """(input shape without batch, number of classes) of a single-input, single-output classifier."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError) as exc:
        raise ValueError(
            f"{role} ({model.name}) has no defined inputs/outputs ({exc}); build it with keras.Input first"
        ) from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"{role} ({model.name}) has {len(inputs)} inputs and {len(outputs)} outputs; G needs one of each"
        )
    out_shape = tuple(outputs[0].shape)
    if len(out_shape) != 2 or out_shape[-1] is None:
        raise ValueError(f"{role} ({model.name}) outputs shape {out_shape}; G needs class scores (batch, N)")
    return tuple(inputs[0].shape[1:]), int(out_shape[-1])


def _refuse_unsafe_layers(model: keras.Model, role: str) -> None:
    """A G holding a ``Lambda`` could not be loaded safely (``load_model_file`` refuses it), so do not build one."""
    stack, unsafe = list(model.layers), set()
    while stack:
        layer = stack.pop()
        if type(layer).__name__ in UNSAFE_LAYER_CLASSES:
            unsafe.add(type(layer).__name__)
        stack += getattr(layer, "layers", [])
    if unsafe:
        raise ValueError(
            f"{role} ({model.name}) contains {sorted(unsafe)} layer(s), which run arbitrary code; G refuses them"
        )


def renamed_copy(model: keras.Model, name: str) -> keras.Model:
    """An independent copy under a new name: B and B' share layer names, and may even be one object."""
    clone = copy_model(model)
    return keras.Model(clone.inputs[0], clone.outputs[0], name=name)


def build_goodnet(badnet: keras.Model, repaired: keras.Model, name: str = "goodnet") -> keras.Model:
    """G as one functional model: input like B's, output (batch, N + 1) scores, argmax = G's class.

    B and B' are copied (weights included), so later changes to them do not leak into G.
    Raises ``ValueError`` when they differ in input shape or number of classes, or hold ``Lambda`` layers.
    """
    b_shape, n = _single_io(badnet, "the BadNet")
    r_shape, n_repaired = _single_io(repaired, "the repaired network")
    _refuse_unsafe_layers(badnet, "the BadNet")
    _refuse_unsafe_layers(repaired, "the repaired network")
    if b_shape != r_shape:
        raise ValueError(f"the BadNet takes inputs of shape {b_shape} but the repaired network {r_shape}")
    if n != n_repaired:
        raise ValueError(f"the BadNet scores {n} classes but the repaired network {n_repaired}")
    x = keras.Input(shape=b_shape, name="input")
    b_scores = renamed_copy(badnet, BADNET_NAME)(x)
    bprime_scores = renamed_copy(repaired, REPAIRED_NAME)(x)
    return keras.Model(x, GoodNetDecision(name=DECISION_NAME)([b_scores, bprime_scores]), name=name)


def is_goodnet(model: keras.Model) -> bool:
    """Whether ``model`` answers like G: its output comes from a layer whose last class means "poisoned"
    (``GoodNetDecision``, or ``StripDecision`` for G combined with STRIP: ``lib.defense.model_layers``)."""
    return len(model.outputs) == 1 and any(getattr(layer, "answers_poisoned", False) for layer in model.layers)


def goodnet_num_classes(model: keras.Model) -> int:
    """N: the number of classes of B (G answers 0..N-1, and N for "poisoned")."""
    return int(model.outputs[0].shape[-1]) - 1


def save_goodnet(model: keras.Model, path: str | Path) -> Path:
    """Save G atomically in the ``.keras`` format (the format that keeps custom layers by name)."""
    path = Path(path)
    if not is_goodnet(model):
        raise ValueError(f"{model.name} is not a GoodNet; build one with build_goodnet(badnet, repaired)")
    if path.suffix != ".keras":
        raise InputError(
            path, "a GoodNet is saved in the .keras format", f"name the file {path.with_suffix('.keras').name}"
        )
    return save_model(model, path)


def load_goodnet(path: str | Path) -> keras.Model:
    """Load a G saved by ``save_goodnet``; anything else is one ``InputError`` naming the file.

    Goes through ``lib.network.models.load_model_file``, so ``Lambda`` layers are still refused.
    """
    model = load_model_file(path)
    if not is_goodnet(model):
        raise InputError(
            path,
            f"this is a plain model ({model.name}, {int(model.outputs[0].shape[-1])} classes), not a GoodNet",
            "build G with lib.defense.goodnet_model.build_goodnet(badnet, repaired) and save it with save_goodnet(), "
            "or load a BadNet with lib.network.models.load_model_file",
        )
    return model


def goodnet_predict_classes(model: keras.Model, images, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """G's class per image, in [0, N]; N means "poisoned" (B and B' disagree)."""
    return predict_classes(model, images, batch_size=batch_size)
