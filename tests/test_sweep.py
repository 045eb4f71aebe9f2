"""The sweep engine gives exactly the predictions of re-running the pruned Keras model, step for step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import smooth_images, tiny_deepid, tiny_images
from keras import layers

from lib.core.errors import InputError
from lib.defense.activations import mean_channel_activations, pool_activations, pruning_order
from lib.sweep.closed_form.tail import nonzero_channels
from lib.sweep.engine import Strategy, SweepEngine, naive_predictions, tail_model
from lib.sweep.table import threshold_steps, validate_thresholds


def _sweep_vs_naive(model, image_sets, batch_size, steps=None, strategy=None):
    """The engine's sweep, checked against the naive re-run at ``steps`` (default: all); (engine, its stats)."""
    pooled = [pool_activations(model, x, "pool_3", batch_size=batch_size, progress=False) for x in image_sets]
    order = pruning_order(mean_channel_activations(pooled[0]))
    engine = SweepEngine(model, "conv_3", "pool_3", batch_size=batch_size, strategy=strategy)
    run = engine.run(pooled, order, progress=False)
    fast = run.predictions
    steps = range(len(order) + 1) if steps is None else steps
    naive = naive_predictions(model, "conv_3", image_sets, order, steps, batch_size=batch_size)
    for k in steps:
        for s, (f, n) in enumerate(zip(fast, naive[k], strict=False)):
            diff = np.flatnonzero(f[k] != n)
            assert diff.size == 0, f"step {k}, set {s}: images {diff[:10]} differ"
    return engine, run.stats, fast


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_equals_naive_on_random_models(seed):
    engine, stats, _ = _sweep_vs_naive(
        tiny_deepid(seed=seed), [tiny_images(300, seed), tiny_images(130, seed + 10)], batch_size=64
    )
    assert engine.strategy is Strategy.CLOSED_FORM and stats.closed_form_evaluations > 0, (
        "the CSAW head goes through the closed form"
    )


def test_keras_path_for_the_csaw_head_equals_naive():
    """The path every other tail takes, forced on the CSAW head (``Strategy.KERAS_TAIL``)."""
    engine, stats, _ = _sweep_vs_naive(
        tiny_deepid(seed=11), [tiny_images(300, 11), tiny_images(130, 21)], batch_size=64, strategy=Strategy.KERAS_TAIL
    )
    assert engine.strategy is Strategy.KERAS_TAIL and stats.closed_form_evaluations == 0


def _head_variant(kind, seed=12):
    keras.utils.set_random_seed(seed)
    x = keras.Input((14, 12, 3))
    h = layers.Conv2D(4, 3, activation="relu", name="conv_1")(x)
    p = layers.MaxPooling2D(2, name="pool_3")(layers.Conv2D(10, 3, activation="relu", name="conv_3")(h))
    c4 = layers.Conv2D(6, 2, activation="tanh" if kind == "tanh conv" else "relu")(p)
    f1 = layers.Dense(12)(layers.Flatten()(p))
    f2 = layers.Dense(12)(layers.Flatten()(c4))
    merged = layers.Subtract()([f1, f2]) if kind == "subtract" else layers.Add()([f1, f2])
    out = layers.Dense(7, activation="softmax" if kind != "linear output" else None)(layers.Activation("relu")(merged))
    return keras.Model(x, out)


@pytest.mark.parametrize("kind", ["tanh conv", "subtract", "linear output"])
def test_near_miss_heads_fall_back_to_the_keras_path(kind):
    model = _head_variant(kind)
    engine, _, _ = _sweep_vs_naive(model, [tiny_images(120, 13)], batch_size=32)
    assert engine.strategy is Strategy.KERAS_TAIL


def test_non_finite_weights_take_the_keras_path():
    """The closed form skips zero inputs, which equals multiplying by them only for finite weights."""
    model = tiny_deepid(seed=6)
    fc2 = model.get_layer("fc_2")
    kernel, bias = fc2.get_weights()
    kernel[0, 0] = np.inf
    fc2.set_weights([kernel, bias])
    assert SweepEngine(model, "conv_3", "pool_3").strategy is Strategy.KERAS_TAIL


