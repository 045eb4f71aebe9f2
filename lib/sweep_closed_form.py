"""The CSAW tail in closed form, evaluated incrementally as channels of the pooling layer are zeroed.

Recognised form (the DeepID / CSAW BadNet head, from the pooling layer ``P`` on)::

    softmax(Dense_o(relu(Dense_1(Flatten(P)) + Dense_2(Flatten(relu(Conv2D(P)))))))

with linear ``Dense_1``/``Dense_2``, a stride-1 ``valid`` channels-last ``Conv2D`` with ReLU and
float32 layers. ``a1 = Dense_1(Flatten(P))`` and ``c4 = Conv2D(P)`` (before its ReLU) are linear in
``P``, so they are kept per image and zeroing channel ``c`` subtracts its share: its H*W pooled
values times a (H*W, F1) slice of ``Dense_1``'s kernel and a (H*W, Ho*Wo*F4) matrix holding the
``Conv2D`` kernel at every output position (for CSAW 20 x 160 and 20 x 960 weights). Only
``Dense_2`` and the output layer run again for an image the step touches (46 % of the tail's
multiply-adds); the logits, not the softmax, decide the argmax.

The state lives in TensorFlow variables updated in place. The compiled functions are module-level
and take the weights, the pooled values and the state as arguments, so they are traced once per
architecture and process (not per sweep, not per step), and many steps go through one call, which
loops over their images ``chunk`` at a time and hands back only each evaluation's class and the gap
between its two best logits. How far these float32 logits are from Keras's, and hence the wider
margin ``CLOSED_FORM_MARGIN_FACTOR``, is argued once, in ``lib.sweep``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from lib.prunable import producer

#: The closed form decides a class only when its two best logits are further apart than this many
#: tie margins (see ``lib.sweep``: its float32 state accumulates rounding over the steps).
CLOSED_FORM_MARGIN_FACTOR = 4.0
#: Images evaluated together by the closed-form tail.
CLOSED_FORM_CHUNK = 1024
#: Classes per block when finding each image's two best logits.
TOP_TWO_BLOCK = 16


class _Weights(NamedTuple):
    """The tail's weights as float32 tensors, the output layer padded to whole blocks of classes."""

    fc1_by_channel: tf.Tensor  # (C, H*W, F1)
    conv_by_channel: tf.Tensor  # (C, H*W, Ho*Wo*F4)
    w1: tf.Tensor
    b1: tf.Tensor
    k4: tf.Tensor
    b4: tf.Tensor
    w2: tf.Tensor
    b2: tf.Tensor
    wo: tf.Tensor  # padded with zero columns
    bo: tf.Tensor  # padded with -inf


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
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(layer.bias).astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
    return kernel, bias


# ----------------------------------------------------------------------------------------------
# The compiled arithmetic (graph functions of the weights, traced once per architecture)
# ----------------------------------------------------------------------------------------------
def _initial(wt: _Weights, x):
    """``a1`` (m, F1) and the flattened ``c4`` (m, Ho*Wo*F4) of the unpruned tail, from pooled values (m, H, W, C)."""
    h, w, c = x.shape[1:]
    kh, kw, _, f4 = wt.k4.shape
    oh, ow = h - kh + 1, w - kw + 1
    m = tf.shape(x)[0]
    a1 = tf.matmul(tf.reshape(x, [m, h * w * c]), wt.w1) + wt.b1
    # conv_4 as one matmul: every (kh, kw, C) window, in the kernel's order.
    windows = tf.stack([x[:, dy : dy + oh, dx : dx + ow] for dy in range(kh) for dx in range(kw)], axis=3)
    c4 = tf.matmul(tf.reshape(windows, [m * oh * ow, kh * kw * c]), tf.reshape(wt.k4, [kh * kw * c, f4])) + wt.b4
    return a1, tf.reshape(c4, [m, oh * ow * f4])


def _logits(wt: _Weights, a1, c4):
    """The logits from state rows ``a1``, ``c4``, padded with -inf to whole blocks of classes."""
    hidden = tf.nn.relu(tf.nn.bias_add(tf.matmul(tf.nn.relu(c4), wt.w2), wt.b2) + a1)
    return tf.nn.bias_add(tf.matmul(hidden, wt.wo), wt.bo)


def _best_and_gap(z):
    """Each row's argmax and its best logit minus its second best, from padded logits ``z``.

    By blocks of ``TOP_TWO_BLOCK`` classes: block maxima, then the best block's own top two, which
    costs one pass over ``z`` where an argmax and a masked second maximum would cost several. The
    first of equal maxima wins, as in ``argmax``. The gap is NaN where a logit is NaN
    (``reduce_max`` propagates it) or the best one is infinite.
    """
    m, n_blocks = tf.shape(z)[0], z.shape[1] // TOP_TWO_BLOCK
    blocks = tf.reshape(z, [m, n_blocks, TOP_TWO_BLOCK])
    block_max = tf.reduce_max(blocks, axis=2)
    best_block = tf.argmax(block_max, axis=1, output_type=tf.int32)
    inside = tf.gather(blocks, best_block, axis=1, batch_dims=1)
    best_inside = tf.argmax(inside, axis=1, output_type=tf.int32)
    first = tf.reduce_max(inside, axis=1)

    def without(values, index):
        hit = tf.one_hot(index, tf.shape(values)[1], on_value=True, off_value=False)
        return tf.reduce_max(tf.where(hit, -np.inf, values), axis=1)

    second = tf.maximum(without(inside, best_inside), without(block_max, best_block))
    gap = tf.where(tf.math.is_finite(first), first - second, np.nan)
    return best_block * TOP_TWO_BLOCK + best_inside, gap


