"""The pruning sweep: prune conv channels one at a time and record what the network predicts.

Why this is fast
----------------
Zeroing output channel ``c`` of the pruned convolution (``conv_3``) makes channel ``c`` of the
pooling layer after it (``pool_3``) exactly zero. So the layers up to the pooling layer (90 % of
the network's arithmetic) run once, and each pruning step re-runs only the tail after it, on the
cached activations with the pruned channels masked, and only for the images the step can change:
an image whose channel ``c`` is already zero everywhere keeps its prediction. Dormant channels,
the first to be pruned, are zero for almost every image, so those steps cost next to nothing.

For the CSAW head (two heads from ``pool_3`` added, ReLU, softmax; see ``LinearTail``), the tail
is not re-run either: fc_1 and conv_4 are linear in ``pool_3``, so their pre-activations are kept
per image and pruning channel ``c`` only subtracts channel ``c``'s share; what is evaluated again
for a touched image is fc_2 and the output layer (46 % of the tail's arithmetic). That state stays
in TensorFlow and a whole step is one compiled call (``ClosedFormState``), which returns only
each image's class and the gap between its two best logits, so the sweep costs little more than
those two matrix products. Other tails go through the Keras tail sub-model.

Why it is exact
---------------
Keras's float32 results on a CPU depend on the batch an image is evaluated in: its size and the
image's place in it (not the other images' values). We measured it on the real CSAW weights:
the same image gives other low-order bits, and a near-tie argmax can flip. So a class is taken
from any other computation only when the two best scores are far enough apart that float
rounding cannot swap them (the tie margin, ``DEFAULT_TIE_MARGIN``; ``tests/test_sweep.py``
measures on the real weights how far other batch layouts and the closed-form tail are from
Keras: a few % of the margin). Every near tie, and every reference batch the Keras path re-runs,
is evaluated by the Keras tail at the image's place in exactly the batch that
``pruned_model.predict(images, batch_size)`` forms (its other places may hold other images: they
do not change it, which a test checks bit for bit). The result equals, image for image and step
for step, the argmax of re-running the pruned Keras model (``naive_predictions``);
``tests/test_sweep.py`` and ``benchmarks/sweep.py`` check that, on the real CSAW weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lib.errors import InputError
from lib.metrics import attack_success_columns
from lib.models import check_prunable
from lib.pruning import prune_channels

DEFAULT_BATCH_SIZE = 1024
#: An image whose two best scores s1 >= s2 satisfy s1 - s2 <= margin * (|s1| + |s2|) is a near
#: tie (for softmax outputs: logits closer than about 2e-3): its class is settled by re-running
#: its reference batch. Evaluating an image in another batch moves its scores far less
#: (``tests/test_sweep.py`` measures it on the real CSAW weights and requires it below 1 %).
DEFAULT_TIE_MARGIN = 1e-3
#: Images evaluated together by the closed-form tail.
CLOSED_FORM_CHUNK = 1024
#: Classes per block when the closed-form tail finds each image's two best logits.
TOP_TWO_BLOCK = 16
#: The closed-form tail's near-tie margin, in multiples of the tie margin: its float32 state
#: accumulates rounding over the steps (measured on the real CSAW weights: its logits stay within
#: 20 % of the tie margin of Keras's, so within 5 % of this wider margin; ``tests/test_sweep.py``).
CLOSED_FORM_MARGIN_FACTOR = 4.0


# ----------------------------------------------------------------------------------------------
# The closed-form tail
# ----------------------------------------------------------------------------------------------
def _call(tensor) -> tuple[object, list]:
    """The layer that computed ``tensor`` in a functional graph, and the tensors that call read."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, []
    node = history.operation._inbound_nodes[history.node_index]
    return history.operation, list(node.input_tensors)


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


def _weights(layer) -> tuple[np.ndarray, np.ndarray]:
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(layer.bias).astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
    return kernel, bias


