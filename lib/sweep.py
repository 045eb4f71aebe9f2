"""The pruning sweep: prune conv channels one at a time and record what the network predicts.

Why this is fast
----------------
Zeroing output channel ``c`` of the pruned convolution (``conv_3``) makes channel ``c`` of the
pooling layer after it (``pool_3``) exactly zero. So the layers up to the pooling layer (90 % of
the network's arithmetic) run once, and each pruning step re-runs only the tail after it, on the
cached activations with the pruned channels masked, and only for the images the step can change:
an image whose channel ``c`` is already zero everywhere keeps its prediction. Dormant channels,
the first to be pruned, are zero for almost every image, so those steps cost next to nothing.

Why it is exact
---------------
Keras's float32 results on a CPU depend on the batch an image is evaluated in: its size and the
image's place in it (not the other images' values). We measured it on the real CSAW weights:
the same image gives other low-order bits, and a near-tie argmax can flip. So the tail is only
ever evaluated on exactly the batches that ``pruned_model.predict(images, batch_size)`` would
form, and a step re-runs every such batch holding an affected image. The result equals, image
for image and step for step, the argmax of re-running the pruned Keras model
(``naive_predictions``); ``tests/test_sweep.py`` and ``benchmarks/sweep.py`` check that, on the
real CSAW weights.
"""
from __future__ import annotations

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

# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
class SweepEngine:
    """Predictions of a network after each step of pruning channels of one conv layer.

    Works for any single-output Keras functional model in which ``pool_layer`` directly follows
    ``conv_layer`` (a Conv2D whose activation maps 0 to 0) and is a max/average pooling layer.
    ``mode`` picks how a step is evaluated: ``"changed"`` (the default: the tail sub-model on the
    reference batches holding an affected image) or ``"tail"`` (the tail sub-model on every image:
    the plain cached-prefix re-run, kept as a benchmark baseline). Both give the same predictions.
    """

    def __init__(
        self,
        model: keras.Model,
        conv_layer: str,
        pool_layer: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        mode: str = "changed",
        tie_margin: float = DEFAULT_TIE_MARGIN,
    ) -> None:
        if mode not in ("changed", "tail"):
            raise ValueError(f"mode must be 'changed' or 'tail', got {mode!r}")
        self.model = model
        self.conv_layer = conv_layer
        self.pool_layer = pool_layer
        self.batch_size = batch_size
        self.tie_margin = tie_margin
        check_prunable(model, conv_layer, pool_layer)
        pool = model.get_layer(pool_layer)
        self.tail = keras.Model(pool.output, model.outputs[0], name=f"tail_after_{pool_layer}")
        self.mode = mode
        #: Image evaluations of the tail over the last run (the sweep's work; a naive sweep does 61 per image).
        self.evaluated = 0
        #: Images whose class was settled by re-running their reference batch because of a near tie.
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
            [self.tail.predict_on_batch(pooled[sparse[i : i + self.batch_size]] * keep) for i in range(0, sparse.size, self.batch_size)]
        )
        self.evaluated += sparse.size
        out[sparse] = np.argmax(scores, axis=-1)
        top2 = -np.partition(-scores, 1, axis=-1)[:, :2].astype(np.float64)
        ties = sparse[top2[:, 0] - top2[:, 1] <= self.tie_margin * (np.abs(top2[:, 0]) + np.abs(top2[:, 1]))]
        if ties.size:
            self.near_ties += ties.size
            self._exact_classes(pooled, keep, np.unique(self._batch_of[ties]), out)

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
        self.evaluated = self.near_ties = 0
        keep = np.ones(n_channels, dtype=np.float32)
        out = np.empty((len(order) + 1, n), dtype=np.int64)
        self._exact_classes(pooled, keep, all_batches, out[0])
        flat = pooled.reshape(n, -1, n_channels)
        for k, channel in enumerate(tqdm(order, desc="pruning sweep", unit="channel", disable=not progress), start=1):
            keep[channel] = 0.0
            out[k] = out[k - 1]
            if self.mode == "tail":
                self._exact_classes(pooled, keep, all_batches, out[k])
                continue
            # Images whose channel is already zero everywhere are unchanged by this step; re-running
            # a batch re-creates its other images' predictions bit for bit (same inputs, same batch).
            touched = np.flatnonzero(flat[:, :, channel].any(axis=1))
            if touched.size:
                self._touched_classes(pooled, keep, touched, out[k])
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
    clean_preds, triggered_preds = predictions[0], dict(zip(names, predictions[1:]))
    clean_labels = np.asarray(clean_labels)
    table = sweep_table(
        clean_preds, clean_labels, {n: (triggered_preds[n], np.asarray(triggered[n][1])) for n in names}, order, mean_activations
    )
    correct = (clean_preds == clean_labels[None, :]).sum(axis=1)
    return SweepResult(table, clean_preds, triggered_preds, np.asarray(order), correct, len(clean_pooled))


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