def test_a_nan_in_the_pooled_values_is_a_near_tie_at_every_step():
    """The closed form never decides the class of an image whose values are not all finite: Keras does."""
    model = tiny_deepid(seed=7)
    pooled = pool_activations(model, tiny_images(30, 7), "pool_3", progress=False)
    order = pruning_order(mean_channel_activations(pooled))
    pooled[3, 0, 0, order[-1]] = np.nan  # the last channel pruned: every step sees it
    _, gaps = SweepEngine(model, "conv_3", "pool_3").closed_form.sweep(pooled, order)
    assert np.isnan(gaps[0, 3]) and np.isnan(gaps[-1, 3]), "unpruned, and with the NaN's own channel removed"
    assert not np.isfinite(gaps[:, 3]).any(), "evaluated: NaN; not touched by a step: infinite (class carried)"
    assert not np.isnan(np.delete(gaps, 3, axis=1)).any()


def test_exact_ties_are_broken_as_keras_does():
    # Two output classes with identical weights tie exactly for every image: Keras picks the first.
    model = tiny_deepid(n_classes=5, seed=3)
    out = model.get_layer("output")
    kernel, bias = out.get_weights()
    kernel[:, 4] = kernel[:, 1]
    bias[4] = bias[1]
    kernel[:, 1] += 50.0 * np.abs(kernel).max()  # make class 1 (and its twin 4) win often
    kernel[:, 4] = kernel[:, 1]
    out.set_weights([kernel, bias])
    engine, stats, fast = _sweep_vs_naive(model, [tiny_images(200, 5)], batch_size=64)
    assert not np.any(fast[0] == 4)
    assert engine.strategy is Strategy.CLOSED_FORM and stats.near_ties > 0, "the ties are settled by the Keras tail"


def test_any_tail_after_the_pooling_layer_is_exact():
    keras.utils.set_random_seed(4)
    x = keras.Input((14, 12, 3))
    h = layers.Conv2D(4, 3, activation="relu", name="conv_1")(x)
    h = layers.Conv2D(9, 3, activation="relu", name="conv_3")(h)
    p = layers.AveragePooling2D(2, name="pool_3")(h)
    y = layers.Activation("tanh")(p)  # not linear: no incremental fast path
    y = layers.Dense(6, activation="softmax")(layers.Flatten()(y))
    model = keras.Model(x, y)
    engine, _, _ = _sweep_vs_naive(model, [tiny_images(150, 6), tiny_images(70, 7)], batch_size=32)
    assert engine.strategy is Strategy.KERAS_TAIL, "not the CSAW form: the Keras path"


def test_the_closed_form_is_refused_for_another_tail():
    with pytest.raises(InputError, match="strategy"):
        SweepEngine(_head_variant("subtract"), "conv_3", "pool_3", strategy=Strategy.CLOSED_FORM)
    with pytest.raises(InputError, match="strategy"):
        SweepEngine(tiny_deepid(), "conv_3", "pool_3", strategy="fast")


def test_the_benchmark_baseline_agrees():
    """The benchmark's cached-prefix baseline (the whole tail re-run every step) gives the engine's predictions."""
    from benchmarks.tail_rerun import tail_rerun_predictions

    model = tiny_deepid(seed=8)
    sets = [tiny_images(200, 8)]
    pooled = [pool_activations(model, x, "pool_3", batch_size=50, progress=False) for x in sets]
    order = pruning_order(mean_channel_activations(pooled[0]))
    a = SweepEngine(model, "conv_3", "pool_3", batch_size=50).predictions(pooled, order, progress=False)
    b = tail_rerun_predictions(model, "pool_3", pooled, order, batch_size=50)
    np.testing.assert_array_equal(a[0], b[0])


