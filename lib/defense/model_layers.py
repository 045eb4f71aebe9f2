"""The custom layers that saved repaired models hold: registered with Keras when this module is imported.

A saved G or G+STRIP names these classes (package ``backdoor_pruning``); loading one runs no code from the file,
only these layers, which is why they are registered classes and not ``Lambda`` layers (which
``lib.network.models.load_model_file`` refuses). ``lib.defense.goodnet_model`` builds and loads G with
``GoodNetDecision``; ``lib.defense.strip`` adds STRIP's three layers.
"""

from __future__ import annotations

import keras
from keras import ops

SERIALIZATION_PACKAGE = "backdoor_pruning"
#: The largest pixel value: STRIP's blends saturate there, as 8-bit images do.
PIXEL_MAX = 255.0
BLENDS = ("sum", "mean")


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, not {blend!r}")


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class GoodNetDecision(keras.layers.Layer):
    """(B's scores, B''s scores), both (batch, N) -> G's scores (batch, N + 1); no weights.

    The appended column is ``min(0, min of B's row)``: 0 for softmax outputs as the lab states it,
    and never above the row's maximum for other scores either; being last, it loses every tie, so
    the argmax is B's class exactly where B and B' agree.
    """

    answers_poisoned = True  # is_goodnet: the model's last class means "poisoned"

    def call(self, inputs):
        b_scores, bprime_scores = inputs
        agree = ops.equal(ops.argmax(b_scores, axis=-1), ops.argmax(bprime_scores, axis=-1))
        floor = ops.minimum(ops.min(b_scores, axis=-1, keepdims=True), ops.zeros_like(b_scores[:, :1]))
        kept = ops.concatenate([b_scores, floor], axis=-1)
        flagged = ops.concatenate([ops.zeros_like(b_scores), ops.ones_like(b_scores[:, :1])], axis=-1)
        return ops.where(ops.expand_dims(agree, -1), kept, flagged)

    def compute_output_shape(self, input_shape):
        batch, n = input_shape[0]
        return (batch, None if n is None else n + 1)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class StripBlend(keras.layers.Layer):
    """(batch, H, W, C) images -> (batch x N, H, W, C): each image superimposed on each of N fixed overlays,
    which the layer holds as a (non-trainable) weight, so a saved model carries them."""

    def __init__(self, n_overlays: int, blend: str = "sum", **kwargs):
        super().__init__(**kwargs)
        check_blend(blend)
        self.n_overlays, self.blend = int(n_overlays), blend

    def build(self, input_shape):
        shape = (self.n_overlays, *input_shape[1:])
        self.overlays = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="overlays")

    def call(self, images):
        blended = ops.expand_dims(images, 1) + ops.expand_dims(self.overlays, 0)  # (batch, N, H, W, C)
        blended = ops.minimum(blended, PIXEL_MAX) if self.blend == "sum" else blended / 2.0
        return ops.reshape(blended, (-1, *images.shape[1:]))

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])

    def get_config(self):
        return super().get_config() | {"n_overlays": self.n_overlays, "blend": self.blend}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class StripEntropy(keras.layers.Layer):
    """(batch x N, classes) softmax scores -> (batch,) the mean Shannon entropy (nats) of each image's N blends."""

    def __init__(self, n_overlays: int, **kwargs):
        super().__init__(**kwargs)
        self.n_overlays = int(n_overlays)

    def call(self, scores):
        terms = ops.where(scores > 0, scores * ops.log(ops.maximum(scores, 1e-30)), ops.zeros_like(scores))
        entropy = -ops.sum(terms, axis=-1)
        return ops.mean(ops.reshape(entropy, (-1, self.n_overlays)), axis=-1)

    def compute_output_shape(self, input_shape):
        return (None,)

    def get_config(self):
        return super().get_config() | {"n_overlays": self.n_overlays}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class StripDecision(keras.layers.Layer):
    """(STRIP's entropy (batch,), G's scores (batch, N + 1)) -> G's scores, or one-hot N where the entropy is
    below ``threshold``: G that also answers "poisoned" when STRIP flags. No weights."""

    answers_poisoned = True  # lib.defense.goodnet_model.is_goodnet: its last class means "poisoned"

    def __init__(self, threshold: float, **kwargs):
        super().__init__(**kwargs)
        self.threshold = float(threshold)

    def call(self, inputs):
        entropy, scores = inputs
        flagged = ops.less(entropy, ops.cast(self.threshold, entropy.dtype))
        poisoned = ops.concatenate([ops.zeros_like(scores[:, :-1]), ops.ones_like(scores[:, -1:])], axis=-1)
        return ops.where(ops.expand_dims(flagged, -1), poisoned, scores)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return super().get_config() | {"threshold": self.threshold}
