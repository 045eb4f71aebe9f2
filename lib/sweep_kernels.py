"""The closed-form sweep's arithmetic, compiled by numba: one image's whole pruning trajectory at a time.

Why not TensorFlow's matrix products: after a ReLU most units are zero, and dense products
multiply the zeros too. Per evaluation on the CSAW stand-ins, 131 of conv_4's 960 outputs and 32
of the 160 hidden units are positive on average, so fc_2 and the output layer need 131 rows of
fc_2's kernel and 32 rows of the output layer's (about 62,000 multiply-adds) where the dense
products need 360,000, as much as the convolutions of a forward pass (``benchmarks/README.md``).
Each image carries only the linear part of its state (fc_1's output and conv_4's, before their
ReLUs) from step to step; fc_2 and the output layer are recomputed from it at every evaluation,
so their rounding does not accumulate. Where the processor has AVX512_BF16, the output layer is
screened in bfloat16 first and only the few classes that can still be the best two are summed
(``lib.sweep_screen``): the same class and gap, bit for bit.

An image's trajectory does not depend on any other image, so images run in parallel (numba
threads, ``NUMBA_NUM_THREADS``), each in the same order of operations whatever the thread count:
one thread or many give the same bytes. No fast-math flag is set, so every sum is rounded in the
order written here. Zero inputs are skipped, which equals multiplying by them only for finite
weights: ``lib.sweep_closed_form`` hands over no other. The first call on a machine compiles the
kernels (about 20 s on a 2-core AMD EPYC); numba caches them beside this file (``__pycache__``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lib.cache_lines import lined_empty
from lib.simd import LANES, bits_float, compress_positive, list_positive, order_key
from lib.sweep_screen import screen_scratch, screened_top_two


@njit(cache=True, inline="always")
def add_rows(y, base, w, rows, coefficients, m):
    """``y = base + sum(coefficients[t] * w[rows[t]] for t < m)``, summed in that order (``y`` may be ``base``).

    Eight rows per pass over ``y`` while eight are left (the first pass, from ``base``, takes four; then four
    more where four to seven are left, and the last few one at a time): an eighth of the loads and stores of
    ``y`` that one row at a time takes. Four rows per pass were measured 40 % faster than one, eight 4-5 %
    faster again over the whole sweep. Inlined into its callers, most of which pass a few rows of a short ``y``
    (conv_4's 80 outputs at one position): 4 % faster (``benchmarks/README.md``).
    """
    n = y.shape[0]
    if m >= 4:
        a0, a1, a2, a3 = coefficients[0], coefficients[1], coefficients[2], coefficients[3]
        r0, r1, r2, r3 = w[rows[0]], w[rows[1]], w[rows[2]], w[rows[3]]
        for q in range(n):
            y[q] = base[q] + a0 * r0[q] + a1 * r1[q] + a2 * r2[q] + a3 * r3[q]
        t = 4
    else:
        for q in range(n):
            y[q] = base[q]
        t = 0
    while t + 8 <= m:
        a0, a1, a2, a3 = coefficients[t], coefficients[t + 1], coefficients[t + 2], coefficients[t + 3]
        a4, a5, a6, a7 = coefficients[t + 4], coefficients[t + 5], coefficients[t + 6], coefficients[t + 7]
        r0, r1, r2, r3 = w[rows[t]], w[rows[t + 1]], w[rows[t + 2]], w[rows[t + 3]]
        r4, r5, r6, r7 = w[rows[t + 4]], w[rows[t + 5]], w[rows[t + 6]], w[rows[t + 7]]
        for q in range(n):
            y[q] = (
                y[q] + a0 * r0[q] + a1 * r1[q] + a2 * r2[q] + a3 * r3[q] + a4 * r4[q] + a5 * r5[q] + a6 * r6[q]
            ) + a7 * r7[q]
        t += 8
    while t + 4 <= m:
        a0, a1, a2, a3 = coefficients[t], coefficients[t + 1], coefficients[t + 2], coefficients[t + 3]
        r0, r1, r2, r3 = w[rows[t]], w[rows[t + 1]], w[rows[t + 2]], w[rows[t + 3]]
        for q in range(n):
            y[q] = y[q] + a0 * r0[q] + a1 * r1[q] + a2 * r2[q] + a3 * r3[q]
        t += 4
    while t < m:
        a0, r0 = coefficients[t], w[rows[t]]
        for q in range(n):
            y[q] = y[q] + a0 * r0[q]
        t += 1


@njit(cache=True)
def top_two(z):
    """``z``'s argmax (the first of equal maxima, as ``np.argmax``) and its best value minus its second best.

    Equal best values, +0 and -0 included, give a gap of 0; a NaN or infinite value anywhere gives
    class 0 and a NaN gap: near ties either way, which the Keras tail settles. Two passes of integer
    reductions over the values' bits (see ``lib.simd.order_key``), which the compiler turns into vector instructions,
    where float maxima would need fast-math flags: the best, then its first place, how many share it and
    the best of the others.
    """
    bits = z.view(np.int32)
    n = bits.shape[0]
    best, non_finite = -(2**31), 0
    for q in range(n):
        non_finite |= (bits[q] >> 23) & 0xFF == 0xFF
        best = max(best, order_key(bits[q]))
    if non_finite:
        return 0, np.float32(np.nan)
    at, ties, second = n, 0, -(2**31)
    for q in range(n):
        key = order_key(bits[q])
        at = min(at, q if key == best else n)
        ties += key == best
        second = max(second, key if key != best else -(2**31))
    return at, z[at] - bits_float(order_key(best if ties > 1 else second))


@njit(cache=True)
def _add_channels(x, first, last, sign, w1, k4, a1_base, c4_base, a1, c4, rows, values):
    """``a1 = a1_base + sign *`` fc_1's share of channels ``first`` to ``last - 1`` of pooled values ``x``
    (H, W, C), and ``c4 = c4_base + sign *`` conv_4's (before its ReLU). Zero inputs are skipped.

    All channels with sign 1 from the biases give an image's unpruned state; one channel with sign -1
    from the state itself removes that channel (in place).
    """
    height, width, channels = x.shape
    kh, kw, _, f4 = k4.shape
    oh, ow = height - kh + 1, width - kw + 1
    m = 0
    for y in range(height):
        for xx in range(width):
            for c in range(first, last):
                rows[m], values[m] = (y * width + xx) * channels + c, sign * x[y, xx, c]
                m += x[y, xx, c] != 0
    add_rows(a1, a1_base, w1, rows, values, m)
    k4_rows = k4.reshape(kh * kw * channels, f4)
    for oy in range(oh):
        for ox in range(ow):
            m = 0
            for dy in range(kh):
                for dx in range(kw):
                    for c in range(first, last):
                        rows[m], values[m] = (dy * kw + dx) * channels + c, sign * x[oy + dy, ox + dx, c]
                        m += x[oy + dy, ox + dx, c] != 0
            lo, hi = (oy * ow + ox) * f4, (oy * ow + ox + 1) * f4
            add_rows(c4[lo:hi], c4_base[lo:hi], k4_rows, rows, values, m)


@njit(cache=True)
def _hidden(a1, c4, w2, h, rows, values, by_compress):
    """The hidden layer ``h`` of the linear state ``a1``, ``c4`` (only conv_4's units its ReLU lets through are
    multiplied); lists the hidden units the next ReLU lets through in ``rows``/``values`` and returns how many
    (``lib.simd``: by vector compresses where ``by_compress``)."""
    m = compress_positive(c4, rows, values) if by_compress else list_positive(c4, rows, values)
    add_rows(h, a1, w2, rows, values, m)
    return compress_positive(h, rows, values) if by_compress else list_positive(h, rows, values)


@njit(cache=True)
def _class_and_gap(wo, bo, n_classes, screen, rows, values, m, z, scratch):
    """``top_two`` of the logits ``bo + sum_t values[t] * wo[rows[t]]``: screened where ``screen`` is given
    (``lib.sweep_screen``, the same bits), else the whole product into ``z``."""
    if screen is not None:
        scores, maxima, pairs, candidates, logits = scratch
        screened, best, gap = screened_top_two(
            screen, wo, bo, rows, values, m, scores, maxima, pairs, candidates, logits
        )
        if screened:
            return best, gap
    add_rows(z, bo, wo, rows, values, m)
    return top_two(z[:n_classes])


@njit(parallel=True, cache=True)
def sweep_images(
    pooled,
    touched,
    order,
    w1,
    hidden_bias,
    k4,
    c4_bias,
    w2,
    wo,
    bo,
    n_classes,
    screen,
    by_compress,
    classes,
    gaps,
    logits,
):
    """Every image's class and logit gap before pruning and after each step of ``order``.

    ``pooled`` (n, H, W, C) float32; ``touched`` (n, C): channel non-zero somewhere in the image.
    Writes ``classes``/``gaps`` (len(order) + 1, n): row 0 unpruned, row k after ``order[:k]``; a step
    that does not touch an image copies its class and writes an infinite gap (not evaluated).
    ``logits`` is (n, classes) to receive each image's logits after the last step, or (0, classes).
    The weights' columns beyond the hidden units and the ``n_classes`` classes are zero padding.
    ``screen`` is ``lib.sweep_screen.screen_arrays``'s tuple, or None to compute every class;
    ``by_compress`` lists the units a ReLU lets through with vector compresses (``lib.simd.compress_positive``).
    """
    n = pooled.shape[0]
    f1 = w1.shape[1]
    scratch = max(w1.shape[0], w2.shape[0], k4.shape[0] * k4.shape[1] * k4.shape[2], f1) + LANES
    for i in prange(n):
        x = pooled[i]
        a1, h, c4, z = lined_empty(f1), lined_empty(f1), lined_empty(w2.shape[0]), lined_empty(wo.shape[1])
        rows, values = np.empty(scratch, np.int32), np.empty(scratch, np.float32)
        scratch_for_screen = screen_scratch(screen, f1)
        _add_channels(x, 0, x.shape[2], np.float32(1), w1, k4, hidden_bias, c4_bias, a1, c4, rows, values)
        m = _hidden(a1, c4, w2, h, rows, values, by_compress)
        classes[0, i], gaps[0, i] = _class_and_gap(wo, bo, n_classes, screen, rows, values, m, z, scratch_for_screen)
        for k in range(order.shape[0]):
            c = order[k]
            if not touched[i, c]:
                classes[k + 1, i], gaps[k + 1, i] = classes[k, i], np.inf
                continue
            _add_channels(x, c, c + 1, np.float32(-1), w1, k4, a1, c4, a1, c4, rows, values)
            m = _hidden(a1, c4, w2, h, rows, values, by_compress)
            classes[k + 1, i], gaps[k + 1, i] = _class_and_gap(
                wo, bo, n_classes, screen, rows, values, m, z, scratch_for_screen
            )
        if logits.shape[0]:
            m = _hidden(a1, c4, w2, h, rows, values, by_compress)
            add_rows(z, bo, wo, rows, values, m)
            logits[i] = z[:n_classes]


@njit(parallel=True, cache=True)
def best_and_gap(z):
    """``top_two`` of every row of ``z`` (m, classes) float32: (classes, gaps)."""
    classes, gaps = np.empty(z.shape[0], np.int64), np.empty(z.shape[0], np.float32)
    for i in prange(z.shape[0]):
        classes[i], gaps[i] = top_two(z[i])
    return classes, gaps
