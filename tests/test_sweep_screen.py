"""The output layer's bfloat16 screen (``lib.sweep_screen``) changes no bit of any class or gap."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_images, tiny_deepid

from lib import sweep_kernels, sweep_screen
from lib.activations import mean_channel_activations, pool_activations, pruning_order
from lib.cache_lines import lined_empty
from lib.sweep import SweepEngine

needs_bf16 = pytest.mark.skipif(
    not sweep_screen.screen_supported(),
    reason="this processor has no AVX512_BF16 (or numba targets another processor): the kernels compute every "
    "class, and the screen cannot run here",
)


def _scratch(screen) -> tuple:
    return sweep_screen.screen_scratch(screen, screen[0].shape[0])


def _hidden_values(rng, hidden: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Positive hidden units (rows, values) as the kernels list them: about a fifth of the units."""
    rows = np.flatnonzero(rng.random(hidden) < 0.2).astype(np.int32)
    values = (np.abs(rng.normal(size=rows.size)) * scale).astype(np.float32)
    return rows, values


def _exact_logits(wo, bo, rows, values) -> np.ndarray:
    z = lined_empty(wo.shape[1])
    sweep_kernels.add_rows(z, bo, wo, rows, values, len(rows))
    return z


def test_bf16_bits_round_to_nearest_even_and_flush_subnormals():
    from lib.sweep_screen import bf16_bits, bf16_values

    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bfloat16's spacing at 1
    x = np.array([one, one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2.0**-20, -2.5, 1e-39, -1e-39], np.float32)
    np.testing.assert_array_equal(
        bf16_values(bf16_bits(x)), np.array([1, 1, 1 + 2 * ulp, 1 + ulp, -2.5, 0, -0.0], np.float32)
    )
    assert np.signbit(bf16_values(bf16_bits(x))[-1]), "a flushed subnormal keeps its sign"
    rng = np.random.default_rng(0)
    y = (rng.normal(size=10_000) * 10.0 ** rng.integers(-30, 30, 10_000)).astype(np.float32)
    rounded = bf16_values(bf16_bits(y)).astype(np.float64)
    spacing = 2.0 ** (np.floor(np.log2(np.abs(y.astype(np.float64)))) - 7)
    assert (np.abs(rounded - y) <= spacing / 2).all(), "within half a bfloat16 step"