def _over_chunks(n_chunks, evaluate):
    """``evaluate(i)`` -> (classes, gaps) for chunks ``i`` in ``[0, n_chunks)``, one after the other, concatenated."""
    arrays = (
        tf.TensorArray(tf.int32, size=n_chunks, infer_shape=False, element_shape=tf.TensorShape([None])),
        tf.TensorArray(tf.float32, size=n_chunks, infer_shape=False, element_shape=tf.TensorShape([None])),
    )

    def body(i, classes, gaps):
        c, g = evaluate(i)
        return i + 1, classes.write(i, c), gaps.write(i, g)

    _, classes, gaps = tf.while_loop(lambda i, *_: i < n_chunks, body, (tf.constant(0), *arrays), parallel_iterations=1)
    return classes.concat(), gaps.concat()


@tf.function(autograph=False)
def _fill(wt: _Weights, pooled, a1_var, c4_var, bounds):
    """Write the unpruned state of every image; its classes and gaps. ``bounds`` (chunks, 2): [lo, hi) rows."""

    def chunk(i):
        lo, hi = bounds[i, 0], bounds[i, 1]
        a1, c4 = _initial(wt, pooled[lo:hi])
        rows = tf.range(lo, hi)
        a1_var.scatter_update(tf.IndexedSlices(a1, rows))
        c4_var.scatter_update(tf.IndexedSlices(c4, rows))
        return _best_and_gap(_logits(wt, a1, c4))

    return _over_chunks(tf.shape(bounds)[0], chunk)


@tf.function(autograph=False)
def _prune(wt: _Weights, pooled, a1_var, c4_var, channels, bounds, images):
    """Remove ``channels[i]`` from the state of ``images[bounds[i, 0]:bounds[i, 1]]``, chunk after chunk.

    Returns the classes and gaps of those images, in the order of ``images``.
    """
    h, w, c = pooled.shape[1:]
    flat = tf.reshape(pooled, [-1])
    positions = tf.range(h * w, dtype=tf.int64) * c  # of channel 0 within an image's flattened (H, W, C) values

    def chunk(i):
        channel, rows = channels[i], images[bounds[i, 0] : bounds[i, 1]]
        offsets = tf.cast(rows, tf.int64)[:, None] * (h * w * c) + positions + tf.cast(channel, tf.int64)
        x = tf.gather(flat, offsets)  # (m, H*W): the channel's values
        a1 = tf.gather(a1_var, rows) - tf.matmul(x, wt.fc1_by_channel[channel])
        c4 = tf.gather(c4_var, rows) - tf.matmul(x, wt.conv_by_channel[channel])
        a1_var.scatter_update(tf.IndexedSlices(a1, rows))
        c4_var.scatter_update(tf.IndexedSlices(c4, rows))
        return _best_and_gap(_logits(wt, a1, c4))

    return _over_chunks(tf.shape(bounds)[0], chunk)


_INDICES = tf.TensorSpec([None], tf.int32)
_BOUNDS = tf.TensorSpec([None, 2], tf.int32)


def _compiled(function, wt: _Weights, pooled, a1_var, c4_var, *specs: tf.TensorSpec):
    """``function``'s graph for any number of images: traced on the first call per architecture, then reused."""
    pooled_spec = tf.TensorSpec([None, *pooled.shape[1:]], tf.float32)
    return function.get_concrete_function(wt, pooled_spec, a1_var, c4_var, *specs)


@tf.function(autograph=False)
def _state_logits(wt: _Weights, a1_var, c4_var):
    return _logits(wt, a1_var.read_value(), c4_var.read_value())


