"""The pruning sweep: prune conv channels one at a time and record what the network predicts.

Why it is fast
--------------
Zeroing output channel ``c`` of the pruned convolution (``conv_3``) makes channel ``c`` of the
pooling layer after it (``pool_3``) exactly zero. So the layers up to the pooling layer (90 % of a
forward pass's arithmetic) run once (``lib.defense.activations.pool_activations``), and a step
re-evaluates only the images whose channel ``c`` is non-zero somewhere: the others keep their
class. Dormant channels, the first pruned, touch almost no image. For the CSAW head the tail is
not re-run either (``Strategy.CLOSED_FORM``, ``lib.sweep.closed_form.tail``): fc_1's and conv_4's
pre-activations are carried per image, a step subtracts the channel's share, and fc_2 and the
output layer are applied to the units their ReLUs let through, about a sixth of the dense
arithmetic (``lib.sweep.closed_form.kernels``, compiled by numba, one image's whole trajectory at a time).
Any other tail goes through the Keras tail sub-model (``Strategy.KERAS_TAIL``). The timings, and what was tried,
are in ``benchmarks/README.md``.

Why it is exact
---------------
Keras's float32 results on a CPU depend on the batch an image is evaluated in: its size and the
image's place in it, not the other images' values; elsewhere the same image gets other low-order
bits, and a near-tie argmax can flip. So a class computed any other way (by the closed form, or
with touched images packed into batches of their own) is kept only when its two best scores
s1 >= s2 are far enough apart that rounding cannot swap them: s1 - s2 > ``tie_margin`` *
(|s1| + |s2|), ``DEFAULT_TIE_MARGIN`` = 1e-3 (for softmax scores: logits more than
2 artanh(1e-3), about 2e-3, apart), and ``CLOSED_FORM_MARGIN_FACTOR`` = 4 times that for the
closed form, whose float32 state (fc_1's and conv_4's pre-activations, carried from step to step)
accumulates rounding over the steps and whose sums run in another order than Keras's.
``tests/test_sweep.py`` measures the distances on the real CSAW weights and requires another
batch layout to move the scores by under 1 % of the margin (on an AMD EPYC Zen 4 both layouts
round alike: 0), and the closed form's logits to stay within 30 % of the margin of Keras's through
all 60 steps (so within 8 % of its own margin): measured 19 % on that processor, the most after
the last channel, where the state is mostly cancelled out (the earlier dense closed form measured
12 % there and 20 % on the machine of the earlier figures). Every near tie gets its class from the
Keras tail at its own place in a batch of its reference batch's size, as
``pruned_model.predict(images, batch_size)`` forms it (``lib.sweep.batches``; a test checks bit
for bit that the batch's other places do not change it). So the result equals, image for image
and step for step, the argmax of re-running the pruned Keras model (``naive_predictions``):
``tests/test_sweep.py`` and ``benchmarks/sweep.py`` check it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import keras
import numpy as np
from tqdm.auto import tqdm

from lib.core.errors import InputError
from lib.defense.metrics import DEFAULT_TIE_MARGIN
from lib.network.models import BATCH_SIZE, sub_model
from lib.network.prunable import check_prunable
from lib.network.pruning import prune_channels
from lib.sweep.batches import ReferenceBatches
from lib.sweep.closed_form.tail import CLOSED_FORM_MARGIN_FACTOR, ClosedFormTail, nonzero_channels

#: How many times the closed form hands back to Python (and the progress bar moves) during a sweep.
_PROGRESS_UPDATES = 10


def tail_model(model: keras.Model, pool_layer: str) -> keras.Model:
    """The layers after ``pool_layer`` as a sub-model from its output (built once per model and layer)."""
    return sub_model(model, model.get_layer(pool_layer).output, model.outputs[0], f"tail_after_{pool_layer}")


#: The strategy value that lets the engine choose: the closed form where the tail allows it.
AUTO = "auto"


class Strategy(enum.Enum):
    """How a step re-evaluates the images it touches; both give the same predictions."""

    #: The CSAW tail in closed form (``lib.sweep.closed_form.tail``): only for a tail of that shape.
    CLOSED_FORM = "closed_form"
    #: The Keras tail sub-model, on the reference batches that hold a touched image: any tail.
    KERAS_TAIL = "keras_tail"


@dataclass(frozen=True)
class SweepStats:
    """What one sweep did: how many image evaluations of each kind, and where its time went."""

    #: Image evaluations of the closed-form tail, the unpruned model's included.
    closed_form_evaluations: int
    #: Image evaluations of the Keras tail (a naive sweep does steps + 1 per image).
    keras_evaluations: int
    #: Evaluations whose class the Keras tail settled at the image's reference place.
    near_ties: int
    #: Every step by the strategy, the unpruned model and the closed form's set-up included.
    seconds_steps: float
    #: Settling the near ties.
    seconds_ties: float


@dataclass(frozen=True)
class SweepRun:
    """Predicted classes for each image set, (steps + 1, n_set), and the sweep's statistics."""

    predictions: list[np.ndarray]
    stats: SweepStats


