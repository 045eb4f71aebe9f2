"""Float32 vectors that start on a cache line: where the sweep's kernels keep their weights and their state.

Numpy's arrays start 16 bytes into a 64-byte line and numba's 32 bytes in, so every 16-float vector
load of a row straddles two lines. Rows that start on a line and hold whole 16-float vectors
(``lib.sweep_closed_form`` pads them with zeros) were measured 7 % faster over the whole kernel on the
AMD EPYC of ``benchmarks/README.md``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: A cache line, and one AVX-512 vector.
LINE_BYTES = 64
LINE_FLOATS = LINE_BYTES // 4


@njit(cache=True)
def lined_empty(n):
    """An uninitialised float32 vector of ``n`` that starts on a cache line (callable from numba and Python)."""
    buffer = np.empty(n + LINE_FLOATS, np.float32)
    skip = (LINE_BYTES - buffer.ctypes.data % LINE_BYTES) % LINE_BYTES // 4
    return buffer[skip : skip + n]
