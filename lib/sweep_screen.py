"""The output layer screened in bfloat16, then computed exactly for the few classes that can still be the best two.

Why: the output layer was the largest part of the closed-form kernel: one float32 row of 1,283 weights
(5 KB) per positive hidden unit, about 32 rows per evaluation, read from L2 at about 2.4 cycles per 16
weights. Its bfloat16 copy is half the bytes, and ``vdpbf16ps`` (AVX512_BF16: AMD Zen 4 and later, Intel
Cooper Lake, Sapphire Rapids and later) multiplies and adds bfloat16 pairs into float32: a 64-byte load
brings 32 classes of one row, and two instructions (the value in the low, then in the high half of each
pair) add them to the even and the odd classes' accumulators, which stay in registers through all the
rows of a block of 192 classes. Measured on one core of the AMD EPYC of ``benchmarks/README.md``: the
screen 0.96 us per evaluation, the whole screened top two 1.53 us, against 2.3 us for the float32 product
and its top two.

Why it is exact: the screen gives every class a value ``s_c`` within a bound ``E`` of the float32 logit
``z_c`` that ``lib.sweep_kernels`` computes. The two classes with the best screen values have logits of at
least ``s_(2) - E`` (``s_(2)``: the second-best screen value), so the second-best logit is at least that,
and a class whose logit reaches it has ``s_c >= s_(2) - 2 E``. Only those candidates (3-4 of 1,283 per
evaluation on the CSAW stand-ins) are summed, exactly as the full product sums them: the same terms in
the same order, in float32. So the class and the gap are the full computation's, bit for bit.

The bound ``E`` covers, per evaluation with positive hidden values ``a_t`` of rows ``r_t``: rounding the
weights (``sum_t a~_t D_r``, ``D_r`` the row's largest rounding error), rounding the values to bfloat16
(``sum_t |a_t - a~_t| W_r``, ``W_r`` the row's largest magnitude), and the float32 rounding of both sums
(each of their at most ``2 m + 1`` roundings is within 2^-24 of a partial sum, and every partial sum is
within ``M = max|bias| + sum_t max(a_t, a~_t) W_r``), with a margin. Where ``M`` is not finite or could
overflow, the kernel computes every class instead. Subnormal bfloat16 values are flushed to zero here,
as the instruction does, so the bound sees what the instruction multiplies.

Processors without AVX512_BF16 (or numba targeting another processor than this one) never compile the
screen: ``screen_supported`` is False, and the kernels take ``None`` for the screen (``lib.sweep_closed_form``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from lib.cache_lines import lined_empty
from lib.simd import bits_float, broadcast, float_bits, host_has, order_key

#: Vectors of 16 float32 accumulators per block, each pair for 32 classes (even and odd): a block covers
#: 32 * BLOCK_VECTORS classes, and the classes are padded to whole blocks. 6 (192 classes, 12 accumulators)
#: was the fastest of 2, 3, 4 and 6 on the AMD EPYC of ``benchmarks/README.md``.
BLOCK_VECTORS = 6
BLOCK_CLASSES = 32 * BLOCK_VECTORS

#: float32's unit roundoff.
_UNIT_ROUNDOFF = 2.0**-24
#: Above this, a sum of float32 values could overflow: the kernel computes every class instead.
_LARGEST_SAFE = 1e37
#: Roundings counted per term of the two sums: the exact sum rounds each product and each addition, the
#: instruction each of its two additions; twice that, for an instruction that rounds less well than to nearest.
_ROUNDINGS_PER_TERM = 8.0


def screen_supported() -> bool:
    """Whether numba compiles for this processor and it has AVX512_BF16 (``vdpbf16ps``)."""
    return host_has("avx512bf16")


@njit(cache=True, inline="always")
def _bf16(bits):
    """The bfloat16 bit pattern of the float32 with (unsigned) bits ``bits``: rounded to nearest, ties to even;
    a subnormal flushed to zero of its sign, as ``vdpbf16ps`` reads it. The one place of that rule, for the
    weights (``bf16_bits``) and for each evaluation's values (``screen_scores``)."""
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    return rounded if rounded & 0x7F80 else rounded & 0x8000