def test_screen_layout_pads_classes_to_whole_blocks_that_never_win():
    tail = SweepEngine(tiny_deepid(n_classes=7, seed=4), "conv_3", "pool_3").closed_form
    _, _, _, _, _, wo, bo = tail.arrays
    packed, bias, position_class, row_error, row_bound, bias_bound = sweep_screen.screen_arrays(wo, bo, 7)
    assert bias.shape == position_class.shape == (sweep_screen.BLOCK_CLASSES,)
    assert packed.shape == (wo.shape[0], sweep_screen.BLOCK_CLASSES // 2)
    assert packed.ctypes.data % 64 == 0 and bias.ctypes.data % 64 == 0
    np.testing.assert_array_equal(np.sort(position_class), np.arange(sweep_screen.BLOCK_CLASSES))
    real = position_class < 7
    np.testing.assert_array_equal(bias[real], bo[position_class[real]])
    assert np.isneginf(bias[~real]).all(), "padding classes can never be the best two"
    assert not packed.view(np.uint16)[:, 7:].any()
    assert (row_error <= row_bound * 2.0**-8).all() and bias_bound == np.abs(bo[:7]).max()


@needs_bf16
def test_screen_values_are_within_their_bound_of_the_exact_logits(lab3_model):
    """The property the screen rests on, on the real output layer: every class's float32 logit, as the kernels
    sum it, is within the bound of its screen value, for small, real-sized and large hidden values."""
    tail = SweepEngine(lab3_model, "conv_3", "pool_3").closed_form
    _, _, _, _, _, wo, bo = tail.arrays
    screen = tail.screen
    scores, maxima, pairs, _, _ = _scratch(screen)
    classes = screen[2] < tail.n_classes
    rng = np.random.default_rng(1)
    widths = []
    for scale in [1e-30, 1e-3, 1.0, 10.0, 100.0, 1e4]:
        for _ in range(40):
            rows, values = _hidden_values(rng, wo.shape[0], scale)
            bound = sweep_screen.screen_scores(screen, rows, values, len(rows), scores, maxima, pairs)
            exact = _exact_logits(wo, bo, rows, values)[screen[2][classes]].astype(np.float64)
            assert np.abs(exact - scores[classes]).max() <= bound
            assert np.isneginf(scores[~classes]).all()
            np.testing.assert_array_equal(maxima, scores.reshape(-1, 32).max(axis=1))
            widths.append(bound / (exact.max() - np.median(exact) + 1e-30))
    assert np.median(widths) < 0.1, "the bound is narrow next to the spread of the logits, or the screen is useless"


@needs_bf16
@pytest.mark.parametrize("n_classes", [7, 300])
def test_screened_class_and_gap_are_the_full_products_bit_for_bit(n_classes):
    """Random evaluations, with exact ties between classes whose weights and biases are equal (the first such
    class wins, the gap is 0) and near ties, against ``top_two`` of every class's logit."""
    rng = np.random.default_rng(n_classes)
    hidden = 32
    wo0 = rng.normal(size=(hidden, n_classes)).astype(np.float32)
    bo0 = rng.normal(size=n_classes).astype(np.float32)
    wo0[:, 5], bo0[5] = wo0[:, 2], bo0[2]  # classes 2 and 5 always tie
    wo = lined_empty(hidden * 16 * -(-n_classes // 16)).reshape(hidden, -1)
    bo = lined_empty(wo.shape[1])
    wo[...], bo[...] = 0, 0
    wo[:, :n_classes], bo[:n_classes] = wo0, bo0
    screen = sweep_screen.screen_arrays(wo, bo, n_classes)
    scores, maxima, pairs, candidates, logits = _scratch(screen)
    ties = 0
    for trial in range(400):
        rows, values = _hidden_values(rng, hidden, 1.0)
        if trial % 4 == 0:  # lift classes 2 and 5 to the top: an exact tie for the best
            bo[[2, 5]] = bo0[[2, 5]] + 50
        else:
            bo[[2, 5]] = bo0[[2, 5]]
        screen = sweep_screen.screen_arrays(wo, bo, n_classes)
        got = sweep_screen.screened_top_two(
            screen, wo, bo, rows, values, len(rows), scores, maxima, pairs, candidates, logits
        )
        expected = sweep_kernels.top_two(_exact_logits(wo, bo, rows, values)[:n_classes])
        assert got[0] and (got[1], np.float32(got[2]).tobytes()) == (expected[0], np.float32(expected[1]).tobytes())
        ties += expected[1] == 0
    assert ties >= 100, "the exact ties were exercised"


@needs_bf16
def test_screen_gives_way_where_it_cannot_bound_the_logits(lab3_model):
    """A NaN or an infinite hidden value, or sums that could overflow float32: the screen declines, and the
    kernels compute every class (``top_two``'s NaN gap for a near tie, as without the screen)."""
    tail = SweepEngine(lab3_model, "conv_3", "pool_3").closed_form
    _, _, _, _, _, wo, bo = tail.arrays
    widest = int(np.argmax(tail.screen[4]))  # the row with the largest weights
    rows = np.array([widest - 1, widest, widest + 1], np.int32)
    overflowing = 2 * sweep_screen._LARGEST_SAFE / tail.screen[4][widest]  # its terms could reach 2e37
    assert overflowing < np.finfo(np.float32).max
    for bad in (np.nan, np.inf, overflowing):
        values = np.array([1.0, bad, 2.0], np.float32)
        got = sweep_screen.screened_top_two(tail.screen, wo, bo, rows, values, 3, *_scratch(tail.screen))
        assert not got[0]


@needs_bf16
def test_sweep_with_the_screen_equals_the_sweep_without_it_bit_for_bit(lab3_model):
    """The real lab-3 BadNet, 60 steps: every class and every gap (so every near tie) the same with and
    without the screen; and the logits the closed form reports are every class's, not the screen's."""
    pooled = pool_activations(lab3_model, smooth_images(200, 8), "pool_3", progress=False)
    order = pruning_order(mean_channel_activations(pooled))
    tail = SweepEngine(lab3_model, "conv_3", "pool_3").closed_form
    screened = tail.sweep(pooled, order)
    screen, tail.screen = tail.screen, None
    try:
        full = tail.sweep(pooled, order)
        full_logits = tail.logits(pooled, order[:30])
    finally:
        tail.screen = screen
    np.testing.assert_array_equal(screened[0], full[0])
    np.testing.assert_array_equal(screened[1], full[1])
    np.testing.assert_array_equal(tail.logits(pooled, order[:30]), full_logits)


def test_kernels_without_a_screen_do_not_contain_it():
    """Where the processor lacks AVX512_BF16 the kernels are compiled with ``screen=None``: that compilation
    must not reference the screen at all (its instruction cannot be compiled for such a processor). Compiled
    afresh here, as the cached kernels keep no LLVM IR."""
    from numba import njit

    tail = SweepEngine(tiny_deepid(seed=2), "conv_3", "pool_3").closed_form
    _, _, _, _, _, wo, bo = tail.arrays
    rows, values = np.array([0, 3], np.int32), np.array([1.0, 2.0], np.float32)
    fresh = njit(sweep_kernels._class_and_gap.py_func)
    z = lined_empty(wo.shape[1])
    assert fresh(wo, bo, tail.n_classes, None, rows, values, 2, z, ()) == sweep_kernels.top_two(
        _exact_logits(wo, bo, rows, values)[: tail.n_classes]
    )
    (compiled,) = fresh.inspect_llvm().values()
    assert "top_two" in compiled and "screened_top_two" not in compiled and "dpbf16" not in compiled
