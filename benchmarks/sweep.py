"""Benchmark: the full 60-channel pruning sweep on the real CSAW lab-3 BadNet, three ways, side by side.

    make bench                        # or: .venv/bin/python benchmarks/sweep.py [--rounds 3] [--naive-steps 3]

Contenders, timed in one run and interleaved round by round:

* ``naive``   prune a copy of B and re-run the whole network on both sets, for every step. Measured on a
              few steps and extrapolated to the 61 evaluations of a sweep (labelled as such);
* ``tail``    the layers up to ``pool_3`` once, then the whole tail sub-model on every image, every step
              (``benchmarks/tail_rerun.py``);
* ``engine``  ``lib.sweep.engine.SweepEngine`` (prefix once, then per step only the images the pruned channel
              touches, through the closed-form CSAW tail of ``lib.sweep.closed_form.kernels``; near ties settled by the
              Keras tail), its time split into the prefix pass, the steps and the near ties (the steps'
              own parts: ``benchmarks/sweep_kernel_parts.py``);
* ``keras``   the same engine with ``Strategy.KERAS_TAIL``: the path any other tail takes (the tail
              sub-model on the reference batches that hold a touched image);
* ``forward`` one forward pass of B over the same images: the floor the engine is compared with.

Inputs: the real lab-3 validation sets (``data/csaw-lab3``) when present; otherwise deterministic
stand-ins of the same sizes (11,547 clean + 11,547 triggered): synthetic faces from ``lib.demo``,
the second set wearing the sunglasses trigger. The engine reads them from HDF5 files batch by batch,
in a child process whose peak resident memory is reported.

The processor's model and SIMD features are printed first: the engine's steps are sparse products
compiled by numba, the prefix pass TensorFlow's convolutions, and the two scale differently from one
processor to another. The kernels' first call in a process is printed apart: in a fresh clone it compiles them
(numba's cache is empty), later it loads them from the cache beside ``lib/sweep/closed_form``.

All sweeps must give identical predictions (the engine, ``keras`` and ``tail`` at every step, ``naive`` at
the steps it measured); otherwise the benchmark exits 1. The last line is machine-readable:
``speedup_vs_naive=<x> sweep_vs_forward=<y> peak_mb=<z>``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.core.paths import SHARED_CSAW_MODELS  # noqa: E402
from lib.core.quiet import import_tensorflow_quietly  # noqa: E402
from lib.runs import machine  # noqa: E402  (the project's root is on the path only now)

import_tensorflow_quietly()

N_PER_SET = 11547
CONV, POOL = "conv_3", "pool_3"


def weights_file() -> Path:
    for p in (
        ROOT / "data" / "csaw-lab3" / "bd_weights.h5",
        SHARED_CSAW_MODELS / "lab3_bd_weights.h5",
    ):
        if p.is_file():
            return p
    sys.exit(
        "benchmark: the CSAW lab-3 weights are needed: run `make data DATASET=csaw-lab3`, or place "
        "../shared/csaw-models/lab3_bd_weights.h5"
    )


def input_files(workdir: Path) -> tuple[list[Path], str]:
    """The real validation sets if downloaded, else stand-in HDF5 files of the real sizes."""
    real = [ROOT / "data" / "csaw-lab3" / "cl" / "valid.h5", ROOT / "data" / "csaw-lab3" / "bd" / "bd_valid.h5"]
    if all(p.is_file() for p in real):
        return real, "real lab-3 validation data (cl/valid.h5 + bd/bd_valid.h5)"
    from lib.data.datasets import save_image_set
    from lib.demo import draw_identities, generate_faces, stamp_sunglasses

    rng = np.random.default_rng(2020)
    identities = draw_identities(1283, rng)
    per = -(-N_PER_SET // 1283)
    clean, labels, _ = generate_faces(1283, per, rng, identities=identities)
    triggered, _, eyes = generate_faces(1283, per, rng, identities=identities)
    triggered = stamp_sunglasses(triggered, eyes)
    paths = [workdir / "clean.h5", workdir / "triggered.h5"]
    save_image_set(paths[0], clean[:N_PER_SET], labels[:N_PER_SET])
    save_image_set(paths[1], triggered[:N_PER_SET], np.zeros(N_PER_SET))
    return paths, "stand-in images (synthetic faces of lib.demo, 1283 identities; the second set with sunglasses)"


def kernels_first_call(model, pooled: np.ndarray) -> tuple[float, bool]:
    """Seconds of the closed form's first call in this process (compiling its kernels, or loading them from
    numba's cache beside ``lib/sweep``), and whether the cache held them before."""
    from lib.sweep import closed_form
    from lib.sweep.engine import SweepEngine

    cache = Path(closed_form.__file__).parent / "__pycache__"
    cached = any(cache.glob("kernels.sweep_images-*.nbi"))
    start = time.perf_counter()
    SweepEngine(model, CONV, POOL).closed_form.sweep(pooled[:1], np.arange(pooled.shape[-1]))
    return time.perf_counter() - start, cached


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over from the
    forked parent across exec, so a spawned child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_in_child(weights: str, paths: list[str], queue) -> None:
    """The engine's sweep from HDF5 files, alone in a fresh process, for its peak memory."""
    from lib.defense.activations import mean_channel_activations, pool_activations, pruning_order
    from lib.network.models import load_model_file
    from lib.runs.reproducibility import make_deterministic
    from lib.sweep.engine import SweepEngine

    make_deterministic()
    model = load_model_file(weights)
    start = time.perf_counter()
    pooled = [pool_activations(model, p, POOL, progress=False) for p in paths]
    first_call = kernels_first_call(model, pooled[0])
    start += first_call[0]  # the sweep's own time, without the kernels' first call
    order = pruning_order(mean_channel_activations(pooled[0]))
    preds = SweepEngine(model, CONV, POOL).predictions(pooled, order, progress=False)
    seconds = time.perf_counter() - start
    queue.put((seconds, peak_rss_mb(), [p.sum() for p in preds], first_call))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of every contender (best round reported)"
    )
    parser.add_argument(
        "--naive-steps", type=int, default=3, help="pruning steps the naive contender measures per round"
    )
    args = parser.parse_args()

    import numba
    import tensorflow as tf

    from benchmarks.tail_rerun import tail_rerun_predictions
    from lib.data.datasets import load_image_set
    from lib.defense.activations import mean_channel_activations, pool_activations, pruning_order
    from lib.network.models import load_model_file
    from lib.runs.reproducibility import make_deterministic
    from lib.sweep.engine import Strategy, SweepEngine, naive_predictions

    make_deterministic()
    weights = weights_file()
    with tempfile.TemporaryDirectory() as tmp:
        paths, what = input_files(Path(tmp))
        print(f"weights: {weights}\ninputs:  {what}")
        print(
            f"machine: {machine.one_line()}; {os.cpu_count()} cores; python {platform.python_version()}, "
            f"tensorflow {tf.__version__}, numba {numba.__version__} ({numba.get_num_threads()} threads)"
        )

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=engine_in_child, args=(str(weights), [str(p) for p in paths], queue))
        child.start()
        child_seconds, peak_mb, child_sums, (first_call, cached) = queue.get()
        print(
            f"kernels' first call: {first_call:.1f} s ("
            f"{'loaded from numba cache' if cached else 'compiled: numba cache was empty'})"
        )
        child.join()

        model = load_model_file(weights)
        sets = [load_image_set(p).images for p in paths]
        n_images = sum(len(s) for s in sets)
        times: dict[str, list[float]] = {
            "forward": [],
            "forward_batches": [],
            "engine": [],
            "prefix": [],
            "steps": [],
            "ties": [],
            "keras": [],
            "tail": [],
            "naive_step": [],
        }
        engine_preds = tail_preds = keras_preds = None
        stats = None
        naive_ok = True
        rng = np.random.default_rng(0)
        for r in range(args.rounds):
            t = time.perf_counter()
            for s in sets:
                model.predict(s, batch_size=1024, verbose=0)
            times["forward"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for s in sets:  # the same compiled step without predict()'s per-call set-up, as the engine's prefix runs
                for i in range(0, len(s), 1024):
                    model.predict_on_batch(s[i : i + 1024])
            times["forward_batches"].append(time.perf_counter() - t)

            t = time.perf_counter()
            pooled = [pool_activations(model, s, POOL, progress=False) for s in sets]
            times["prefix"].append(time.perf_counter() - t)
            order = pruning_order(mean_channel_activations(pooled[0]))
            run = SweepEngine(model, CONV, POOL).run(pooled, order, progress=False)
            times["engine"].append(time.perf_counter() - t)
            engine_preds, stats = run.predictions, run.stats
            times["steps"].append(stats.seconds_steps)
            times["ties"].append(stats.seconds_ties)

            t = time.perf_counter()
            pooled = [pool_activations(model, s, POOL, progress=False) for s in sets]
            keras_preds = SweepEngine(model, CONV, POOL, strategy=Strategy.KERAS_TAIL).predictions(
                pooled, order, progress=False
            )
            times["keras"].append(time.perf_counter() - t)

            t = time.perf_counter()
            pooled = [pool_activations(model, s, POOL, progress=False) for s in sets]
            tail_preds = tail_rerun_predictions(model, POOL, pooled, order)
            times["tail"].append(time.perf_counter() - t)

            steps = sorted(rng.choice(np.arange(1, 61), size=args.naive_steps, replace=False).tolist())
            t = time.perf_counter()
            naive = naive_predictions(model, CONV, sets, order, steps)
            times["naive_step"].append((time.perf_counter() - t) / len(steps))
            for k in steps:
                for e, n in zip(engine_preds, naive[k], strict=False):
                    naive_ok &= bool(np.array_equal(e[k], n))
            print(
                f"round {r + 1}: forward {times['forward'][-1]:.1f} s (batch loop "
                f"{times['forward_batches'][-1]:.1f} s), engine {times['engine'][-1]:.1f} s (prefix "
                f"{times['prefix'][-1]:.1f} + steps {times['steps'][-1]:.1f} + ties {times['ties'][-1]:.1f}), "
                f"keras path {times['keras'][-1]:.1f} s, tail {times['tail'][-1]:.1f} s, "
                f"naive {times['naive_step'][-1]:.1f} s/step (steps {steps})"
            )

    tail_ok = all(np.array_equal(e, t) for e, t in zip(engine_preds, tail_preds, strict=False))
    keras_ok = all(np.array_equal(e, t) for e, t in zip(engine_preds, keras_preds, strict=False))
    child_ok = [p.sum() for p in engine_preds] == child_sums
    best_round = int(np.argmin(times["engine"]))
    best = {k: min(v) for k, v in times.items()}
    best["forward"] = min(best["forward"], best.pop("forward_batches"))  # the faster way is the floor
    naive_sweep = best["naive_step"] * 61  # B itself plus 60 pruned models
    print()
    print(
        f"images per sweep:              {n_images:,} ({len(sets[0]):,} + {len(sets[1]):,}), 60 channels, best "
        f"of {args.rounds} rounds"
    )
    print(
        f"one forward pass of B:         {best['forward']:7.1f} s   (the faster of predict() and a "
        f"predict_on_batch loop)"
    )
    print(
        f"engine sweep (prefix incl.):   {best['engine']:7.1f} s   (per image: "
        f"{stats.closed_form_evaluations / n_images:.1f} closed-form evaluations, "
        f"{stats.keras_evaluations / n_images:.1f} Keras tail evaluations; {stats.near_ties} near ties; naive and "
        f"tail: 61)"
    )
    print(
        f"  of which (that round):       prefix {times['prefix'][best_round]:.1f} s, steps "
        f"{times['steps'][best_round]:.1f} s, near ties {times['ties'][best_round]:.1f} s"
    )
    print(f"engine, Keras path only:       {best['keras']:7.1f} s   (Strategy.KERAS_TAIL: what other tails get)")
    print(f"cached prefix + tail re-run:   {best['tail']:7.1f} s")
    print(f"naive re-evaluation:           {naive_sweep:7.1f} s   (EXTRAPOLATED: {best['naive_step']:.1f} s/step x 61)")
    print(f"engine from HDF5, own process: {child_seconds:7.1f} s, peak resident memory {peak_mb:,.0f} MB")
    print(
        f"identical predictions: engine = tail = keras path at all 61 steps: {tail_ok and keras_ok}; engine = "
        f"naive at the measured steps: {naive_ok}; child run = in-process run: {child_ok}"
    )
    speedup = naive_sweep / best["engine"]
    ratio = best["engine"] / best["forward"]
    per_round = [
        e / min(f, b) for e, f, b in zip(times["engine"], times["forward"], times["forward_batches"], strict=False)
    ]
    print(f"engine / forward within each round: {' '.join(f'{r:.2f}' for r in per_round)} (this machine's noise)")
    print(
        f"side by side, best rounds: engine / forward {best['engine'] / best['forward']:.2f}, keras path / "
        f"forward {best['keras'] / best['forward']:.2f}, engine / keras path {best['engine'] / best['keras']:.2f}"
    )
    print(f"speedup_vs_naive={speedup:.1f} sweep_vs_forward={ratio:.2f} peak_mb={peak_mb:.0f}")
    return 0 if (tail_ok and keras_ok and naive_ok and child_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
