"""The CSAW tail in closed form, carried forward image by image as channels of the pooling layer are zeroed.

Recognised form (the DeepID / CSAW BadNet head, from the pooling layer ``P`` on)::

    softmax(Dense_o(relu(Dense_1(Flatten(P)) + Dense_2(Flatten(relu(Conv2D(P)))))))

with linear ``Dense_1``/``Dense_2``, a stride-1 ``valid`` channels-last ``Conv2D`` with ReLU,
float32 layers and finite weights. ``Dense_1(Flatten(P))`` and ``Conv2D(P)`` (before its ReLU)
are linear in ``P``: each image carries them from its unpruned state through every step that
touches it, and zeroing channel ``c`` subtracts the channel's share. ``Dense_2`` and the output
layer are then applied to the units their ReLUs let through (``lib.sweep.closed_form.kernels``); the logits,
not the softmax, decide the argmax. How far these float32 logits are from Keras's, and hence the
wider margin ``CLOSED_FORM_MARGIN_FACTOR``, is argued once, in ``lib.sweep.engine``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import keras
import numba
import numpy as np

from lib.network.models import BATCH_SIZE
from lib.network.prunable import producer
from lib.sweep.closed_form import kernels as sweep_kernels

#: The closed form decides a class only when its two best logits are further apart than this many
#: tie margins (see ``lib.sweep.engine``: its float32 state accumulates rounding over the steps).
CLOSED_FORM_MARGIN_FACTOR = 4.0


def nonzero_channels(pooled: np.ndarray, batch: int = BATCH_SIZE) -> np.ndarray:
    """(n, C) bool: channel c of image i is non-zero somewhere. Only those images can change when c is pruned."""
    n = len(pooled)
    nonzero = np.empty((n, pooled.shape[-1]), dtype=bool)
    flat = pooled.reshape(n, -1, pooled.shape[-1])
    for lo in range(0, n, batch):  # in batches: a whole (n, H*W, C) bool array would be 27 MB for CSAW
        nonzero[lo : lo + batch] = flat[lo : lo + batch].any(axis=1)
    return nonzero


# ----------------------------------------------------------------------------------------------
# Recognising the tail
# ----------------------------------------------------------------------------------------------
def _call(tensor) -> tuple[object, list]:
    """The layer that computed ``tensor`` in a functional graph, and the tensors that call read."""
    operation, node = producer(tensor)
    return operation, list(node.input_tensors) if node is not None else []


def _float32(layer) -> bool:
    return getattr(layer, "dtype_policy", None) is not None and layer.dtype_policy.name == "float32"


def _dense(layer, activation) -> bool:
    return (
        type(layer) is keras.layers.Dense
        and _float32(layer)
        and layer.activation is activation
        and layer.lora_rank is None
    )


def _relu(layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return layer.activation is keras.activations.relu
    if isinstance(layer, keras.layers.ReLU):
        return layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
    return False


def _conv(layer, pool_out, inputs) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and len(inputs) == 1
        and inputs[0] is pool_out
        and _float32(layer)
        and layer.activation is keras.activations.relu
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.padding == "valid"
        and layer.groups == 1
        and layer.data_format == "channels_last"
        and layer.lora_rank is None
    )


def _weights(layer) -> tuple[np.ndarray, np.ndarray]:
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1])
    return kernel.astype(np.float32), bias.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The tail
# ----------------------------------------------------------------------------------------------
class ClosedFormTail:
    """The closed form of a tail sub-model (see the module docstring); ``recognise`` builds it or says None."""

    def __init__(self, pool_shape, fc1, conv, fc2, out) -> None:
        w1, b1 = _weights(fc1)
        k4, b4 = _weights(conv)
        w2, b2 = _weights(fc2)
        wo, bo = _weights(out)
        self.pool_shape = tuple(int(s) for s in pool_shape)
        self.n_classes = wo.shape[1]
        h, w = self.pool_shape[:2]
        c4_bias = np.tile(b4, (h - k4.shape[0] + 1) * (w - k4.shape[1] + 1))  # at every output position
        #: (w1, hidden bias, k4, conv_4's bias, w2, wo, bo) as the kernels take them: contiguous float32, and
        #: fc_1's and fc_2's biases added up in the hidden layer.
        self.arrays = tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (w1, b1 + b2, k4, c4_bias, w2, wo, bo))

    @property
    def finite(self) -> bool:
        """All weights finite: the kernels skip zero inputs, which equals multiplying by them only then."""
        return all(bool(np.isfinite(a).all()) for a in self.arrays)

    @classmethod
    def recognise(cls, tail: keras.Model) -> ClosedFormTail | None:
        """The closed form of ``tail`` (a one-input sub-model from the pooling layer), or None if it has another
        shape.
        """
        if len(tail.inputs) != 1 or len(tail.outputs) != 1:
            return None
        pool_out = tail.inputs[0]
        out, inputs = _call(tail.outputs[0])
        if not (_dense(out, keras.activations.softmax) and out.units >= 2 and len(inputs) == 1):
            return None
        relu, inputs = _call(inputs[0])
        if not (_relu(relu) and len(inputs) == 1):
            return None
        add, summands = _call(inputs[0])
        if not (type(add) is keras.layers.Add and len(summands) == 2):
            return None
        fc1 = conv = fc2 = None
        for tensor in summands:
            dense, inputs = _call(tensor)
            if not (_dense(dense, keras.activations.linear) and len(inputs) == 1):
                return None
            flat, inputs = _call(inputs[0])
            if not (type(flat) is keras.layers.Flatten and flat.data_format == "channels_last" and len(inputs) == 1):
                return None
            if inputs[0] is pool_out and fc1 is None:
                fc1 = dense
                continue
            c, inputs = _call(inputs[0])
            if conv is None and _conv(c, pool_out, inputs):
                conv, fc2 = c, dense
                continue
            return None
        if fc1 is None or conv is None:
            return None
        closed_form = cls(pool_out.shape[1:], fc1, conv, fc2, out)
        return closed_form if closed_form.finite else None

    def sweep(
        self,
        pooled: np.ndarray,
        order: Sequence[int],
        groups: int = 1,
        done: Callable[[int], object] | None = None,
        nonzero: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each image's class and logit gap, unpruned (row 0) and after each step of ``order`` (row k: ``order[:k]``).

        ``pooled`` (n, H, W, C) are the pooling layer's outputs. Returns (len(order) + 1, n) int64
        classes and float32 gaps; where step k does not touch an image (its channel is zero there)
        its class is carried from row k - 1 and its gap is infinite (not evaluated). The images go
        through in ``groups`` parts per thread, after each of which ``done(images)`` is called (a progress bar).
        ``nonzero`` is ``nonzero_channels(pooled)`` where the caller has it already.
        """
        classes, gaps, _ = self._run(pooled, order, groups, done, nonzero, keep_logits=False)
        return classes, gaps

    def logits(self, pooled: np.ndarray, removed: Sequence[int] = ()) -> np.ndarray:
        """Each image's logits (n, classes) float32 as the sweep computes them after removing the channels
        ``removed``, in that order."""
        return self._run(pooled, removed, 1, None, None, keep_logits=True)[2]

    def _run(self, pooled, order, groups, done, nonzero, keep_logits: bool):
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        if pooled.shape[1:] != self.pool_shape:
            raise ValueError(f"pooled values of shape {pooled.shape[1:]}; this tail reads {self.pool_shape}")
        order = np.asarray(order, dtype=np.int64)
        n = len(pooled)
        classes = np.empty((len(order) + 1, n), dtype=np.int64)
        gaps = np.empty((len(order) + 1, n), dtype=np.float32)
        logits = np.empty((n if keep_logits else 0, self.n_classes), dtype=np.float32)
        touched = nonzero_channels(pooled) if nonzero is None else nonzero
        threads = numba.get_num_threads()
        parts = [p for p in np.array_split(np.arange(n), max(1, min(groups * threads, n))) if p.size]

        def sweep_part(part: np.ndarray) -> int:
            lo, hi = part[0], part[-1] + 1
            sweep_kernels.sweep_images(
                pooled[lo:hi], touched[lo:hi], order, *self.arrays, classes[:, lo:hi], gaps[:, lo:hi], logits[lo:hi]
            )
            return hi - lo

        with ThreadPoolExecutor(threads) as pool:
            for swept in pool.map(sweep_part, parts):
                if done is not None:
                    done(swept)
        return classes, gaps, logits
