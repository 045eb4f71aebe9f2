"""The processor and library versions a result was computed with.

TensorFlow's training on a CPU is deterministic on one processor but not across processors (other SIMD
widths and oneDNN kernels round differently), so every trained result names the machine it came from,
and every benchmark the processor it ran on. Nothing here changes between two runs on one machine
(no host name, no date), so a rerun writes the same bytes.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

#: CPU features that change which float kernels TensorFlow/oneDNN and numpy run.
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """``AMD EPYC (family 25, model 17)``: the model name and numbers, or what ``platform`` knows elsewhere."""
    fields = _cpuinfo()
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def simd_flags() -> list[str]:
    """Which of ``SIMD_FLAGS`` the processor has (empty where ``/proc/cpuinfo`` is not available)."""
    present = set(_cpuinfo().get("flags", "").split())
    return [f for f in SIMD_FLAGS if f in present]


def versions() -> dict[str, str]:
    """Installed versions of the libraries whose arithmetic the results depend on."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def gpus() -> list[str]:
    """``NVIDIA H100 80GB HBM3 (driver 550.54.15)`` for each GPU TensorFlow sees; empty on a CPU-only machine."""
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU")
    if not devices:
        return []
    names = [tf.config.experimental.get_device_details(d).get("device_name", d.name) for d in devices]
    try:
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(smi, capture_output=True, text=True, timeout=10).stdout.split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return [f"{name} (driver {driver})" for name in names]


def gpu_ids() -> list[str]:
    """The CUDA devices this process may use, without starting TensorFlow: ``$CUDA_VISIBLE_DEVICES`` where it is
    set, else what ``nvidia-smi`` lists; empty on a machine without NVIDIA GPUs. A study gives each of its
    local workers one of them (``lib.study.runner.gpu_env``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [i.strip() for i in visible.split(",") if i.strip()]
        return [] if not ids or ids[0] == "-1" else ids  # CUDA ignores the list from the first invalid entry
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def describe() -> dict[str, object]:
    """Everything above, as one JSON-ready dictionary (``gpus`` only where TensorFlow sees one)."""
    found = {"cpu": cpu_model(), "machine": platform.machine(), "simd": simd_flags(), "versions": versions()}
    return {**found, "gpus": gpu_names} if (gpu_names := gpus()) else found


def one_line() -> str:
    """``AMD EPYC (x86_64; avx2 avx512f ...)``: for logs and benchmark output."""
    return f"{cpu_model()} ({platform.machine()}; {' '.join(simd_flags()) or 'SIMD flags unknown'})"