class _Evaluations(NamedTuple):
    """The classes a sweep computed, step by step (``steps`` non-decreasing); row 0 covers every image."""

    steps: np.ndarray
    images: np.ndarray
    classes: np.ndarray
    near: np.ndarray  # a near tie: the class must come from the Keras tail at the image's reference place


def _concatenate(parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> _Evaluations:
    return _Evaluations(
        np.concatenate([np.full(len(i), k, dtype=np.int64) for k, i, _, _ in parts]),
        *(np.concatenate([p[j] for p in parts]) for j in (1, 2, 3)),
    )


def _touched_images(nonzero: np.ndarray, order: Sequence[int]) -> list[np.ndarray]:
    """For each step, the images whose pruned channel is non-zero somewhere (``nonzero_channels``): the only ones
    the step can change."""
    step, image = np.nonzero(nonzero[:, np.asarray(order, dtype=np.int64)].T)
    return np.split(image, np.searchsorted(step, np.arange(1, len(order))))


def _rows(evaluations: _Evaluations, n: int, n_steps: int) -> np.ndarray:
    """(n_steps + 1, n) classes: row k holds each image's class at its latest evaluation up to step k."""
    out = np.empty((n_steps + 1, n), dtype=np.int64)
    bounds = np.searchsorted(evaluations.steps, np.arange(n_steps + 2))
    for k in range(n_steps + 1):
        if k:
            out[k] = out[k - 1]
        part = slice(bounds[k], bounds[k + 1])
        out[k, evaluations.images[part]] = evaluations.classes[part]
    return out


class SweepEngine:
    """Predictions of a network after each step of pruning channels of one conv layer.

    Works for any single-output Keras functional model in which ``pool_layer`` directly follows
    ``conv_layer`` (a Conv2D whose activation maps 0 to 0) and is a max/average pooling layer.
    ``strategy`` None or ``"auto"`` picks the closed form when the tail has the CSAW shape, else the Keras tail;
    ``Strategy.CLOSED_FORM`` for another tail is refused. The engine keeps nothing of a sweep.
    """

    def __init__(
        self,
        model: keras.Model,
        conv_layer: str,
        pool_layer: str,
        batch_size: int = BATCH_SIZE,
        tie_margin: float = DEFAULT_TIE_MARGIN,
        strategy: Strategy | str | None = None,
    ) -> None:
        if strategy == AUTO:
            strategy = None
        if strategy is not None and not isinstance(strategy, Strategy):
            try:
                strategy = Strategy(strategy)
            except ValueError:
                raise InputError(
                    "strategy",
                    f"{strategy!r} is not a strategy",
                    f"use one of {[AUTO, *(s.value for s in Strategy)]} (notebook 03's sweep_strategy)",
                ) from None
        check_prunable(model, conv_layer, pool_layer)
        self.model, self.conv_layer, self.pool_layer = model, conv_layer, pool_layer
        self.batch_size, self.tie_margin = batch_size, tie_margin
        #: The layers after the pooling layer, as a Keras sub-model.
        self.tail = tail_model(model, pool_layer)
        #: The tail in closed form when the strategy is ``Strategy.CLOSED_FORM``, else None.
        self.closed_form = ClosedFormTail.recognise(self.tail) if strategy is not Strategy.KERAS_TAIL else None
        if strategy is Strategy.CLOSED_FORM and self.closed_form is None:
            raise InputError(
                "strategy",
                f"the layers after {pool_layer!r} are not the CSAW head that Strategy.CLOSED_FORM evaluates",
                "leave strategy unset (the engine then uses the Keras tail) or pass Strategy.KERAS_TAIL",
            )
        #: The strategy this engine uses.
        self.strategy = Strategy.KERAS_TAIL if self.closed_form is None else Strategy.CLOSED_FORM
        # The closed form's margin on logits: softmax scores s1 >= s2 of logits z1 >= z2 have
        # (s1 - s2) / (s1 + s2) = tanh((z1 - z2) / 2).
        self._closed_form_margin = CLOSED_FORM_MARGIN_FACTOR * 2.0 * float(np.arctanh(min(tie_margin, 1.0 - 1e-12)))

    def predictions(
        self, pooled_sets: Sequence[np.ndarray], order: Sequence[int], progress: bool = True
    ) -> list[np.ndarray]:
        """Predicted classes for each set: (len(order) + 1, n_set), row k after pruning ``order[:k]``.

        ``pooled_sets`` are the cached pooling-layer outputs (n, H, W, C) of the unpruned model,
        one array per image set (for example clean and triggered validation data). Row 0 is the
        unpruned model. Row k equals ``argmax(pruned_k.predict(images_of_set, batch_size))``.
        """
        return self.run(pooled_sets, order, progress).predictions

    def run(self, pooled_sets: Sequence[np.ndarray], order: Sequence[int], progress: bool = True) -> SweepRun:
        """``predictions`` and the sweep's statistics."""
        sizes = [len(p) for p in pooled_sets]
        pooled = np.ascontiguousarray(np.concatenate(pooled_sets), dtype=np.float32)
        n, n_channels = len(pooled), pooled.shape[-1]
        order = [int(c) for c in order]
        if len(set(order)) != len(order) or any(not 0 <= c < n_channels for c in order):
            raise ValueError(f"order must list distinct channels in [0, {n_channels})")
        batches = ReferenceBatches(self.tail, sizes, self.batch_size)
        start = time.perf_counter()
        nonzero = nonzero_channels(pooled)
        touched = _touched_images(nonzero, order)
        # The closed form runs image by image through all steps; the Keras tail step by step over the images.
        total, unit = (n, "img") if self.closed_form is not None else (len(order), "channel")
        with tqdm(total=total, desc="pruning sweep", unit=unit, disable=not progress) as bar:
            if self.closed_form is not None:
                evaluations = self._closed_form_steps(pooled, nonzero, order, touched, bar)
            else:
                evaluations = self._keras_steps(pooled, order, touched, batches, bar)
        stepped = time.perf_counter()
        near = evaluations.near
        if near.any():
            evaluations.classes[near] = batches.settle(pooled, order, evaluations.steps[near], evaluations.images[near])
        stats = SweepStats(
            closed_form_evaluations=len(evaluations.steps) if self.closed_form is not None else 0,
            keras_evaluations=batches.evaluated,
            near_ties=int(near.sum()),
            seconds_steps=stepped - start,
            seconds_ties=time.perf_counter() - stepped,
        )
        out = _rows(evaluations, n, len(order))
        return SweepRun(np.split(out, np.cumsum(sizes)[:-1], axis=1), stats)

    def _closed_form_steps(self, pooled, nonzero, order, touched, bar) -> _Evaluations:
        """Every step through the closed-form tail; a near tie is a gap under its margin (or NaN)."""
        classes, gaps = self.closed_form.sweep(
            pooled, order, groups=_PROGRESS_UPDATES, done=bar.update, nonzero=nonzero
        )
        steps = np.repeat(np.arange(len(order) + 1), [len(pooled), *(len(t) for t in touched)])
        images = np.concatenate([np.arange(len(pooled)), *touched])
        gap = gaps[steps, images]
        return _Evaluations(steps, images, classes[steps, images], ~(gap > self._closed_form_margin))  # NaN: a tie

    def _keras_steps(self, pooled, order, touched, batches: ReferenceBatches, bar) -> _Evaluations:
        """Every step through the Keras tail: row 0 on every reference batch, then the touched images."""
        keep = np.ones(pooled.shape[-1], dtype=np.float32)
        images, classes = batches.classes(pooled, keep, np.arange(len(batches.bounds)))
        parts = [(0, images, classes, np.zeros(images.size, dtype=bool))]
        for k, channel in enumerate(order, start=1):
            keep[channel] = 0.0
            if touched[k - 1].size:
                parts.append((k, *batches.touched(pooled, keep, touched[k - 1], self.tie_margin)))
            bar.update(1)
        return _concatenate(parts)


def naive_predictions(
    model: keras.Model,
    conv_layer: str,
    image_sets: Sequence[np.ndarray],
    order: Sequence[int],
    steps: Sequence[int],
    batch_size: int = BATCH_SIZE,
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
