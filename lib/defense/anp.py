"""Adversarial neuron pruning (ANP): which neurons to prune, from masks learnt under adversarial perturbation.

Wu and Wang, *Adversarial Neuron Pruning Purifies Backdoored Deep Models*, NeurIPS 2021. Backdoor neurons are
the ones whose small multiplicative perturbation most easily flips clean predictions. ANP gives every neuron k
a mask m_k in [0, 1] and perturbations delta_k, xi_k in [-eps, eps]: its pre-activation becomes
``(m_k + delta_k) * (w_k . x) + (1 + xi_k) * b_k``. Each iteration draws a batch and the perturbation at
random, takes one signed ascent step on the clean loss (ANP's code: ``anp_steps = 1``, step ``eps``), then
one SGD step with momentum on the masks for ``alpha * L(m, 0) + (1 - alpha) * L(m, delta, xi)`` and clips
them to [0, 1]. The neurons with the lowest masks are pruned: their mask set to 0, which zeroes ``w_k . x``
and keeps the bias (ANP's code zeroes BN's scale only; ``keep_bias``).

Adapted to these networks: they have no batch normalisation, so the neurons are every conv channel and every
hidden dense unit (``fc_1``, ``fc_2``), masked on their pre-activation (the paper masks BN's scale). The
paper's step sizes assume normalised pre-activations; here they are not, and eps 0.4 with lr 0.2 throws the
masks to their bounds (see notebook 08 and the README for the measurements and the settings used instead).

What the defender uses is the clean validation set only: a seeded share of it learns the masks, the rest
chooses how many to prune on B's budgets (``lib.defense.plans``), so that the choice is not made on the
images the masks were fitted to. The whole loop is one traced TensorFlow function with stateless random
numbers, seeded: it repeats bit for bit on one machine; another processor may round its gradients otherwise,
so ANP's masks are a trained result (reported over seeds), not an inference-only one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from lib.core.quiet import no_retracing_advice
from lib.defense import plans

#: The layers whose neurons ANP masks in the DeepID networks: every conv and the hidden dense layers.
NEURON_LAYERS = ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2")
#: Iterations per traced call: how often the progress bar moves.
CHUNK = 25


@dataclass(frozen=True)
class AnpSettings:
    """ANP's knobs; the defaults are the paper's (``PAPER``): perturbation budget, trade-off, iterations, mask
    learning rate and momentum, batch."""

    eps: float = 0.4
    alpha: float = 0.2
    iterations: int = 2000
    learning_rate: float = 0.2
    momentum: float = 0.9
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not 0 <= self.eps < 1:
            raise ValueError(f"ANP's eps is a relative perturbation in [0, 1), not {self.eps}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"ANP's alpha weighs the natural loss, in [0, 1], not {self.alpha}")
        if self.iterations < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("ANP's iterations, batch size and learning rate must be positive")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"ANP's momentum lies in [0, 1), not {self.momentum}")

    def as_dict(self) -> dict:
        return asdict(self)


PAPER = AnpSettings()


def split_validation(n_valid: int, mask_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask indices, choice indices) into the clean validation set: a seeded ``mask_share`` of it learns the
    masks, the rest chooses the pruning; both sorted."""
    if not 0 < mask_share < 1:
        raise ValueError(
            f"mask_share is the share of validation images that learn the masks, in (0, 1), not {mask_share}"
        )
    n_masks = round(n_valid * mask_share)
    if n_masks < 1 or n_masks >= n_valid:
        raise ValueError(f"{n_valid} validation images cannot be split {mask_share:g} / {1 - mask_share:g}")
    order = np.random.default_rng(seed).permutation(n_valid)
    return np.sort(order[:n_masks]), np.sort(order[n_masks:])


def neuron_layers(model: keras.Model, names: Sequence[str] = NEURON_LAYERS) -> dict[str, keras.layers.Layer]:
    """The layers ANP masks, checked: a Conv2D or Dense layer of ``model`` (top-level) for each name."""
    layers = {}
    for name in names:
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ValueError(f"{model.name} has no layer {name!r}: pass the neuron layers it has") from None
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            raise ValueError(f"{name} is a {type(layer).__name__}: ANP masks Conv2D and Dense neurons")
        layers[name] = layer
    return layers


def masked_forward(model: keras.Model, layers: Mapping[str, keras.layers.Layer]) -> Callable:
    """``forward(x, scale, bias_scale)`` -> the model's output, neuron k of each masked layer computing
    ``scale[k] * (w_k . x) + bias_scale[k] * b_k`` before its activation (``scale``, ``bias_scale``: dicts of
    vectors by layer name). Every other layer runs as in ``model``; all ones gives the model itself."""

    def forward(x, scale, bias_scale):
        def operation(op):
            if op.name not in layers:
                return op

            def call(h):
                conv = isinstance(op, keras.layers.Conv2D)
                z = (op.convolution_op(h, op.kernel) if conv else tf.matmul(h, op.kernel)) * scale[op.name]
                if op.use_bias:
                    z = z + op.bias * bias_scale[op.name]
                return op.activation(z)

            return call

        return model._run_through_graph(x, operation_fn=operation)

    return forward