def test_unaffected_images_are_not_reevaluated():
    model = tiny_deepid(seed=9)
    pooled = pool_activations(model, tiny_images(100, 9), "pool_3", progress=False)
    order = pruning_order(mean_channel_activations(pooled))
    stats = SweepEngine(model, "conv_3", "pool_3", batch_size=10).run([pooled], order, progress=False).stats
    touched = [np.flatnonzero(pooled[..., c].reshape(100, -1).any(axis=1)) for c in order]
    touched_batches = sum(len(np.unique(t // 10)) for t in touched)
    assert stats.closed_form_evaluations == 100 + sum(len(t) for t in touched), (
        "the unpruned model, then the touched images"
    )
    assert stats.keras_evaluations <= 10 * stats.near_ties, (
        "the Keras tail only settles near ties, in batches of the reference size"
    )
    keras_path = SweepEngine(model, "conv_3", "pool_3", batch_size=10, strategy=Strategy.KERAS_TAIL)
    keras_stats = keras_path.run([pooled], order, progress=False).stats
    assert keras_stats.keras_evaluations <= 100 + 10 * touched_batches + 10 * keras_stats.near_ties
    assert keras_stats.keras_evaluations < 100 * (len(order) + 1)


def test_the_kernels_top_two_is_argmax_and_the_gap_to_the_second():
    """The closed form's top two: the first of equal maxima wins as in argmax, and a NaN or an infinity
    anywhere gives a NaN gap (a near tie)."""
    from lib.sweep.closed_form.kernels import top_two

    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 37)).astype(np.float32)
    z[1, [3, 30]] = 9.0  # exact tie
    z[2, [17, 33]] = 9.0
    z[3, 36] = 9.0  # best in the last place
    z[4, 5] = np.nan  # NaN outside the best
    z[5, int(np.argmax(z[5]))] = np.nan  # NaN as the best
    z[6, 0] = np.inf
    z[7, 0] = -np.inf
    best, gap = (np.array(column) for column in zip(*(top_two(row, np.empty(1, np.int32)) for row in z), strict=True))
    finite = np.arange(200) >= 8
    top2 = -np.sort(-z[finite].astype(np.float64), axis=1)[:, :2]
    np.testing.assert_array_equal(best[finite], np.argmax(z[finite], axis=1))
    np.testing.assert_array_equal(gap[finite], (top2[:, 0] - top2[:, 1]).astype(np.float32))
    assert (best[1], gap[1]) == (3, 0.0) and (best[2], gap[2]) == (17, 0.0) and best[3] == 36
    assert np.isnan(gap[4:8]).all()


def test_the_closed_form_logits_are_the_models_classes():
    """The closed form's logits, unpruned, are one per class of the model and give its softmax scores."""
    model = tiny_deepid(n_classes=7, seed=4)
    tail = SweepEngine(model, "conv_3", "pool_3").closed_form
    pooled = pool_activations(model, tiny_images(20, 4), "pool_3", progress=False)
    logits = tail.logits(pooled)
    assert logits.shape == (20, 7)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, tail_model(model, "pool_3").predict_on_batch(pooled), atol=1e-5)


def test_closed_form_sweep_is_the_same_in_any_grouping_and_thread_count(lab3_model):
    """Each image's trajectory is its own: which images are swept together, in how many calls and on
    how many threads changes no bit of any class or gap, and a sweep of no steps is its row 0."""
    import numba

    pooled = pool_activations(lab3_model, smooth_images(120, 3), "pool_3", progress=False)
    tail = SweepEngine(lab3_model, "conv_3", "pool_3").closed_form
    order = pruning_order(mean_channel_activations(pooled))
    classes, gaps = tail.sweep(pooled, order)
    assert classes.shape == gaps.shape == (61, 120)
    assert (gaps[1:][np.isfinite(gaps[1:])] >= 0).all() and (gaps[0] > 1e-3).mean() > 0.9
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = tail.sweep(pooled, order, groups=7)
    finally:
        numba.set_num_threads(threads)
    subset = np.random.default_rng(3).permutation(120)[:37]
    alone = tail.sweep(pooled[subset], order)
    for got, expected in [(one_thread, (classes, gaps)), (alone, (classes[:, subset], gaps[:, subset]))]:
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    unpruned = tail.sweep(pooled, [])
    np.testing.assert_array_equal(unpruned[0][0], classes[0])
    untouched = ~pooled[..., order[0]].reshape(120, -1).any(axis=1)
    assert np.isinf(gaps[1, untouched]).all() and (classes[1, untouched] == classes[0, untouched]).all()