class LinearTail:
    """The CSAW tail in closed form, evaluated incrementally as channels are pruned.

    Recognised form (the DeepID / CSAW BadNet head, from the pooling layer ``P`` on)::

        softmax(Dense_o(relu(Dense_1(Flatten(P)) + Dense_2(Flatten(relu(Conv2D(P)))))))

    with linear ``Dense_1``/``Dense_2``, a stride-1 ``valid`` channels-last ``Conv2D`` with ReLU
    and float32 layers. The pre-activations ``a1 = Dense_1(Flatten(P))`` and ``c4 = Conv2D(P)``
    (before its ReLU) are linear in ``P``, so pruning channel ``c`` subtracts channel ``c``'s share
    of them: its H*W pooled values times a (H*W, F1) slice of ``Dense_1``'s kernel and a
    (H*W, Ho*Wo*F4) matrix holding ``Conv2D``'s kernel at every output position (for CSAW 20 x 160
    and 20 x 960 weights, against 1,200 x 160 and 2 x 2 x 60 x 80 for the layers themselves). Of
    the tail only ``Dense_2`` on the ReLU of ``c4`` and the output layer run again, on the touched
    images: 46 % of the tail's multiply-adds. The logits, not the softmax, are enough for the
    argmax. The updates accumulate float32 rounding (no worse than evaluating the layers
    directly, a few % of the tie margin, except after the last channels where the state is mostly
    cancelled out: up to 20 %), hence ``CLOSED_FORM_MARGIN_FACTOR``.
    """

    def __init__(self, pool_shape, fc1, conv, fc2, out) -> None:
        import tensorflow as tf

        h, w, c = (int(s) for s in pool_shape)
        w1, b1 = _weights(fc1)
        k4, b4 = _weights(conv)
        w2, b2 = _weights(fc2)
        wo, bo = _weights(out)
        kh, kw, _, f4 = k4.shape
        oh, ow = h - kh + 1, w - kw + 1
        self.pool_shape = (h, w, c)
        self.hidden_units = w1.shape[1]
        #: Conv2D's output (Ho, Wo, F4); the state keeps it flattened, as Flatten orders it.
        self.conv_shape = (oh, ow, f4)
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
        # The output layer padded to whole blocks of classes (see ``best_and_gap``); a padding
        # class scores -inf, or NaN (a near tie) if the hidden layer is not finite.
        self._blocks = -(-self.n_classes // TOP_TWO_BLOCK)
        pad = self._blocks * TOP_TWO_BLOCK - self.n_classes
        wo = np.concatenate([wo, np.zeros((wo.shape[0], pad))], axis=1)
        bo = np.concatenate([bo, np.full(pad, -np.inf)])
        f32 = lambda a: tf.constant(np.asarray(a, dtype=np.float32))  # noqa: E731
        self.fc1_by_channel = f32(w1.reshape(h * w, c, -1).transpose(1, 0, 2))
        self.conv_by_channel = f32(by_channel_conv)
        self._w1, self._b1, self._k4, self._b4, self._w2, self._b2, self._wo, self._bo = (
            f32(a) for a in (w1, b1, k4, b4, w2, b2, wo, bo)
        )

    def initial(self, x):
        """``a1`` (m, F1) and the flattened ``c4`` (m, Ho*Wo*F4) of the unpruned tail, from pooled values ``x``
        (m, H, W, C).
        """
        import tensorflow as tf

        (h, w, c), (oh, ow, f4) = self.pool_shape, self.conv_shape
        kh, kw = h - oh + 1, w - ow + 1
        m = tf.shape(x)[0]
        a1 = tf.matmul(tf.reshape(x, [m, h * w * c]), self._w1) + self._b1
        # conv_4 as one matmul: every (kh, kw, C) window, in the kernel's order.
        windows = tf.stack([x[:, dy : dy + oh, dx : dx + ow] for dy in range(kh) for dx in range(kw)], axis=3)
        c4 = (
            tf.matmul(tf.reshape(windows, [m * oh * ow, kh * kw * c]), tf.reshape(self._k4, [kh * kw * c, f4]))
            + self._b4
        )
        return a1, tf.reshape(c4, [m, oh * ow * f4])

    def logits(self, a1, c4):
        """The logits (before the softmax) from state rows ``a1``, ``c4``, padded with -inf to whole blocks of
        classes.
        """
        import tensorflow as tf

        hidden = tf.nn.relu(tf.nn.bias_add(tf.matmul(tf.nn.relu(c4), self._w2), self._b2) + a1)
        return tf.nn.bias_add(tf.matmul(hidden, self._wo), self._bo)

    def best_and_gap(self, z):
        """Each row's argmax and its best logit minus its second best, from padded logits ``z``.

        By blocks of ``TOP_TWO_BLOCK`` classes: block maxima, then the best block's own top two,
        which costs one pass over ``z`` where TensorFlow's argmax and a masked second maximum
        would cost several. The first of equal maxima wins, as in ``argmax``. The gap is NaN
        where a logit is NaN (``reduce_max`` propagates it) or the best one is infinite.
        """
        import tensorflow as tf

        m = tf.shape(z)[0]
        blocks = tf.reshape(z, [m, self._blocks, TOP_TWO_BLOCK])
        block_max = tf.reduce_max(blocks, axis=2)
        best_block = tf.argmax(block_max, axis=1, output_type=tf.int32)
        inside = tf.gather(blocks, best_block, axis=1, batch_dims=1)
        best_inside = tf.argmax(inside, axis=1, output_type=tf.int32)
        first = tf.reduce_max(inside, axis=1)

        def without(values, index):
            return tf.reduce_max(
                tf.where(tf.one_hot(index, tf.shape(values)[1], on_value=True, off_value=False), -np.inf, values),
                axis=1,
            )

        second = tf.maximum(without(inside, best_inside), without(block_max, best_block))
        gap = tf.where(tf.math.is_finite(first), first - second, np.nan)
        return best_block * TOP_TWO_BLOCK + best_inside, gap

    @classmethod
    def recognise(cls, tail: keras.Model) -> LinearTail | None:
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
            if (
                type(c) is keras.layers.Conv2D
                and conv is None
                and len(inputs) == 1
                and inputs[0] is pool_out
                and _float32(c)
                and c.activation is keras.activations.relu
                and tuple(c.strides) == (1, 1)
                and tuple(c.dilation_rate) == (1, 1)
                and c.padding == "valid"
                and c.groups == 1
                and c.data_format == "channels_last"
                and c.lora_rank is None
            ):
                conv, fc2 = c, dense
                continue
            return None
        if fc1 is None or conv is None:
            return None
        return cls(pool_out.shape[1:], fc1, conv, fc2, out)

    def start(self, pooled: np.ndarray, chunk: int = CLOSED_FORM_CHUNK) -> ClosedFormState:
        """The closed form's state of every image of ``pooled`` (n, H, W, C), to be pruned step by step."""
        return ClosedFormState(self, pooled, chunk)


def _over_chunks(total, chunk: int, evaluate):
    """``evaluate(lo, hi)`` -> (classes, gaps) over ``[0, total)`` in chunks, one after the other, concatenated
    (in a graph).
    """
    import tensorflow as tf

    n_chunks = (total + chunk - 1) // chunk
    arrays = (
        tf.TensorArray(tf.int32, size=n_chunks, infer_shape=False, element_shape=tf.TensorShape([None])),
        tf.TensorArray(tf.float32, size=n_chunks, infer_shape=False, element_shape=tf.TensorShape([None])),
    )

    def body(i, classes, gaps):
        c, g = evaluate(i * chunk, tf.minimum((i + 1) * chunk, total))
        return i + 1, classes.write(i, c), gaps.write(i, g)

    _, classes, gaps = tf.while_loop(lambda i, *_: i < n_chunks, body, (tf.constant(0), *arrays), parallel_iterations=1)
    return classes.concat(), gaps.concat()


class ClosedFormState:
    """The closed-form tail's state (``a1``, ``c4``) of every image, pruned channel by channel.

    The state and the pooled values live in TensorFlow (variables updated in place) and a whole
    step is one compiled call, which loops over its images ``chunk`` at a time and returns only
    their classes and logit gaps: no per-chunk Python, no logits copied out. Created with every
    image's unpruned state, whose classes and logit gaps are ``initial_classes``/``initial_gaps``.
    """

    def __init__(self, tail: LinearTail, pooled: np.ndarray, chunk: int) -> None:
        import tensorflow as tf

        n, (h, w, c) = len(pooled), tail.pool_shape
        self._tail, self.chunk = tail, chunk
        self._pooled = tf.constant(np.asarray(pooled, dtype=np.float32))
        self._a1 = tf.Variable(tf.zeros([n, tail.hidden_units]), trainable=False)
        self._c4 = tf.Variable(tf.zeros([n, int(np.prod(tail.conv_shape))]), trainable=False)
        flat = tf.reshape(self._pooled, [-1])
        positions = tf.range(h * w, dtype=tf.int64) * c  # of channel 0 within an image's flattened (H, W, C) values

        def fill(x):  # the unpruned state of every image, from its pooled values x
            def chunk_of(lo, hi):
                a1, c4 = tail.initial(x[lo:hi])
                rows = tf.range(lo, hi)
                self._a1.scatter_update(tf.IndexedSlices(a1, rows))
                self._c4.scatter_update(tf.IndexedSlices(c4, rows))
                return tail.best_and_gap(tail.logits(a1, c4))

            return _over_chunks(tf.shape(x)[0], chunk, chunk_of)

        def step(images, channel):  # remove channel from the state of images
            fc1, conv = tail.fc1_by_channel[channel], tail.conv_by_channel[channel]
            offsets = positions + tf.cast(channel, tf.int64)

            def chunk_of(lo, hi):
                rows = images[lo:hi]
                x = tf.gather(
                    flat, tf.cast(rows, tf.int64)[:, None] * (h * w * c) + offsets
                )  # (m, H*W): the channel's values
                a1 = tf.gather(self._a1, rows) - tf.matmul(x, fc1)
                c4 = tf.gather(self._c4, rows) - tf.matmul(x, conv)
                self._a1.scatter_update(tf.IndexedSlices(a1, rows))
                self._c4.scatter_update(tf.IndexedSlices(c4, rows))
                return tail.best_and_gap(tail.logits(a1, c4))

            return _over_chunks(tf.shape(images)[0], chunk, chunk_of)

        self._fill = tf.function(fill, autograph=False).get_concrete_function(
            tf.TensorSpec([None, h, w, c], tf.float32)
        )
        self._step = tf.function(step, autograph=False).get_concrete_function(
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)
        )
        classes, gaps = self._fill(self._pooled)
        #: Each image's best class and logit gap (as ``LinearTail.best_and_gap``) before any pruning.
        self.initial_classes, self.initial_gaps = classes.numpy().astype(np.int64), gaps.numpy()

    def prune(self, channel: int, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remove ``channel`` from the state of ``images`` (distinct indices); their best classes and logit gaps."""
        classes, gaps = self._step(np.asarray(images, dtype=np.int32), np.int32(channel))
        return classes.numpy().astype(np.int64), gaps.numpy()

    def logits(self) -> np.ndarray:
        """The logits of every image in the current state, float32 (n, classes)."""
        n = int(self._a1.shape[0])
        z = np.concatenate(
            [
                self._tail.logits(self._a1[lo : lo + self.chunk], self._c4[lo : lo + self.chunk]).numpy()
                for lo in range(0, n, self.chunk)
            ]
        )
        return z[:, : self._tail.n_classes]


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
class SweepEngine:
    """Predictions of a network after each step of pruning channels of one conv layer.

    Works for any single-output Keras functional model in which ``pool_layer`` directly follows
    ``conv_layer`` (a Conv2D whose activation maps 0 to 0) and is a max/average pooling layer.
    ``mode`` picks how a step is evaluated: ``"changed"`` (the default: only the images the step
    touches; through ``LinearTail`` when the tail has the CSAW form and ``closed_form`` is true,
    else the tail sub-model on the reference batches holding an affected image) or ``"tail"`` (the
    tail sub-model on every image: the plain cached-prefix re-run, kept as a benchmark baseline).
    All give the same predictions.
    """

    def __init__(
        self,
        model: keras.Model,
        conv_layer: str,
        pool_layer: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        mode: str = "changed",
        tie_margin: float = DEFAULT_TIE_MARGIN,
        closed_form: bool = True,
    ) -> None:
        if mode not in ("changed", "tail"):
            raise ValueError(f"mode must be 'changed' or 'tail', got {mode!r}")
        self.model = model
        self.conv_layer = conv_layer
        self.pool_layer = pool_layer
        self.batch_size = batch_size
        self.tie_margin = tie_margin
        # The same margin on logits: for softmax scores s1 >= s2 of logits z1 >= z2,
        # (s1 - s2) / (s1 + s2) = tanh((z1 - z2) / 2).
        self._logit_margin = 2.0 * float(np.arctanh(min(tie_margin, 1.0 - 1e-12)))
        check_prunable(model, conv_layer, pool_layer)
        pool = model.get_layer(pool_layer)
        self.tail = keras.Model(pool.output, model.outputs[0], name=f"tail_after_{pool_layer}")
        self.mode = mode
        #: The tail in closed form (``LinearTail``) when ``mode="changed"``, ``closed_form`` and the tail
        #: has the recognised shape; otherwise None and touched images go through the Keras tail.
        self.linear = LinearTail.recognise(self.tail) if (closed_form and mode == "changed") else None
        #: Image evaluations of the Keras tail over the last run (a naive sweep does 61 per image).
        self.evaluated = 0
        #: Image evaluations of the closed-form tail over the last run.
        self.closed_form_evaluated = 0
        #: Images whose class was settled by the Keras tail at their reference place because of a near tie.
        self.near_ties = 0

    # ------------------------------------------------------------------------------------------
    def _exact_classes(self, pooled: np.ndarray, keep: np.ndarray, batches: np.ndarray, out: np.ndarray) -> None:
        """Write into ``out`` the Keras tail's classes for every image of the given reference batches.

        An image is only evaluated in exactly the batch that ``model.predict(images, batch_size)``
        puts it in (see the module docstring). ``predict_on_batch`` runs the same compiled step as
        ``predict`` without its per-call set-up.
        """
        for b in batches:
            lo, hi = self._bounds[b]
            out[lo:hi] = np.argmax(self.tail.predict_on_batch(pooled[lo:hi] * keep), axis=-1)
            self.evaluated += hi - lo

    def _touched_classes(self, pooled: np.ndarray, keep: np.ndarray, touched: np.ndarray, out: np.ndarray) -> None:
        """Classes of the ``touched`` images after this step, written into ``out``.

        A reference batch in which most images are touched is simply re-run. The others' touched
        images are evaluated together, packed into batches of their own: that differs from the
        reference only in float rounding, which cannot move a class unless the image is a near
        tie, and the batches holding a near tie are then re-run as the reference forms them.
        """
        batch = self._batch_of[touched]
        counts = np.bincount(batch, minlength=len(self._bounds))
        sizes = np.array([hi - lo for lo, hi in self._bounds])
        dense = np.flatnonzero(2 * counts >= sizes)
        self._exact_classes(pooled, keep, dense, out)
        sparse = touched[2 * counts[batch] < sizes[batch]]
        if sparse.size == 0:
            return
        scores = np.concatenate(
            [
                self.tail.predict_on_batch(pooled[sparse[i : i + self.batch_size]] * keep)
                for i in range(0, sparse.size, self.batch_size)
            ]
        )
        self.evaluated += sparse.size
        out[sparse] = np.argmax(scores, axis=-1)
        top2 = -np.partition(-scores, 1, axis=-1)[:, :2].astype(np.float64)
        ties = sparse[top2[:, 0] - top2[:, 1] <= self.tie_margin * (np.abs(top2[:, 0]) + np.abs(top2[:, 1]))]
        if ties.size:
            self.near_ties += ties.size
            self._exact_classes(pooled, keep, np.unique(self._batch_of[ties]), out)

    def _closed_form_classes(
        self, images: np.ndarray, classes: np.ndarray, gaps: np.ndarray, k: int, out: np.ndarray, ties: list
    ) -> None:
        """Write into ``out`` the classes of ``images`` at step ``k``, from the closed-form tail's ``classes`` and
        logit ``gaps``.

        Its float32 logits differ from the Keras tail's by float rounding only, far less than the
        tie margin (``tests/test_sweep.py`` measures it on the real weights), so an image whose
        two best logits are further apart than the margin has the class Keras gives it. A near
        tie gets the placeholder ``-(its number + 1)`` and is settled at the end (``_settle_ties``).
        """
        self.closed_form_evaluated += images.size
        near = ~(gaps > CLOSED_FORM_MARGIN_FACTOR * self._logit_margin)  # NaN counts as a near tie
        if near.any():
            first = sum(len(t[1]) for t in ties)
            classes = classes.copy()
            classes[near] = -(first + 1 + np.arange(int(near.sum())))
            ties.append((k, images[near]))
        out[images] = classes

    def _settle_ties(
        self, pooled: np.ndarray, order: Sequence[int], ties: list[tuple[int, np.ndarray]], out: np.ndarray
    ) -> None:
        """Replace the near-tie placeholders in ``out`` by the Keras tail's classes at the images' reference places.

        The Keras tail's result for an image depends on the size of its batch and its place in it,
        not on the other images' values (``tests/test_sweep.py`` checks this bit for bit on the real
        weights). So the near ties of the whole sweep, each with the channels pruned at its step, are
        evaluated together: each at its own place in a batch of its reference batch's size, the other
        places zero. Ties at the same place and batch size go into separate batches.
        """
        steps = np.concatenate([np.full(len(i), k) for k, i in ties])
        images = np.concatenate([i for _, i in ties])
        self.near_ties += images.size
        rank = np.full(pooled.shape[-1], len(order))
        rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        batch = self._batch_of[images]
        starts = np.array([lo for lo, _ in self._bounds])[batch]
        sizes = np.array([hi - lo for lo, hi in self._bounds])[batch]
        places = images - starts
        key = sizes * (self.batch_size + 1) + places
        by_key = np.argsort(key, kind="stable")
        first = np.searchsorted(key[by_key], key[by_key])
        round_ = np.empty_like(by_key)
        round_[by_key] = np.arange(by_key.size) - first  # how many earlier ties share this size and place
        classes = np.empty(images.size, dtype=np.int64)
        for size in np.unique(sizes):
            for r in np.unique(round_[sizes == size]):
                members = np.flatnonzero((sizes == size) & (round_ == r))
                keep = (rank[None, :] >= steps[members, None]).astype(np.float32)
                x = np.zeros((int(size), *pooled.shape[1:]), dtype=np.float32)
                x[places[members]] = pooled[images[members]] * keep[:, None, None, :]
                scores = self.tail.predict_on_batch(x)
                classes[members] = np.argmax(scores[places[members]], axis=-1)
                self.evaluated += int(size)
        pending = out < 0
        out[pending] = classes[-out[pending] - 1]

    def _layout(self, sizes: Sequence[int]) -> None:
        """Reference batches: each set is cut into ``batch_size`` chunks from its own start, as ``predict`` does."""
        bounds, batch_of = [], []
        offset = 0
        for n in sizes:
            for lo in range(0, n, self.batch_size):
                hi = min(lo + self.batch_size, n)
                batch_of.append(np.full(hi - lo, len(bounds)))
                bounds.append((offset + lo, offset + hi))
            offset += n
        self._bounds = bounds
        self._batch_of = np.concatenate(batch_of) if batch_of else np.empty(0, dtype=np.int64)

    def predictions(
        self, pooled_sets: Sequence[np.ndarray], order: Sequence[int], progress: bool = True
    ) -> list[np.ndarray]:
        """Predicted classes for each set: (len(order) + 1, n_set), row k after pruning ``order[:k]``.

        ``pooled_sets`` are the cached pooling-layer outputs (n, H, W, C) of the unpruned model,
        one array per image set (for example clean and triggered validation data). Row 0 is the
        unpruned model. Row k equals ``argmax(pruned_k.predict(images_of_set, batch_size))``.
        """
        sizes = [len(p) for p in pooled_sets]
        pooled = np.ascontiguousarray(np.concatenate(pooled_sets), dtype=np.float32)
        n, n_channels = len(pooled), pooled.shape[-1]
        order = [int(c) for c in order]
        if len(set(order)) != len(order) or any(not 0 <= c < n_channels for c in order):
            raise ValueError(f"order must list distinct channels in [0, {n_channels})")
        self._layout(sizes)
        all_batches = np.arange(len(self._bounds))
        self.evaluated = self.closed_form_evaluated = self.near_ties = 0
        keep = np.ones(n_channels, dtype=np.float32)
        out = np.empty((len(order) + 1, n), dtype=np.int64)
        flat = pooled.reshape(n, -1, n_channels)
        nonzero = np.empty((n, n_channels), dtype=bool)  # which channels an image has anything in
        for lo in range(0, n, self.batch_size):
            nonzero[lo : lo + self.batch_size] = flat[lo : lo + self.batch_size].any(axis=1)
        ties: list[tuple[int, np.ndarray]] = []
        if self.linear is not None:
            state = self.linear.start(pooled)
            self._closed_form_classes(np.arange(n), state.initial_classes, state.initial_gaps, 0, out[0], ties)
        else:
            self._exact_classes(pooled, keep, all_batches, out[0])
        for k, channel in enumerate(tqdm(order, desc="pruning sweep", unit="channel", disable=not progress), start=1):
            keep[channel] = 0.0
            out[k] = out[k - 1]
            if self.mode == "tail":
                self._exact_classes(pooled, keep, all_batches, out[k])
                continue
            # Images whose channel is already zero everywhere are unchanged by this step; re-running
            # a batch re-creates its other images' predictions bit for bit (same inputs, same batch).
            touched = np.flatnonzero(nonzero[:, channel])
            if touched.size == 0:
                continue
            if self.linear is not None:
                self._closed_form_classes(touched, *state.prune(channel, touched), k, out[k], ties)
            else:
                self._touched_classes(pooled, keep, touched, out[k])
        if ties:
            self._settle_ties(pooled, order, ties, out)
        splits = np.cumsum(sizes)[:-1]
        return np.split(out, splits, axis=1)


def naive_predictions(
    model: keras.Model,
    conv_layer: str,
    image_sets: Sequence[np.ndarray],
    order: Sequence[int],
    steps: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict[int, list[np.ndarray]]:
    """The reference: for each k in ``steps``, prune ``order[:k]`` in a copy of the model and re-run it whole on
    every set.
    """
    result = {}
    for k in tqdm(list(steps), desc="naive re-evaluation", unit="step", disable=not progress):
        pruned = prune_channels(model, conv_layer, list(order)[:k])
        result[k] = [
            np.argmax(pruned.predict(images, batch_size=batch_size, verbose=0), axis=-1) for images in image_sets
        ]
    return result


# ----------------------------------------------------------------------------------------------
# From predictions to the sweep table and the B' selection
# ----------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """The sweep table (``sweep.csv``) and the predictions behind it."""

    table: pd.DataFrame
    clean_predictions: np.ndarray
    #: Per trigger, (steps + 1, n_images) predicted classes on its triggered validation set.
    triggered_predictions: dict[str, np.ndarray]
    order: np.ndarray
    clean_correct: np.ndarray = field(repr=False)
    n_clean: int = 0


def sweep_table(
    clean_predictions: np.ndarray,
    clean_labels: np.ndarray,
    triggered: Mapping[str, tuple[np.ndarray, np.ndarray]],
    order: Sequence[int],
    mean_activations: np.ndarray,
) -> pd.DataFrame:
    """The ``sweep.csv`` table: one row per step, accuracy and attack success rate in percent.

    ``triggered`` maps each trigger to its (steps + 1, n) predictions and its target labels.
    """
    n_channels = len(mean_activations)
    order = np.asarray(order, dtype=np.int64)
    clean_acc = 100.0 * (clean_predictions == clean_labels[None, :]).mean(axis=1)
    steps = np.arange(len(order) + 1)
    return pd.DataFrame(
        {
            "pruned": steps,
            "fraction": steps / n_channels,
            "channel": pd.array([pd.NA, *order.tolist()], dtype="Int64"),
            "mean_activation": [np.nan, *np.asarray(mean_activations, dtype=np.float64)[order].tolist()],
            "clean_accuracy": clean_acc,
            **attack_success_columns({name: (p, np.asarray(y)[None, :]) for name, (p, y) in triggered.items()}),
        }
    )


def run_pruning_sweep(
    engine: SweepEngine,
    clean_pooled: np.ndarray,
    clean_labels: np.ndarray,
    triggered: Mapping[str, tuple[np.ndarray, np.ndarray]],
    mean_activations: np.ndarray,
    order: Sequence[int],
    progress: bool = True,
) -> SweepResult:
    """Sweep clean and every triggered validation set together (one engine pass) and tabulate it.

    ``triggered`` maps each trigger's name to (its cached pooling activations, its target labels);
    it may be empty.
    """
    names = list(triggered)
    predictions = engine.predictions([clean_pooled, *(triggered[n][0] for n in names)], order, progress=progress)
    clean_preds, triggered_preds = predictions[0], dict(zip(names, predictions[1:], strict=False))
    clean_labels = np.asarray(clean_labels)
    table = sweep_table(
        clean_preds,
        clean_labels,
        {n: (triggered_preds[n], np.asarray(triggered[n][1])) for n in names},
        order,
        mean_activations,
    )
    correct = (clean_preds == clean_labels[None, :]).sum(axis=1)
    return SweepResult(table, clean_preds, triggered_preds, np.asarray(order), correct, len(clean_pooled))


def validate_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Accuracy-drop thresholds in percentage points: each in (0, 100), strictly increasing."""
    values = [float(t) for t in thresholds]
    if not values:
        raise InputError("thresholds", "no threshold given", "pass e.g. thresholds=[2, 4, 10]")
    if any(not 0 < t < 100 for t in values):
        raise InputError(
            "thresholds",
            f"{values} has values outside (0, 100)",
            "give accuracy drops in percentage points, e.g. [2, 4, 10]",
        )
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise InputError("thresholds", f"{values} is not strictly increasing", "sort the thresholds, e.g. [2, 4, 10]")
    return values


def threshold_steps(clean_correct: np.ndarray, n_clean: int, thresholds: Sequence[float]) -> dict[float, int | None]:
    """For each threshold t, the first step at which clean accuracy has dropped by at least t points.

    Computed on correct-image counts with exact rational arithmetic, so a drop of exactly t points
    counts (float percentages could put it a hair either side). None where the sweep never gets there.
    """
    base = int(clean_correct[0])
    result: dict[float, int | None] = {}
    for t in validate_thresholds(thresholds):
        needed = Fraction(str(t)) * n_clean / 100  # images lost
        hits = [k for k, c in enumerate(clean_correct) if base - int(c) >= needed]
        result[t] = hits[0] if hits else None
    return result
