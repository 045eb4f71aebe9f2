"""The CSAW tail in closed form: ``tail.ClosedFormTail`` is the interface, ``kernels`` its numba arithmetic."""