def learn_masks(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    settings: AnpSettings = PAPER,
    seed: int = 1234,
    layer_names: Sequence[str] = NEURON_LAYERS,
    progress: bool = True,
) -> pd.DataFrame:
    """ANP's masks after ``settings.iterations`` iterations on ``images``: one row per neuron (``layer, neuron,
    mask``), in the order ANP prunes (lowest mask first; ties by layer, then neuron). ``model`` is unchanged."""
    layers = neuron_layers(model, layer_names)
    forward = masked_forward(model, layers)
    names = list(layers)
    sizes = {n: int(layers[n].kernel.shape[-1]) for n in names}
    masks = {n: tf.Variable(tf.ones(sizes[n]), name=f"mask_{n}") for n in names}
    velocity = {n: tf.Variable(tf.zeros(sizes[n])) for n in names}
    x_all = tf.constant(np.asarray(images, np.float32))
    y_all = tf.constant(np.asarray(labels, np.int64))
    n_images, batch = len(images), settings.batch_size
    eps, alpha, lr, mu = (
        tf.constant(v, tf.float32) for v in (settings.eps, settings.alpha, settings.learning_rate, settings.momentum)
    )
    ones = {n: tf.ones(sizes[n]) for n in names}
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def noise(stream: int, i):  # one stateless draw per neuron layer, stream and iteration
        return {n: tf.random.stateless_uniform([sizes[n]], [seed, 3 * i + stream], -eps, eps) for n in names}

    perturbed = settings.eps > 0

    def step_masks(grads):  # SGD with momentum (PyTorch's: v = mu v + g, m -= lr v), clipped to [0, 1]
        for n, g in zip(names, grads, strict=True):
            velocity[n].assign(mu * velocity[n] + g)
            masks[n].assign(tf.clip_by_value(masks[n] - lr * velocity[n], 0.0, 1.0))

    @tf.function(reduce_retracing=True)
    def run(start, count):
        for i in tf.range(start, start + count):
            pick = tf.random.stateless_uniform([batch], [seed, 3 * i], maxval=n_images, dtype=tf.int32)
            x, y = tf.gather(x_all, pick), tf.gather(y_all, pick)
            delta, xi = noise(1, i), noise(2, i)
            if not perturbed:  # eps = 0: the masks learn from the natural loss alone, as in ANP's code
                with tf.GradientTape() as tape:
                    loss = alpha * loss_fn(y, forward(x, {n: masks[n] * 1.0 for n in names}, ones))
                step_masks(tape.gradient(loss, [masks[n] for n in names]))
                continue
            # One signed ascent step of the perturbation on the clean loss, kept within [-eps, eps].
            with tf.GradientTape() as tape:
                tape.watch([*delta.values(), *xi.values()])
                adversarial = -loss_fn(
                    y, forward(x, {n: masks[n] + delta[n] for n in names}, {n: 1.0 + xi[n] for n in names})
                )
            d_grads, x_grads = tape.gradient(adversarial, [list(delta.values()), list(xi.values())])
            delta = {
                n: tf.clip_by_value(delta[n] - eps * tf.sign(g), -eps, eps) for n, g in zip(names, d_grads, strict=True)
            }
            xi = {n: tf.clip_by_value(xi[n] - eps * tf.sign(g), -eps, eps) for n, g in zip(names, x_grads, strict=True)}
            # One step on the masks: the natural and the perturbed loss, weighed by alpha.
            with tf.GradientTape() as tape:
                natural = loss_fn(y, forward(x, {n: masks[n] * 1.0 for n in names}, ones))
                robust = loss_fn(
                    y, forward(x, {n: masks[n] + delta[n] for n in names}, {n: 1.0 + xi[n] for n in names})
                )
                loss = alpha * natural + (1.0 - alpha) * robust
            step_masks(tape.gradient(loss, [masks[n] for n in names]))

    done = 0
    bar = tqdm(total=settings.iterations, desc="ANP: masks", disable=not progress, leave=False)
    with bar, no_retracing_advice():  # one trace per call, by design; several calls add up to TF's warning
        while done < settings.iterations:
            step = min(CHUNK, settings.iterations - done)
            run(tf.constant(done), tf.constant(step))
            done += step
            bar.update(step)
    table = pd.DataFrame(
        [{"layer": n, "neuron": k, "mask": float(v)} for n in names for k, v in enumerate(masks[n].numpy())]
    )
    order = table["layer"].map({n: i for i, n in enumerate(names)})
    return (
        table.assign(_order=order).sort_values(["mask", "_order", "neuron"], ignore_index=True).drop(columns="_order")
    )


def neurons_at_or_below(masks: pd.DataFrame, threshold: float) -> dict[str, np.ndarray]:
    """Per layer, the neurons ANP prunes at ``threshold``: those whose mask is at most it."""
    chosen = masks[masks["mask"] <= threshold]
    return {name: np.sort(chosen.loc[chosen["layer"] == name, "neuron"].to_numpy()) for name in masks["layer"].unique()}


def scan_masks(
    model: keras.Model,
    masks: pd.DataFrame,
    clean_valid: tuple[np.ndarray, np.ndarray],
    triggered_valid: tuple[np.ndarray, np.ndarray] | None = None,
    max_drop: float = 100.0,
    batch_size: int = 1024,
    progress: bool = True,
) -> pd.DataFrame:
    """Clean accuracy on the choice images (and, to show, the ASR on triggered validation images) as the mask
    threshold is raised past each distinct mask value, from nothing pruned until the accuracy has dropped by more
    than ``max_drop`` points (``lib.defense.plans.scan_plans``). Row k prunes every neuron whose mask is at most
    its ``mask_threshold`` (-inf in row 0: nothing)."""
    cut_points = [-np.inf, *np.unique(masks["mask"].to_numpy())]
    return plans.scan_plans(
        model,
        (({"mask_threshold": m}, neurons_at_or_below(masks, m)) for m in cut_points),
        clean_valid,
        triggered_valid,
        n_neurons=len(masks),
        max_drop=max_drop,
        batch_size=batch_size,
        keep_bias=True,
        desc="ANP: mask threshold on validation data",
        total=len(cut_points),
        progress=progress,
    )
