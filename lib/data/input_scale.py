"""Feed every network pixels the way its publisher's evaluator did, by building the scale into the model.

Every image set stores 0-255. The competition BadNets were trained on x / 255 (``lib.data.catalog.InputScale``),
so their pipeline model starts with a layer that divides by 255: then activations, the sweep, B', the
GoodNets, fine-tuning, saved models and ``python -m lib.eval`` all take raw 0-255 images and answer as the
publisher's evaluator does, and a saved B' or G carries its convention with it. The layer is a Keras
``Normalization`` with mean 0 and variance 255**2, which *divides* by 255 exactly as
``eval.py``'s ``x / 255`` does (``Rescaling(1 / 255)`` multiplies by the rounded reciprocal, which differs
in the last bit for half of the 256 pixel values); it is a built-in layer, so the saved files still load
with plain ``keras.models.load_model``.
"""

from __future__ import annotations

from pathlib import Path

import keras

from lib.core.errors import InputError
from lib.data.catalog import InputScale
from lib.network.models import copy_model

LAYER_NAME = "input_scale"


def _scale_layer() -> keras.layers.Layer:
    return keras.layers.Normalization(mean=0.0, variance=255.0**2, axis=None, name=LAYER_NAME)


def input_scale_of(model: keras.Model) -> InputScale | None:
    """``DIVIDED_BY_255`` when the model divides its input by 255 itself (its first layer is ours), else None.

    A GoodNet's first layer is its BadNet, a model of its own: its convention is B's.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    first = layers[0] if layers else None
    if isinstance(first, keras.Model):
        return input_scale_of(first)
    if isinstance(first, keras.layers.Normalization) and first.name == LAYER_NAME:
        config = first.get_config()
        if float(config.get("mean", 0.0)) == 0.0 and float(config.get("variance", 0.0)) == 255.0**2:
            return InputScale.DIVIDED_BY_255
    return None


def with_input_scale(model: keras.Model, scale: InputScale, path: str | Path = "model") -> keras.Model:
    """``model`` fed raw 0-255 pixels, seeing them on ``scale``; the same model if it already does.

    The new model is flat (``conv_3`` etc. stay top-level layers) and independent of ``model``.
    """
    own = input_scale_of(model)
    if own is scale or (own is None and scale is InputScale.RAW):
        return model
    if own is not None:
        raise InputError(
            path,
            f"the model divides its input by 255 itself, but this network takes {scale.description} pixels",
            "use the model file that belongs to this dataset (lib.data.catalog says each dataset's input scale)",
        )
    if not hasattr(model, "_run_through_graph"):
        raise InputError(path, "not a functional Keras model: cannot add the input scale", "save it as one")
    pixels = keras.Input(shape=model.inputs[0].shape[1:], name="input")
    # Re-apply the model's own layers to the scaled tensor: a flat graph, so that layers stay addressable
    # by name (a nested model would hide conv_3 from get_layer).
    outputs = model._run_through_graph(_scale_layer()(pixels), operation_fn=lambda op: op)
    # A copy, so that each layer has one call site again (``layer.output`` is ambiguous otherwise).
    return copy_model(keras.Model(pixels, outputs, name=model.name))