# ----------------------------------------------------------------------------------------------
# The tail and its state
# ----------------------------------------------------------------------------------------------
class ClosedFormTail:
    """The closed form of a tail sub-model (see the module docstring); ``recognise`` builds it or says None."""

    def __init__(self, pool_shape, fc1, conv, fc2, out) -> None:
        h, w, c = (int(s) for s in pool_shape)
        w1, b1 = _weights(fc1)
        k4, b4 = _weights(conv)
        w2, b2 = _weights(fc2)
        wo, bo = _weights(out)
        kh, kw, _, f4 = k4.shape
        oh, ow = h - kh + 1, w - kw + 1
        self.pool_shape = (h, w, c)
        self.n_classes = wo.shape[1]
        # Per channel, the linear maps from its (H*W) pooled values to a1 and to the flattened c4.
        by_channel_conv = np.zeros((c, h * w, oh * ow * f4))
        for y in range(oh):
            for x in range(ow):
                for dy in range(kh):
                    for dx in range(kw):
                        by_channel_conv[:, (y + dy) * w + (x + dx), (y * ow + x) * f4 : (y * ow + x + 1) * f4] = k4[
                            dy, dx
                        ]
        # A padding class scores -inf, or NaN (a near tie) if the hidden layer is not finite.
        pad = -self.n_classes % TOP_TWO_BLOCK
        wo = np.concatenate([wo, np.zeros((wo.shape[0], pad))], axis=1)
        bo = np.concatenate([bo, np.full(pad, -np.inf)])

        def f32(a: np.ndarray) -> tf.Tensor:
            return tf.constant(np.asarray(a, dtype=np.float32))

        self._wt = _Weights(
            f32(w1.reshape(h * w, c, -1).transpose(1, 0, 2)),
            f32(by_channel_conv),
            *(f32(a) for a in (w1, b1, k4, b4, w2, b2, wo, bo)),
        )
        self.state_widths = (w1.shape[1], oh * ow * f4)

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
        return cls(pool_out.shape[1:], fc1, conv, fc2, out)

    def best_and_gap(self, z) -> tuple[tf.Tensor, tf.Tensor]:
        """Each row's best class and logit gap, from logits padded with -inf to whole blocks of ``TOP_TWO_BLOCK``."""
        return _best_and_gap(tf.convert_to_tensor(z, dtype=tf.float32))

    def start(self, pooled: np.ndarray, chunk: int = CLOSED_FORM_CHUNK) -> ClosedFormState:
        """The state of every image of ``pooled`` (n, H, W, C), to be pruned step by step."""
        return ClosedFormState(self, pooled, chunk)


def _chunk_table(lengths: Sequence[int], chunk: int) -> np.ndarray:
    """[lo, hi) bounds (chunks, 2) that cut consecutive runs of ``lengths`` items into pieces of at most ``chunk``."""
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    bounds = [(lo, min(lo + chunk, end)) for s, end in itertools.pairwise(starts) for lo in range(s, end, chunk)]
    return np.asarray(bounds, dtype=np.int32).reshape(-1, 2)


class ClosedFormState:
    """The closed form's state (``a1``, ``c4``) of every image, pruned channel by channel.

    Created with every image's unpruned state, whose classes and logit gaps are
    ``initial_classes``/``initial_gaps``. Its memory (about 100 MB for the CSAW validation sets)
    goes when the state goes: the compiled functions hold no reference to it.
    """

    def __init__(self, tail: ClosedFormTail, pooled: np.ndarray, chunk: int) -> None:
        n = len(pooled)
        self._tail, self.chunk = tail, chunk
        self._pooled = tf.convert_to_tensor(np.asarray(pooled, dtype=np.float32))
        f1, f4 = tail.state_widths
        self._a1 = tf.Variable(tf.zeros([n, f1]), shape=tf.TensorShape([None, f1]), trainable=False)
        self._c4 = tf.Variable(tf.zeros([n, f4]), shape=tf.TensorShape([None, f4]), trainable=False)
        fill = _compiled(_fill, tail._wt, self._pooled, self._a1, self._c4, _BOUNDS)
        classes, gaps = fill(tail._wt, self._pooled, self._a1, self._c4, _chunk_table([n], chunk))
        #: Each image's best class and logit gap (see ``ClosedFormTail.best_and_gap``) before any pruning.
        self.initial_classes, self.initial_gaps = classes.numpy().astype(np.int64), gaps.numpy()

    def prune_steps(self, channels: Sequence[int], images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Remove ``channels[j]`` from the state of ``images[j]`` (distinct indices), for each j in turn.

        Returns the classes and logit gaps of all those images afterwards, concatenated in order.
        """
        lengths = [len(i) for i in images]
        table = _chunk_table(lengths, self.chunk)
        per_chunk = np.repeat(np.asarray(channels, dtype=np.int32), [-(-n // self.chunk) for n in lengths])
        flat = np.concatenate([np.asarray(i, dtype=np.int32) for i in images]) if images else np.empty(0, np.int32)
        prune = _compiled(_prune, self._tail._wt, self._pooled, self._a1, self._c4, _INDICES, _BOUNDS, _INDICES)
        classes, gaps = prune(self._tail._wt, self._pooled, self._a1, self._c4, per_chunk, table, flat)
        return classes.numpy().astype(np.int64), gaps.numpy()

    def prune(self, channel: int, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remove ``channel`` from the state of ``images`` (distinct indices); their best classes and logit gaps."""
        return self.prune_steps([channel], [images])

    def logits(self) -> np.ndarray:
        """The logits of every image in the current state, float32 (n, classes)."""
        return _state_logits(self._tail._wt, self._a1, self._c4).numpy()[:, : self._tail.n_classes]
