"""Machine-level pieces the sweep's kernels need and numba does not emit by itself, and which processor has them.

numba compiles the kernels for the processor it runs on. Three things are written here directly in LLVM
IR: reading a float32's bits as an integer and back (numba has no scalar bit cast), and listing the
entries of a vector that a ReLU lets through with a vector compress (``vcompressps``/``vpcompressd``),
where the scalar loop stores every entry at the running count: 560 -> 110 ns for conv_4's 960 outputs
on the AMD EPYC of ``benchmarks/README.md``. Without AVX-512 LLVM expands the compress into slower code
than the scalar loop (1,170 ns there, compiled for a Haswell), so the kernels compress only where
``compress_supported()``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

#: Entries listed per vector compress (one 512-bit vector of float32).
LANES = 16


def host_has(feature: str) -> bool:
    """Whether numba compiles for this processor and it has ``feature`` (LLVM's name, e.g. ``"avx512f"``).

    False whenever numba targets another processor (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``, for example
    for a portable cache): the kernels must not contain an instruction that processor may lack.
    """
    import llvmlite.binding as llvm

    if config.CPU_NAME not in (None, "host") or config.CPU_FEATURES is not None:
        return False
    return bool(llvm.get_host_cpu_features().get(feature, False))


def compress_supported() -> bool:
    """Whether the kernels list units by vector compress here (``compress_positive``): AVX-512 only."""
    return host_has("avx512f")


def broadcast(builder: ir.IRBuilder, value: ir.Value, vector: ir.VectorType) -> ir.Value:
    """``value`` in every lane of a ``vector`` (LLVM IR, for the intrinsics' code generators)."""
    lanes = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lanes, ir.Constant(vector, ir.Undefined), ir.Constant(vector, [0] * vector.count))


@intrinsic
def float_bits(typingctx, value):
    """The int32 bit pattern of a float32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def bits_float(typingctx, bits):
    """The float32 whose bit pattern is an integer's low 32 bits."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0] if bits.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@njit(cache=True)
def order_key(bits):
    """An integer that orders like the float32 with these bits (for finite values): integer maxima vectorize,
    where float maxima would need fast-math flags. Its own inverse."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@intrinsic
def _compress_positive(typingctx, source, first, rows, values, m):
    """Of the 16 float32 at address ``source``, those a ReLU lets through (positive, or NaN) stored in order at
    ``values + m`` and their indices (``first`` + lane, int32) at ``rows + m``; returns ``m`` plus their count.
    Whole vectors are stored: 16 entries past ``m`` must be writable."""
    sig = types.intp(types.uintp, types.intp, types.uintp, types.uintp, types.intp)

    def codegen(context, builder, signature, args):
        source, first, rows, values, m = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        floats, ints, mask_type = (
            ir.VectorType(f32, LANES),
            ir.VectorType(i32, LANES),
            ir.VectorType(ir.IntType(1), LANES),
        )
        x = builder.load(builder.inttoptr(source, floats.as_pointer()), align=4)
        through = builder.fcmp_unordered(">", x, ir.Constant(floats, [0.0] * LANES))
        index = broadcast(builder, builder.trunc(first, i32), ints)
        index = builder.add(index, ir.Constant(ints, list(range(LANES))))
        for vector, address, kind in ((x, values, floats), (index, rows, ints)):
            compress = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(kind, [kind, mask_type, kind]),
                f"llvm.experimental.vector.compress.v{LANES}{'f32' if kind is floats else 'i32'}",
            )
            packed = builder.call(compress, [vector, through, ir.Constant(kind, ir.Undefined)])
            target = builder.inttoptr(builder.add(address, builder.mul(m, ir.Constant(i64, 4))), kind.as_pointer())
            builder.store(packed, target, align=4)
        count = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(LANES), [ir.IntType(LANES)]), f"llvm.ctpop.i{LANES}"
        )
        return builder.add(m, builder.zext(builder.call(count, [builder.bitcast(through, ir.IntType(LANES))]), i64))

    return sig, codegen


@njit(cache=True, inline="always")
def list_positive(x, rows, values):
    """The entries of ``x`` a ReLU lets through (positive, or NaN, so that a NaN reaches the logits: a near tie),
    in order: indices in ``rows``, values in ``values``; returns how many. One entry at a time: every entry is
    stored at the running count, which only the entries let through advance."""
    m = 0
    for u in range(x.shape[0]):
        rows[m], values[m] = u, x[u]
        m += not x[u] <= 0
    return m


@njit(cache=True, inline="always")
def compress_positive(x, rows, values):
    """``list_positive`` of the contiguous float32 ``x``, 16 entries at a time (AVX-512 only, see the module
    docstring): ``rows`` (int32) and ``values`` need ``LANES`` entries of room past ``len(x)``. A kernel takes
    one or the other in separate branches: sharing one function's loop was 10 % slower without AVX-512."""
    n = x.shape[0]
    whole = n - n % LANES
    m = 0
    for first in range(0, whole, LANES):
        m = _compress_positive(x.ctypes.data + 4 * first, first, rows.ctypes.data, values.ctypes.data, m)
    for u in range(whole, n):
        rows[m], values[m] = u, x[u]
        m += not x[u] <= 0
    return m
