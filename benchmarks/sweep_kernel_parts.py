"""Where the closed-form kernel's time goes: a leave-one-out profile of ``lib.sweep.closed_form.kernels``.

    .venv/bin/python benchmarks/sweep_kernel_parts.py [--rounds 3]

The whole sweep of the real CSAW lab-3 BadNet's tail over the benchmark's images (``benchmarks/sweep.py``:
the real validation sets, or stand-ins of their sizes), timed with the kernel as it is and with one part
of it left out at a time. Each variant is the kernel's source with one call replaced, compiled apart (its
answers are wrong by design; only its time is used); a part's time is the full kernel's time minus the
variant's, both the best of ``--rounds``, measured side by side in one run. Without a processor's
hardware counters (none in a VM) this is how the parts are told apart. Leaving a part out can change
the work of the others (without the channel's removal the state stays unpruned, with fewer units
positive), so the parts need not add up to the whole.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sweep import CONV, POOL, input_files, weights_file  # noqa: E402  (the root is on the path only now)
from lib.core.quiet import import_tensorflow_quietly  # noqa: E402
from lib.runs import machine  # noqa: E402
from lib.sweep.closed_form import kernels as sweep_kernels  # noqa: E402

import_tensorflow_quietly()

#: Each part left out: the lines of ``lib.sweep.closed_form.kernels`` replaced, and by what.
PARTS = {
    "output layer and its two best logits": [
        ("    add_rows(z, bo, wo, rows, values, m)\n    return top_two(z, key)\n", "    return 0, np.float32(0)\n")
    ],
    "fc_2 (rows of its kernel)": [("    add_rows(h, a1, w2, rows, values, m)\n", "    h[:] = a1\n")],
    "both products and listing their units": [
        (
            "    m = list_positive(c4, rows, values)\n",
            "    m = 0\n",
        ),
        (
            "    return list_positive(h, rows, values)\n",
            "    return 0\n",
        ),
    ],
    "removing the channel's share": [
        (
            "            _add_channels(x, c, c + 1, np.float32(-1), w1, k4, a1, c4, a1, c4, rows, values)\n",
            "            a1[0] -= np.float32(1e-3)\n",
        )
    ],
}


def variant(replacements: list[tuple[str, str]]) -> types.ModuleType:
    """``lib.sweep.closed_form.kernels`` with ``replacements`` made, compiled apart and not cached."""
    source = inspect.getsource(sweep_kernels).replace("cache=True", "cache=False")
    for old, new in replacements:
        if source.count(old) != 1:
            sys.exit(
                f"sweep_kernel_parts: lib/sweep/closed_form/kernels.py changed: {old.strip()!r} is not there once; "
                "update PARTS"
            )
        source = source.replace(old, new)
    module = types.ModuleType("sweep_kernels_variant")
    exec(compile(source, "sweep_kernels_variant", "exec"), module.__dict__)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed sweeps of each variant (best reported)")
    args = parser.parse_args()

    from lib.defense.activations import mean_channel_activations, pool_activations, pruning_order
    from lib.network.models import load_model_file
    from lib.sweep.closed_form.tail import nonzero_channels
    from lib.sweep.engine import SweepEngine

    model = load_model_file(weights_file())
    with tempfile.TemporaryDirectory() as tmp:
        paths, what = input_files(Path(tmp))
        pooled = np.concatenate([pool_activations(model, str(p), POOL, progress=False) for p in paths])
    order = pruning_order(mean_channel_activations(pooled[: len(pooled) // 2])).astype(np.int64)
    tail = SweepEngine(model, CONV, POOL).closed_form
    arrays = tail.arrays
    n = len(pooled)
    touched = nonzero_channels(pooled)
    classes = np.empty((len(order) + 1, n), dtype=np.int64)
    gaps = np.empty((len(order) + 1, n), dtype=np.float32)
    no_logits = np.empty((0, tail.n_classes), dtype=np.float32)
    import numba

    print(f"inputs:  {what}; {n:,} images, {len(order)} channels")
    threads = numba.get_num_threads()
    print(f"machine: {machine.one_line()}; {os.cpu_count()} cores; numba {numba.__version__}, {threads} threads")

    def best_time(kernels: types.ModuleType, order: np.ndarray = order) -> float:
        kernels.sweep_images(pooled[:8], touched[:8], order, *arrays, classes[:, :8], gaps[:, :8], no_logits)
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            kernels.sweep_images(pooled, touched, order, *arrays, classes, gaps, no_logits)
            times.append(time.perf_counter() - start)
        return min(times)

    kernels = variant([])
    full = best_time(kernels)
    print(f"\n{'kernel, whole sweep':<48} {full:6.2f} s")
    print(f"{'the unpruned state and row 0 (no steps)':<48} {best_time(kernels, order[:0]):6.2f} s")
    saved = {part: full - best_time(variant(replacements)) for part, replacements in PARTS.items()}
    for part, seconds in saved.items():
        print(f"{part:<48} {seconds:6.2f} s  (left out)")
    listing = saved["both products and listing their units"] - sum(
        saved[p] for p in ("output layer and its two best logits", "fc_2 (rows of its kernel)")
    )
    print(f"{'  of which listing the units':<48} {listing:6.2f} s  (the difference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
