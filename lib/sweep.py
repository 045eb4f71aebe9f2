"""The pruning sweep: prune conv channels one at a time and record what the network predicts.

Why this is fast
----------------
Zeroing output channel ``c`` of the pruned convolution (``conv_3``) makes channel ``c`` of the
pooling layer after it (``pool_3``) exactly zero. So the layers up to the pooling layer are run
once, and each pruning step only re-evaluates what is after it, on the cached activations:

* an image whose channel ``c`` is already zero everywhere is unaffected: its prediction is kept
  (dormant channels are zero for almost every image, so most steps touch few images);
* where the layers that read the pooling output are linear before their activation (``Flatten``
  -> ``Dense`` and ``Conv2D``, as ``fc_1`` and ``conv_4`` in the CSAW network), removing channel
  ``c`` subtracts that channel's contribution from their pre-activations, kept in float64; only
  the rest of the network (the "head") is re-run, on the affected images;
* any other tail falls back to running the tail sub-model on the affected images with the
  pruned channels masked (exact by construction).

Why it is exact
---------------
The incremental float64 sums are not bit-identical to Keras's float32 sums, and a reordered sum
can flip a near-tie argmax. Every image whose two best scores lie within ``tie_rtol`` of each
other is therefore re-evaluated with the Keras tail itself. The result equals, image for image
and step for step, the argmax of re-running the pruned Keras model (``naive_predictions``);
``tests/test_sweep.py`` and ``benchmarks/sweep.py`` check that, on the real CSAW weights.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import keras
import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from tqdm.auto import tqdm

from lib.errors import InputError
from lib.pruning import prune_channels

DEFAULT_BATCH_SIZE = 1024
#: Scores whose top two differ by less than this (relative) are re-checked with the Keras tail.
DEFAULT_TIE_RTOL = 1e-3

_ZERO_PRESERVING_POOLS = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
)


# ----------------------------------------------------------------------------------------------
# The linear first layers of the tail
# ----------------------------------------------------------------------------------------------
@dataclass
class _LinearReader:
    """A layer reading the pooling output that is linear before its activation (Dense after Flatten, or Conv2D)."""

    layer: keras.layers.Layer
    kind: str  # "dense" or "conv"
    kernel: np.ndarray  # float64
    bias: np.ndarray  # float64
    n_channels: int

    def preactivation(self, pooled: np.ndarray) -> np.ndarray:
        """The layer's input to its activation, in float64, for a batch of pooling outputs."""
        x = pooled.astype(np.float64)
        if self.kind == "dense":
            return x.reshape(len(x), -1) @ self.kernel + self.bias
        return self._conv(x, self.kernel) + self.bias

    def contribution(self, channel_values: np.ndarray, channel: int) -> np.ndarray:
        """What one pooling channel (values (m, H, W)) adds to the pre-activation."""
        x = channel_values.astype(np.float64)
        if self.kind == "dense":
            return x.reshape(len(x), -1) @ self.kernel[channel :: self.n_channels]
        return self._conv(x[..., None], self.kernel[:, :, channel : channel + 1, :])

    def _conv(self, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """Valid, strided 2-D convolution (NHWC) as a matmul over sliding windows."""
        kh, kw = kernel.shape[:2]
        sh, sw = self.layer.strides
        windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # (m, H', W', C, kh, kw)
        m, ho, wo = windows.shape[:3]
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(m * ho * wo, -1)
        out = patches @ kernel.reshape(-1, kernel.shape[-1])
        return out.reshape(m, ho, wo, kernel.shape[-1])

    def activate(self, pre: np.ndarray) -> np.ndarray:
        out = np.maximum(pre, 0.0) if self.layer.activation is keras.activations.relu else pre
        return out.astype(np.float32)


def _consumers(model: keras.Model, layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers of ``model``'s own graph that read ``layer``'s output.

    Sub-models built from intermediate tensors (as the tail is) add nodes to shared layers, so
    outbound nodes are filtered to those of ``model`` (Keras keys them ``<id(op)>_ib-<index>``).
    """
    found = []
    for node in layer._outbound_nodes:
        op = node.operation
        if f"{id(op)}_ib-{op._inbound_nodes.index(node)}" in model._nodes:
            found.append(op)
    return found


def _linear_readers(model: keras.Model, pool_layer: keras.layers.Layer) -> tuple[list[_LinearReader], keras.Model] | None:
    """The linear layers reading the pooling output and the head model after them, or None if the tail is not of that form."""
    try:
        consumers = _consumers(model, pool_layer)
    except (AttributeError, ValueError):  # a Keras without these internals: use the exact fallback
        return None
    n_channels = int(pool_layer.output.shape[-1])
    readers: list[_LinearReader] = []
    for layer in consumers:
        if isinstance(layer, keras.layers.Flatten):
            after = _consumers(model, layer)
            if len(after) != 1 or not isinstance(after[0], keras.layers.Dense):
                return None
            layer = after[0]
            kind = "dense"
        elif isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
            if layer.padding != "valid" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
                return None
            if layer.data_format != "channels_last":
                return None
            kind = "conv"
        else:
            return None
        if layer.activation not in (keras.activations.relu, keras.activations.linear):
            return None
        kernel = layer.kernel.numpy().astype(np.float64)
        bias = layer.bias.numpy().astype(np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
        readers.append(_LinearReader(layer, kind, kernel, bias, n_channels))
    if not readers:
        return None
    try:
        head = keras.Model([r.layer.output for r in readers], model.outputs[0], name="head_after_linear_readers")
    except ValueError:  # the output depends on the pooling output through another path
        return None
    return readers, head


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
class SweepEngine:
    """Predictions of a network after each step of pruning channels of one conv layer.

    Works for any single-output Keras functional model in which ``pool_layer`` directly follows
    ``conv_layer`` (a Conv2D whose activation maps 0 to 0) and is a max/average pooling layer.
    ``mode`` picks how a step is evaluated: ``"incremental"`` (the default: linear fast path where
    the tail allows it, else the tail on affected images), ``"changed"`` (the tail sub-model on the
    affected images) or ``"tail"`` (the tail sub-model on every image: the plain cached-prefix
    re-run, kept as a benchmark baseline). All modes give the same predictions.
    """

    def __init__(
        self,
        model: keras.Model,
        conv_layer: str,
        pool_layer: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        tie_rtol: float = DEFAULT_TIE_RTOL,
        mode: str = "incremental",
    ) -> None:
        if mode not in ("incremental", "changed", "tail"):
            raise ValueError(f"mode must be 'incremental', 'changed' or 'tail', got {mode!r}")
        self.model = model
        self.conv_layer = conv_layer
        self.pool_layer = pool_layer
        self.batch_size = batch_size
        self.tie_rtol = tie_rtol
        self._check_structure()
        pool = model.get_layer(pool_layer)
        linear = _linear_readers(model, pool) if mode == "incremental" else None
        self.tail = keras.Model(pool.output, model.outputs[0], name=f"tail_after_{pool_layer}")
        self.readers, self.head = linear if linear else (None, None)
        self.mode = "incremental" if linear else ("tail" if mode == "tail" else "changed")
        #: Images re-checked with the Keras tail because of a near tie, summed over the last run.
        self.rechecked = 0
        #: Image evaluations of the tail or head over the last run (the sweep's work).
        self.evaluated = 0

    @property
    def uses_linear_fast_path(self) -> bool:
        return self.readers is not None

    def _check_structure(self) -> None:
        names = [layer.name for layer in self.model.layers]
        for name in (self.conv_layer, self.pool_layer):
            if name not in names:
                raise InputError("model", f"no layer named {name!r} (layers: {', '.join(names)})", "pass conv_layer=/pool_layer= names of this model")
        if len(self.model.outputs) != 1:
            raise InputError("model", f"{len(self.model.outputs)} outputs", "the sweep scores single-output classifiers")
        conv = self.model.get_layer(self.conv_layer)
        pool = self.model.get_layer(self.pool_layer)
        if not isinstance(conv, keras.layers.Conv2D):
            raise InputError("model", f"layer {self.conv_layer!r} is a {type(conv).__name__}, not a Conv2D", "name the convolution to prune in conv_layer=")
        if not isinstance(pool, _ZERO_PRESERVING_POOLS):
            raise InputError("model", f"layer {self.pool_layer!r} is a {type(pool).__name__}, not a pooling layer", "name the pooling layer after the pruned convolution in pool_layer=")
        if pool.input is not conv.output:
            raise InputError("model", f"{self.pool_layer!r} does not read {self.conv_layer!r} directly", "name a pooling layer that directly follows the pruned convolution")
        zero = keras.ops.convert_to_numpy(conv.activation(keras.ops.zeros((1,))))
        if float(np.abs(zero).max()) != 0.0:
            raise InputError("model", f"{self.conv_layer!r}'s activation does not map 0 to 0, so a pruned channel is not silent", "prune a convolution with ReLU or linear activation")

    # ------------------------------------------------------------------------------------------
    def _batched(self, model: keras.Model, inputs: list[np.ndarray]) -> np.ndarray:
        """``model``'s output in batches of ``batch_size``: the same compiled step as ``predict``, without its per-call set-up."""
        n = len(inputs[0])
        chunks = [
            model.predict_on_batch([x[i : i + self.batch_size] for x in inputs] if len(inputs) > 1 else inputs[0][i : i + self.batch_size])
            for i in range(0, n, self.batch_size)
        ]
        return np.concatenate(chunks)

    def _exact_classes(self, pooled: np.ndarray, keep: np.ndarray, batches: np.ndarray, out: np.ndarray) -> None:
        """Write into ``out`` the Keras tail's classes for every image of the given reference batches.

        Keras's float32 results on a CPU depend on the batch an image is evaluated in (its size and
        the image's place in it, not the other images' values): an image is only evaluated in
        exactly the batch that ``model.predict(images, batch_size)`` puts it in.
        """
        for b in batches:
            lo, hi = self._bounds[b]
            out[lo:hi] = np.argmax(self.tail.predict_on_batch(pooled[lo:hi] * keep), axis=-1)

    def _near_ties(self, scores: np.ndarray) -> np.ndarray:
        top2 = -np.partition(-scores, 1, axis=-1)[:, :2]
        return (top2[:, 0] - top2[:, 1]) <= self.tie_rtol * (np.abs(top2[:, 0]) + np.abs(top2[:, 1]))

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

    def predictions(self, pooled_sets: Sequence[np.ndarray], order: Sequence[int], progress: bool = True) -> list[np.ndarray]:
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
        self.rechecked = 0
        self.evaluated = n
        keep = np.ones(n_channels, dtype=np.float32)
        out = np.empty((len(order) + 1, n), dtype=np.int64)
        self._exact_classes(pooled, keep, all_batches, out[0])
        state = [r.preactivation(pooled) for r in self.readers] if self.readers else None
        flat = pooled.reshape(n, -1, n_channels)
        for k, channel in enumerate(tqdm(order, desc="pruning sweep", unit="channel", disable=not progress), start=1):
            keep[channel] = 0.0
            out[k] = out[k - 1]
            if self.mode == "tail":
                self._exact_classes(pooled, keep, all_batches, out[k])
                self.evaluated += n
                continue
            # Images whose channel is already zero everywhere are unchanged by this step.
            rows = np.flatnonzero(flat[:, :, channel].any(axis=1))
            if rows.size == 0:
                continue
            if state is None:
                batches = np.unique(self._batch_of[rows])
                self._exact_classes(pooled, keep, batches, out[k])
                self.evaluated += sum(hi - lo for lo, hi in (self._bounds[b] for b in batches))
                continue
            values = pooled[rows, ..., channel]
            acts = []
            for reader, pre in zip(self.readers, state):
                pre[rows] -= reader.contribution(values, channel)
                acts.append(reader.activate(pre[rows]))
            scores = self._batched(self.head, acts)
            out[k, rows] = np.argmax(scores, axis=-1)
            self.evaluated += rows.size
            ties = rows[self._near_ties(scores)]
            if ties.size:
                batches = np.unique(self._batch_of[ties])
                exact = np.empty(n, dtype=np.int64)
                self._exact_classes(pooled, keep, batches, exact)
                out[k, ties] = exact[ties]
                self.rechecked += ties.size
                self.evaluated += sum(hi - lo for lo, hi in (self._bounds[b] for b in batches))
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
    """The reference: for each k in ``steps``, prune ``order[:k]`` in a copy of the model and re-run it whole on every set."""
    result = {}
    for k in tqdm(list(steps), desc="naive re-evaluation", unit="step", disable=not progress):
        pruned = prune_channels(model, conv_layer, list(order)[:k])
        result[k] = [np.argmax(pruned.predict(images, batch_size=batch_size, verbose=0), axis=-1) for images in image_sets]
    return result


# ----------------------------------------------------------------------------------------------
# From predictions to the sweep table and the B' selection
# ----------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """The sweep table (``sweep.csv``) and the predictions behind it."""

    table: pd.DataFrame
    clean_predictions: np.ndarray
    poisoned_predictions: np.ndarray
    order: np.ndarray
    clean_correct: np.ndarray = field(repr=False)
    n_clean: int = 0


def sweep_table(
    clean_predictions: np.ndarray,
    clean_labels: np.ndarray,
    poisoned_predictions: np.ndarray,
    poisoned_labels: np.ndarray,
    order: Sequence[int],
    mean_activations: np.ndarray,
) -> pd.DataFrame:
    """The ``sweep.csv`` table: one row per step, accuracy and attack success rate in percent."""
    n_channels = len(mean_activations)
    order = np.asarray(order, dtype=np.int64)
    clean_acc = 100.0 * (clean_predictions == clean_labels[None, :]).mean(axis=1)
    asr = 100.0 * (poisoned_predictions == poisoned_labels[None, :]).mean(axis=1)
    steps = np.arange(len(order) + 1)
    return pd.DataFrame(
        {
            "pruned": steps,
            "fraction": steps / n_channels,
            "channel": pd.array([pd.NA, *order.tolist()], dtype="Int64"),
            "mean_activation": [np.nan, *np.asarray(mean_activations, dtype=np.float64)[order].tolist()],
            "clean_accuracy": clean_acc,
            "attack_success_rate": asr,
        }
    )


def run_pruning_sweep(
    engine: SweepEngine,
    clean_pooled: np.ndarray,
    clean_labels: np.ndarray,
    poisoned_pooled: np.ndarray,
    poisoned_labels: np.ndarray,
    mean_activations: np.ndarray,
    order: Sequence[int],
    progress: bool = True,
) -> SweepResult:
    """Sweep clean and triggered validation data together (one engine pass) and tabulate it."""
    n_clean = len(clean_pooled)
    clean_preds, poisoned_preds = engine.predictions([clean_pooled, poisoned_pooled], order, progress=progress)
    table = sweep_table(clean_preds, np.asarray(clean_labels), poisoned_preds, np.asarray(poisoned_labels), order, mean_activations)
    correct = (clean_preds == np.asarray(clean_labels)[None, :]).sum(axis=1)
    return SweepResult(table, clean_preds, poisoned_preds, np.asarray(order), correct, n_clean)


def validate_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Accuracy-drop thresholds in percentage points: each in (0, 100), strictly increasing."""
    values = [float(t) for t in thresholds]
    if not values:
        raise InputError("thresholds", "no threshold given", "pass e.g. thresholds=[2, 4, 10]")
    if any(not 0 < t < 100 for t in values):
        raise InputError("thresholds", f"{values} has values outside (0, 100)", "give accuracy drops in percentage points, e.g. [2, 4, 10]")
    if any(b <= a for a, b in zip(values, values[1:])):
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