@njit(cache=True)
def _bf16_all(bits):
    out = np.empty(bits.shape[0], np.uint16)
    for i in range(bits.shape[0]):
        out[i] = _bf16(np.int64(bits[i]))
    return out


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns of float32 ``x`` (``_bf16``). ``x`` must be finite."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return _bf16_all(bits.reshape(-1)).reshape(bits.shape)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """float32 values of uint16 bfloat16 ``bits``."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def screen_arrays(wo: np.ndarray, bo: np.ndarray, n_classes: int) -> tuple:
    """What the screen reads, from the output layer's float32 kernel ``wo`` (hidden, >= n_classes) and bias.

    Returns ``(packed, bias, position_class, row_error, row_bound, bias_bound)``: the bfloat16 kernel, two classes
    per int32, the classes padded to whole blocks with zero weights; the bias in the order the blocks write
    their sums (32 classes per vector pair: even classes, then odd), minus infinity for padding classes;
    each position's class; per hidden row the largest rounding error and the largest magnitude of its
    weights (float64); the largest magnitude of the bias.
    """
    weights = np.asarray(wo, dtype=np.float32)[:, :n_classes]
    hidden = weights.shape[0]
    padded = -(-n_classes // BLOCK_CLASSES) * BLOCK_CLASSES
    bits = np.zeros((hidden, padded), dtype=np.uint16)
    bits[:, :n_classes] = bf16_bits(weights)
    packed = lined_empty(hidden * padded // 2).view(np.int32).reshape(hidden, padded // 2)
    packed[...] = bits.view(np.int32)
    rounded = bf16_values(bits[:, :n_classes]).astype(np.float64)
    exact = weights.astype(np.float64)
    row_error = np.abs(exact - rounded).max(axis=1, initial=0.0)
    row_bound = np.maximum(np.abs(exact), np.abs(rounded)).max(axis=1, initial=0.0)
    position = np.arange(padded)
    position_class = 32 * (position // 32) + 2 * (position % 16) + (position % 32) // 16
    bias = lined_empty(padded)
    bias[...] = -np.inf
    real = position_class < n_classes
    bias[real] = np.asarray(bo, dtype=np.float32)[position_class[real]]
    bias_bound = float(np.abs(np.asarray(bo, dtype=np.float64)[:n_classes]).max())
    return packed, bias, position_class.astype(np.int64), row_error, row_bound, bias_bound


class _BFloat(ir.Type):
    """LLVM's ``bfloat`` (llvmlite has no such type): the operand type of the ``vdpbf16ps`` intrinsic."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, _BFloat)

    def __hash__(self) -> int:
        return hash("bfloat")


@intrinsic
def _screen_block(typingctx, out, maxima, bias, weights, row_bytes, rows, pairs, m):
    """``out[p] = bias[p] + sum_t (a~_t * w~[rows[t], class(p)])`` for one block of 32 * BLOCK_VECTORS positions,
    and each 32 positions' largest value in ``maxima`` (the values are finite or minus infinity).

    Addresses: ``out`` and ``bias`` (float32, on a cache line), ``maxima`` (float32), ``weights`` (the block's
    first int32 in row 0; rows ``row_bytes`` apart), ``rows`` (int32) and ``pairs`` (int32: a~_t's bfloat16
    bits in both halves). Each weight vector holds 32 bfloat16 values (classes 2i, 2i + 1 in int32 lane i);
    the pair masked to its low half multiplies the even classes, to its high half the odd ones, into two
    accumulators that stay in registers through all rows.
    """
    sig = types.void(
        types.uintp, types.uintp, types.uintp, types.uintp, types.intp, types.uintp, types.uintp, types.intp
    )

    def codegen(context, builder, signature, args):
        out_addr, maxima_addr, bias_addr, weights_addr, stride, rows_addr, pairs_addr, count = args
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        floats, ints, halves = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(_BFloat(), 32)
        dot = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(floats, [floats, halves, halves]), "llvm.x86.avx512bf16.dpbf16ps.512"
        )
        largest = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32, [floats]), "llvm.vector.reduce.fmax.v16f32"
        )

        def at(address, offset, kind):
            return builder.inttoptr(builder.add(address, ir.Constant(i64, offset)), kind.as_pointer())

        accumulators = [
            cgutils.alloca_once_value(builder, builder.load(at(bias_addr, 64 * v, floats), align=64))
            for v in range(2 * BLOCK_VECTORS)
        ]
        rows_ptr = builder.inttoptr(rows_addr, i32.as_pointer())
        pairs_ptr = builder.inttoptr(pairs_addr, i32.as_pointer())
        with cgutils.for_range(builder, count) as loop:
            row = builder.sext(builder.load(builder.gep(rows_ptr, [loop.index])), i64)
            pair = builder.load(builder.gep(pairs_ptr, [loop.index]))
            pair = broadcast(builder, pair, ints)
            even = builder.bitcast(builder.and_(pair, ir.Constant(ints, [0xFFFF] * 16)), halves)
            odd = builder.bitcast(builder.and_(pair, ir.Constant(ints, [-65536] * 16)), halves)
            base = builder.add(weights_addr, builder.mul(row, stride))
            for v in range(BLOCK_VECTORS):
                w = builder.bitcast(builder.load(at(base, 64 * v, ints), align=64), halves)
                for accumulator, half in ((accumulators[2 * v], even), (accumulators[2 * v + 1], odd)):
                    builder.store(builder.call(dot, [builder.load(accumulator), w, half]), accumulator)
        pairwise = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(floats, [floats, floats]), "llvm.maxnum.v16f32"
        )
        for v in range(BLOCK_VECTORS):
            even, odd = builder.load(accumulators[2 * v]), builder.load(accumulators[2 * v + 1])
            builder.store(even, at(out_addr, 128 * v, floats), align=64)
            builder.store(odd, at(out_addr, 128 * v + 64, floats), align=64)
            both = builder.call(pairwise, [even, odd], fastmath=("nnan",))
            builder.store(builder.call(largest, [both], fastmath=("nnan",)), at(maxima_addr, 4 * v, f32))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def screen_scratch(screen, hidden):
    """One image's scratch arrays for ``screened_top_two`` (empty without a screen): ``scores`` (on a cache line),
    ``maxima``, ``pairs``, ``candidates`` and ``logits``."""
    padded = 0 if screen is None else screen[1].shape[0]
    return (
        lined_empty(padded),
        np.empty(padded // 32, np.float32),
        np.empty(hidden, np.int32),
        np.empty(padded, np.int64),
        lined_empty(padded),
    )


@njit(cache=True)
def screen_scores(screen, rows, values, m, scores, maxima, pairs):
    """The screen values ``scores`` of the logits ``bo + sum_t values[t] * wo[rows[t]]`` (in ``screen_arrays``'s
    order of positions; minus infinity for padding), each 32 positions' largest in ``maxima``, and the bound
    ``E`` (see the module docstring): every class's float32 logit is within ``E`` of its screen value.
    Returns NaN, and computes nothing, where the bound cannot be trusted (a value not finite, or sums that
    could overflow). ``pairs`` (int32, >= m) is scratch.
    """
    packed, bias, _, row_error, row_bound, bias_bound = screen
    error, largest = 0.0, bias_bound
    for t in range(m):
        a, r = values[t], rows[t]
        rounded = _bf16(np.int64(float_bits(a)) & 0xFFFFFFFF)  # a positive value: a flushed one is +0
        approximate = bits_float(rounded << 16)
        pairs[t] = rounded | (rounded << 16)
        error += abs(np.float64(a) - np.float64(approximate)) * row_bound[r] + np.float64(approximate) * row_error[r]
        largest += max(np.float64(a), np.float64(approximate)) * row_bound[r]
    if not largest < _LARGEST_SAFE:  # NaN included
        return np.nan
    for b in range(scores.shape[0] // BLOCK_CLASSES):
        _screen_block(
            scores.ctypes.data + 4 * BLOCK_CLASSES * b,
            maxima.ctypes.data + 4 * BLOCK_VECTORS * b,
            bias.ctypes.data + 4 * BLOCK_CLASSES * b,
            packed.ctypes.data + 2 * BLOCK_CLASSES * b,
            packed.shape[1] * 4,
            rows.ctypes.data,
            pairs.ctypes.data,
            m,
        )
    return (error + _ROUNDINGS_PER_TERM * (m + 1) * _UNIT_ROUNDOFF * largest) * (1 + 1e-6) + 1e-30


@njit(cache=True)
def screened_top_two(screen, wo, bo, rows, values, m, scores, maxima, pairs, candidates, logits):
    """``(True, class, gap)`` equal to ``top_two`` of the float32 logits ``bo + sum_t values[t] * wo[rows[t]]``,
    or ``(False, 0, 0)`` where the screen's bound cannot be trusted: then the caller computes every class.

    ``screen`` is ``screen_arrays``'s tuple. Scratch: ``scores`` (the padded classes, on a cache line),
    ``maxima`` (a 32nd of them), ``pairs`` (int32, >= m), ``candidates`` (int64) and ``logits`` (float32),
    as long as the padded classes.
    """
    bound = screen_scores(screen, rows, values, m, scores, maxima, pairs)
    if np.isnan(bound):
        return False, 0, np.float32(0)
    position_class = screen[2]

    # The second-best screen value (the best if it is there twice), from each 32 values' largest.
    best = maxima.max()
    second, ties = -np.inf, 0
    for v in range(maxima.shape[0]):
        if maxima[v] < best:
            second = max(second, maxima[v])
            continue
        for p in range(32 * v, 32 * v + 32):
            ties += scores[p] == best
            second = second if scores[p] == best else max(second, scores[p])
    threshold = np.float64(best if ties > 1 else second) - 2.0 * bound

    n = 0
    for v in range(maxima.shape[0]):
        if np.float64(maxima[v]) < threshold:
            continue
        for p in range(32 * v, 32 * v + 32):
            candidates[n] = position_class[p]
            n += np.float64(scores[p]) >= threshold
    for q in range(0, n, 2):  # two candidates' sums at a time: each is a chain of dependent additions
        c0, c1 = candidates[q], candidates[min(q + 1, n - 1)]
        z0, z1 = bo[c0], bo[c1]
        for t in range(m):
            z0 = z0 + values[t] * wo[rows[t], c0]
            z1 = z1 + values[t] * wo[rows[t], c1]
        logits[q] = z0
        if q + 1 < n:
            logits[q + 1] = z1

    exact = logits[:n].view(np.int32)
    best_key = -(2**31)
    for q in range(n):
        best_key = max(best_key, order_key(exact[q]))
    at, ties, second_key = -1, 0, -(2**31)
    for q in range(n):
        key = order_key(exact[q])
        if key == best_key and (at < 0 or candidates[q] < candidates[at]):
            at = q
        ties += key == best_key
        second_key = max(second_key, key if key != best_key else -(2**31))
    return True, candidates[at], logits[at] - bits_float(order_key(best_key if ties > 1 else second_key))
