"""The machine-level pieces of the sweep's kernels (``lib.simd``) give what their plain equivalents give."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_images

from lib import simd
from lib.activations import mean_channel_activations, pool_activations, pruning_order
from lib.sweep import SweepEngine


@pytest.mark.parametrize("n", [0, 5, 16, 37, 960])
def test_compressed_listing_equals_the_plain_one(n):
    """Positive entries and NaNs go through, in order; zeros of either sign, negatives and minus infinity do
    not. Also for lengths that are not whole vectors (the rest goes one entry at a time)."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    specials = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32)
    x[rng.choice(n, min(n, 7), replace=False)] = specials[: min(n, 7)]
    room = n + simd.LANES
    rows, values = np.full(room, -1, np.int32), np.zeros(room, np.float32)
    plain_rows, plain_values = np.full(room, -1, np.int32), np.zeros(room, np.float32)
    m = simd.compress_positive(x, rows, values)
    assert m == simd.list_positive(x, plain_rows, plain_values) == int((~(x <= 0)).sum())
    np.testing.assert_array_equal(rows[:m], np.flatnonzero(~(x <= 0)))
    np.testing.assert_array_equal(values[:m].view(np.int32), x[~(x <= 0)].view(np.int32))


def test_bit_casts_and_order_keys():
    from numba import njit

    @njit
    def round_trip(x):
        bits = np.empty(x.shape[0], np.int64)
        back = np.empty_like(x)
        for i in range(x.shape[0]):
            bits[i] = simd.order_key(simd.float_bits(x[i]))
            back[i] = simd.bits_float(simd.order_key(bits[i]))
        return bits, back

    x = np.array([-np.inf, -3.5, -1e-45, -0.0, 0.0, 1e-45, 2.0, 7.5, np.inf], np.float32)
    keys, back = round_trip(x)
    assert (np.diff(keys) > 0).all(), "the keys order like the floats, -0 just below +0"
    np.testing.assert_array_equal(back.view(np.int32), x.view(np.int32))


def test_sweep_with_and_without_compressed_listing_is_the_same(lab3_model):
    pooled = pool_activations(lab3_model, smooth_images(120, 6), "pool_3", progress=False)
    order = pruning_order(mean_channel_activations(pooled))
    tail = SweepEngine(lab3_model, "conv_3", "pool_3").closed_form
    results = []
    for by_compress in (True, False):
        tail.by_compress = by_compress
        results.append(tail.sweep(pooled, order))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1].view(np.int32), results[1][1].view(np.int32))


def test_nothing_is_taken_from_the_host_when_numba_targets_another_processor(monkeypatch):
    from numba.core import config

    from lib.sweep_screen import screen_supported

    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert not simd.host_has("avx512f") and not simd.host_has("sse2")
    assert not simd.compress_supported() and not screen_supported()