def test_sub_models_are_built_once_and_let_their_model_go():
    """Repeated sweeps of a model reuse its prefix and tail sub-models (and so their compiled predict
    steps), without keeping a model alive that the caller dropped."""
    import gc
    import weakref

    from lib.defense.activations import prefix_model

    model = tiny_deepid()
    assert prefix_model(model, "pool_3") is prefix_model(model, "pool_3")
    assert tail_model(model, "pool_3") is SweepEngine(model, "conv_3", "pool_3").tail
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None


@pytest.mark.slow
def test_real_csaw_weights_sweep_equals_naive_at_every_step(lab3_model):
    """The acceptance test: the real lab-3 BadNet, 60 channels, two sets with partial last batches."""
    sets = [smooth_images(700, 0), smooth_images(450, 1)]
    engine, stats, _ = _sweep_vs_naive(lab3_model, sets, batch_size=256)
    assert engine.strategy is Strategy.CLOSED_FORM
    assert stats.keras_evaluations + stats.closed_form_evaluations < 1150 * 61


def test_engine_refuses_models_it_cannot_prune():
    model = tiny_deepid()
    with pytest.raises(InputError, match="no layer named 'conv_9'"):
        SweepEngine(model, "conv_9", "pool_3")
    with pytest.raises(InputError, match="not a Conv2D"):
        SweepEngine(model, "pool_3", "pool_3")
    with pytest.raises(InputError, match="does not read"):
        SweepEngine(model, "conv_1", "pool_3")


def test_threshold_steps_use_exact_counts():
    # 200 clean images, B gets 196 right: losing 4 images is exactly 2 points, 8 exactly 4.
    correct = np.array([196, 196, 195, 192, 188, 177, 100])
    assert threshold_steps(correct, 200, [2, 4, 10]) == {2.0: 3, 4.0: 4, 10.0: 6}
    assert threshold_steps(correct, 200, [50]) == {50.0: None}


@pytest.mark.parametrize("bad", [[], [0, 2], [2, 100], [4, 2], [2, 2]])
def test_thresholds_are_validated(bad):
    with pytest.raises(InputError, match="thresholds"):
        validate_thresholds(bad)


def test_batch_layout_moves_scores_far_less_than_the_tie_margin(lab3_model):
    """The near-tie re-check is sound: another batch layout changes scores by < 1 % of the margin."""
    from lib.defense.metrics import DEFAULT_TIE_MARGIN

    pooled = pool_activations(lab3_model, smooth_images(600, 3), "pool_3", batch_size=256, progress=False)
    pooled[..., :40] = 0  # also a heavily pruned network
    engine = SweepEngine(lab3_model, "conv_3", "pool_3", batch_size=256)
    reference = np.concatenate([engine.tail.predict_on_batch(pooled[i : i + 256]) for i in range(0, 600, 256)])
    shuffled = np.random.default_rng(0).permutation(600)
    other = np.empty_like(reference)
    for i in range(0, 600, 37):
        other[shuffled[i : i + 37]] = engine.tail.predict_on_batch(pooled[shuffled[i : i + 37]])
    top2 = -np.partition(-reference, 1, axis=-1)[:, :2]
    moved = np.abs(other - reference).max(axis=-1) / (top2[:, 0] + top2[:, 1])
    assert moved.max() < DEFAULT_TIE_MARGIN / 100
    if moved.max() == 0:
        pytest.skip(
            "on this processor both batch layouts round identically (moved = 0): the bound holds trivially, "
            "and how far another layout moves the scores cannot be observed here"
        )


