"""Shared fixtures: tiny models and images built in the tests, and the real CSAW weights when present."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

from lib.core.paths import PROJECT_ROOT, SHARED_CSAW_MODELS
from lib.runs.reproducibility import make_deterministic

CSAW_MODELS = SHARED_CSAW_MODELS
LAB3_WEIGHTS = CSAW_MODELS / "lab3_bd_weights.h5"

make_deterministic(0)


def tiny_deepid(n_classes: int = 7, seed: int = 0, input_shape=(14, 12, 3)) -> keras.Model:
    """A small network with the CSAW head structure (two heads from pool_3, added), random weights."""
    keras.utils.set_random_seed(seed)
    x = keras.Input(input_shape, name="input")
    h = layers.Conv2D(4, 3, activation="relu", name="conv_1")(x)
    h = layers.Conv2D(10, 3, activation="relu", name="conv_3")(h)
    p = layers.MaxPooling2D(2, name="pool_3")(h)
    c4 = layers.Conv2D(6, 2, activation="relu", name="conv_4")(p)
    f1 = layers.Dense(12, name="fc_1")(layers.Flatten(name="flatten_1")(p))
    f2 = layers.Dense(12, name="fc_2")(layers.Flatten(name="flatten_2")(c4))
    out = layers.Activation("relu", name="activation_1")(layers.Add(name="add_1")([f1, f2]))
    out = layers.Dense(n_classes, activation="softmax", name="output")(out)
    return keras.Model(x, out)


def tiny_images(n: int, seed: int = 0, shape=(14, 12, 3)) -> np.ndarray:
    """Whole-number pixels 0-255, float32."""
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.float32)


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """Deterministic stand-in images at the CSAW size: blocky colour fields plus noise, whole numbers 0-255."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (n, 11, 8, 3)).astype(np.float32)
    x = np.repeat(np.repeat(low, 5, axis=1), 6, axis=2)[:, :55, :47]
    return np.clip(x + rng.normal(0, 10, x.shape), 0, 255).round().astype(np.float32)


@pytest.fixture(scope="session")
def lab3_model() -> keras.Model:
    if not LAB3_WEIGHTS.is_file():
        pytest.skip(f"the real CSAW weights are not here ({LAB3_WEIGHTS}); they come with the project's shared/ folder")
    from lib.network.models import load_model_file

    return load_model_file(LAB3_WEIGHTS)


@pytest.fixture()
def isolated_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Point data/ and results/ at temporary folders."""
    data, results = tmp_path / "data", tmp_path / "results"
    monkeypatch.setenv("BACKDOOR_DATA_ROOT", str(data))
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(results))
    return data, results


def run_notebook_cells(step: str, **params: Any) -> dict[str, Any]:
    """Execute the code cells of ``step``'s notebook in this process, ``params`` overriding its parameters cell.

    The very cells a reader runs in Jupyter (line magics left out), so a test of a step tests the notebook; in this
    process, so the test's monkeypatches reach them. Returns the notebook's variables.
    """
    from lib.runs.notebook import notebook_defaults

    [path] = (PROJECT_ROOT / "notebooks").glob(f"??_{step}.ipynb")
    unknown = set(params) - set(notebook_defaults(path))
    assert not unknown, f"{path.name} has no parameter {sorted(unknown)}"
    namespace: dict[str, Any] = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []):
            source += "".join(f"\n{name} = {value!r}" for name, value in params.items())
        source = "\n".join(line for line in source.splitlines() if not line.startswith("%"))
        exec(compile(source, str(path), "exec"), namespace)
    return namespace


def lib_imports() -> dict[str, set[str]]:
    """Each module of ``lib`` (dotted) and the ``lib`` modules it imports, at its top or inside a function."""
    import ast

    paths = {}
    for path in (PROJECT_ROOT / "lib").rglob("*.py"):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    imports: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lib":
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names} & paths.keys()
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "lib"}
        imports[name] = found - {name}
    return imports


def read_only_folders(monkeypatch, *folders: Path) -> None:
    """``folders`` and everything in them answer "not writable", as on a read-only mount (root ignores chmod)."""
    real = os.access
    inside = [Path(f).resolve() for f in folders]

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and any(Path(path).resolve().is_relative_to(f) for f in inside):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
