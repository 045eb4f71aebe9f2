"""The closed-form sweep's arithmetic, compiled by numba: one image's whole pruning trajectory at a time.

Why not TensorFlow's matrix products: after a ReLU most units are zero, and dense products
multiply the zeros too. Per evaluation on the CSAW stand-ins, 131 of conv_4's 960 outputs and 32
of the 160 hidden units are positive on average, so fc_2 and the output layer need 131 rows of
fc_2's kernel and 32 rows of the output layer's (about 62,000 multiply-adds) where the dense
products need 360,000, as much as the convolutions of a forward pass (``benchmarks/README.md``).
Each image carries only the linear part of its state (fc_1's output and conv_4's, before their
ReLUs) from step to step; fc_2 and the output layer are recomputed from it at every evaluation,
so their rounding does not accumulate.

An image's trajectory does not depend on any other image, so parts of the images run in parallel
(``sweep_images`` releases the GIL; ``lib.sweep.closed_form.tail`` runs ``NUMBA_NUM_THREADS`` threads), each
in the same order of operations whatever the thread count: one thread or many give the same bytes. One
thread per call, not numba's ``parallel=True``: its compiling took as long again as the kernel's own.
No fast-math flag is set, so every sum is rounded in the order written here. Zero inputs are skipped,
which equals multiplying by them only for finite weights: ``lib.sweep.closed_form.tail`` hands over no
other. The first call on a machine compiles the kernels; numba caches them beside this file
(``__pycache__``). ``make bench`` prints how long that takes.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def add_rows(y, base, w, rows, coefficients, m):
    """``y = base + sum(coefficients[t] * w[rows[t]] for t < m)``, summed in that order (``y`` may be ``base``).

    Eight rows per pass over ``y`` while eight are left (the first pass, from ``base``, takes four; then four
    more where four to seven are left, and the last few one at a time): an eighth of the loads and stores of
    ``y`` that one row at a time takes. Inlined into its callers, most of which pass a few rows of a short ``y``
    (conv_4's 80 outputs at one position). Both were measured faster; the figures are in ``benchmarks/README.md``.
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
def order_key(bits):
    """An integer that orders like the float32 with these bits (for finite values): integer maxima vectorize,
    where float maxima would need fast-math flags. Its own inverse."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@njit(cache=True)
def top_two(z, key):
    """``z``'s argmax (the first of equal maxima, as ``np.argmax``) and its best value minus its second best.

    Equal best values give a gap of 0; a NaN or infinite value anywhere gives class 0 and a NaN gap: near ties
    either way, which the Keras tail settles. Two passes of integer reductions over the values' bits
    (``order_key``), which the compiler turns into vector instructions: the best, then its first place, how many
    share it and the best of the others. ``key`` is a scratch int32 array of one entry.
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
        k = order_key(bits[q])
        at = min(at, q if k == best else n)
        ties += k == best
        second = max(second, k if k != best else -(2**31))
    key[0] = order_key(best if ties > 1 else second)
    return at, z[at] - key.view(np.float32)[0]


@njit(cache=True)
def list_positive(x, rows, values):
    """The entries of ``x`` a ReLU lets through (positive, or NaN, so that a NaN reaches the logits: a near tie),
    in order: indices in ``rows``, values in ``values``; returns how many."""
    m = 0
    for u in range(x.shape[0]):
        rows[m], values[m] = u, x[u]
        m += not x[u] <= 0
    return m


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
def _hidden(a1, c4, w2, h, rows, values):
    """The hidden layer ``h`` of the linear state ``a1``, ``c4`` (only conv_4's units its ReLU lets through are
    multiplied); lists the hidden units the next ReLU lets through in ``rows``/``values`` and returns how many."""
    m = list_positive(c4, rows, values)
    add_rows(h, a1, w2, rows, values, m)
    return list_positive(h, rows, values)


@njit(cache=True)
def _class_and_gap(wo, bo, rows, values, m, z, key):
    """``top_two`` of the logits ``bo + sum_t values[t] * wo[rows[t]]``, computed into ``z``."""
    add_rows(z, bo, wo, rows, values, m)
    return top_two(z, key)


@njit(nogil=True, cache=True)
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
    classes,
    gaps,
    logits,
):
    """Every image's class and logit gap before pruning and after each step of ``order``.

    ``pooled`` (n, H, W, C) float32; ``touched`` (n, C): channel non-zero somewhere in the image.
    Writes ``classes``/``gaps`` (len(order) + 1, n): row 0 unpruned, row k after ``order[:k]``; a step
    that does not touch an image copies its class and writes an infinite gap (not evaluated).
    ``logits`` is (n, classes) to receive each image's logits after the last step, or (0, classes).
    """
    n = pooled.shape[0]
    f1 = w1.shape[1]
    scratch = max(w1.shape[0], w2.shape[0], k4.shape[0] * k4.shape[1] * k4.shape[2], f1)
    for i in range(n):
        x = pooled[i]
        a1, h = np.empty(f1, np.float32), np.empty(f1, np.float32)
        c4, z = np.empty(w2.shape[0], np.float32), np.empty(wo.shape[1], np.float32)
        rows, values, key = np.empty(scratch, np.int32), np.empty(scratch, np.float32), np.empty(1, np.int32)
        _add_channels(x, 0, x.shape[2], np.float32(1), w1, k4, hidden_bias, c4_bias, a1, c4, rows, values)
        m = _hidden(a1, c4, w2, h, rows, values)
        classes[0, i], gaps[0, i] = _class_and_gap(wo, bo, rows, values, m, z, key)
        for k in range(order.shape[0]):
            c = order[k]
            if not touched[i, c]:
                classes[k + 1, i], gaps[k + 1, i] = classes[k, i], np.inf
                continue
            _add_channels(x, c, c + 1, np.float32(-1), w1, k4, a1, c4, a1, c4, rows, values)
            m = _hidden(a1, c4, w2, h, rows, values)
            classes[k + 1, i], gaps[k + 1, i] = _class_and_gap(wo, bo, rows, values, m, z, key)
        if logits.shape[0]:
            m = _hidden(a1, c4, w2, h, rows, values)
            add_rows(z, bo, wo, rows, values, m)
            logits[i] = z