def test_keras_tail_rows_do_not_depend_on_the_other_rows(lab3_model):
    """What settling near ties in shared batches relies on: a row's scores, bit for bit, depend on
    the batch size and the row's place, not on what the other rows hold."""
    pooled = pool_activations(lab3_model, smooth_images(300, 4), "pool_3", batch_size=256, progress=False)
    tail = SweepEngine(lab3_model, "conv_3", "pool_3").tail
    for size in (256, 44):
        batch = pooled[:size].copy()
        batch[..., :25] = 0
        reference = tail.predict_on_batch(batch)
        rows = np.random.default_rng(size).choice(size, 5, replace=False)
        for filler in (np.zeros_like(batch), pooled[-size:][::-1]):
            mixed = filler.copy()
            mixed[rows] = batch[rows]
            np.testing.assert_array_equal(tail.predict_on_batch(mixed)[rows], reference[rows])


def test_closed_form_logits_are_far_closer_to_keras_than_its_margin(lab3_model):
    """The closed form decides a class only when its two best logits are further apart than
    CLOSED_FORM_MARGIN_FACTOR tie margins; its logits must stay far closer than that to Keras's,
    through all 60 steps. Compared on Keras's softmax scores: for each class j,
    log(s_j / s_best) against z_j - z_best (softmax scores of logits z: s_j / s_i = exp(z_j - z_i))."""
    from lib.defense.metrics import DEFAULT_TIE_MARGIN
    from lib.sweep.closed_form.tail import CLOSED_FORM_MARGIN_FACTOR

    pooled = pool_activations(lab3_model, smooth_images(600, 5), "pool_3", batch_size=256, progress=False)
    order = pruning_order(mean_channel_activations(pooled))
    engine = SweepEngine(lab3_model, "conv_3", "pool_3", batch_size=256)
    keep = np.ones(pooled.shape[-1], dtype=np.float32)
    worst = 0.0
    for k in range(len(order) + 1):
        keep[order[:k]] = 0.0
        if k % 10 and k < 55:
            continue
        z = engine.closed_form.logits(pooled, order[:k]).astype(np.float64)
        scores = np.concatenate(
            [engine.tail.predict_on_batch(pooled[i : i + 256] * keep) for i in range(0, 600, 256)]
        ).astype(np.float64)
        rows, best = np.arange(600), np.argmax(z, axis=-1)
        with np.errstate(divide="ignore"):
            log_scores = np.log(scores)
        error = (log_scores - log_scores[rows, best][:, None]) - (z - z[rows, best][:, None])
        worst = max(worst, float(np.abs(error[scores > 0]).max()))
    logit_margin = 2 * np.arctanh(DEFAULT_TIE_MARGIN)
    assert worst < 0.3 * logit_margin, "measured: up to 19 % of the tie margin, after the last channel"
    assert worst < CLOSED_FORM_MARGIN_FACTOR * logit_margin / 10
    if worst == 0:
        pytest.skip("on this processor the closed form rounds exactly as Keras does: the distance cannot be observed")


@pytest.mark.slow
def test_the_kernel_profile_still_fits_the_kernels():
    """``benchmarks/sweep_kernel_parts.py`` leaves parts of ``lib.sweep.closed_form.kernels`` out by replacing lines
    of its source: each line it replaces must still be there exactly once, and each variant must compile and run."""
    from benchmarks.sweep_kernel_parts import PARTS, variant

    model = tiny_deepid(seed=9)
    pooled = pool_activations(model, tiny_images(20, 9), "pool_3", progress=False)
    tail = SweepEngine(model, "conv_3", "pool_3").closed_form
    order = pruning_order(mean_channel_activations(pooled)).astype(np.int64)
    touched = nonzero_channels(pooled)
    for replacements in PARTS.values():
        classes, gaps = np.empty((len(order) + 1, 20), np.int64), np.empty((len(order) + 1, 20), np.float32)
        no_logits = np.empty((0, tail.n_classes), np.float32)
        variant(replacements).sweep_images(
            pooled,
            touched,
            order,
            *tail.arrays,
            classes,
            gaps,
            no_logits,
        )
