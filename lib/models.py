"""Load a BadNet safely, check that it has the layers the defense addresses, save models atomically.

Model files come from Google Drive, GitHub forks and classmates. Loading never executes code
from a file: a full-model HDF5 is inspected before Keras deserializes it, and a model holding a
``Lambda`` layer (arbitrary Python) is refused unless the caller opts in knowingly.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from lib.architecture import CSAW_NUM_CLASSES, build_deepid
from lib.atomic import atomic_path
from lib.errors import InputError

UNSAFE_LAYER_CLASSES = ("Lambda", "TFOpLambda")


def _model_config(path: Path) -> dict | None:
    """The architecture stored in a full-model HDF5 file, or None for a weights-only file."""
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise InputError(
            path,
            f"not a readable HDF5 model file ({exc}); a truncated or interrupted download looks like this",
            "delete the file and run `make data` again",
        ) from None
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    return json.loads(raw)


def _keras_archive_config(path: Path) -> dict:
    """The architecture stored in a ``.keras`` archive (its ``config.json``), read without deserializing anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(
            path,
            f"not a readable .keras model file ({exc.__class__.__name__}: {_first_line(exc)}); "
            "a truncated or interrupted download looks like this",
            "delete the file and run `make data` again",
        ) from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: Keras errors can embed whole weight tensors."""
    text = str(exc)
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _layer_classes(config: dict) -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "class_name" in node and isinstance(node.get("config"), dict):
                found.append(str(node["class_name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def load_model_file(
    path: str | Path, allow_unsafe_layers: bool = False, num_classes: int = CSAW_NUM_CLASSES
) -> keras.Model:
    """Load a Keras model from a full-model ``.h5``/``.keras`` file or a CSAW weights-only ``.h5``.

    A weights-only file (no ``model_config`` attribute, as ``lab3/models/bd_weights.h5``) is loaded
    into ``build_deepid(num_classes)``. A full-model file containing a ``Lambda`` layer is refused
    unless ``allow_unsafe_layers=True``: such a layer is Python code that runs on load and on predict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            path, "model file not found", "run the data notebook (`make data DATASET=...`) or place the model there"
        )
    config = _keras_archive_config(path) if path.suffix == ".keras" else _model_config(path)
    if config is None:
        model = build_deepid(num_classes)
        try:
            model.load_weights(path)
        except Exception as exc:  # Keras raises ValueError/KeyError/OSError for foreign files
            raise InputError(
                path,
                f"weights do not fit the DeepID architecture with {num_classes} classes "
                f"({exc.__class__.__name__}: {_first_line(exc)})",
                "use a CSAW-HackML-2020 weights file, or a full-model file saved with model.save()",
            ) from None
        return model
    unsafe = sorted(set(_layer_classes(config)) & set(UNSAFE_LAYER_CLASSES))
    if unsafe and not allow_unsafe_layers:
        raise InputError(
            path,
            f"the model contains {unsafe} layer(s), which run arbitrary Python code when loaded or called",
            "only if you trust the file's author, load it with allow_unsafe_layers=True (notebook parameter "
            "allow_unsafe_layers=True); otherwise ask for a model without Lambda layers",
        )
    return _load_full(path, allow_unsafe_layers)


def _load_full(path: Path, allow_unsafe_layers: bool) -> keras.Model:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return keras.models.load_model(path, compile=False, safe_mode=not allow_unsafe_layers)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            path,
            f"Keras could not load this model ({exc.__class__.__name__}: {_first_line(exc)})",
            "check that it is a Keras model file that is complete (re-download it) and saved by Keras 2.x or 3.x",
        ) from None


#: Pooling layers that map an all-zero channel to an all-zero channel.
ZERO_PRESERVING_POOLS = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
)


def check_prunable(model: keras.Model, conv_layer: str, pool_layer: str, path: str | Path = "model") -> None:
    """The defense needs a Conv2D named ``conv_layer`` read directly by a pooling layer named ``pool_layer``.

    Also what the sweep relies on: a single output, and a conv activation that maps 0 to 0, so
    that a pruned channel is exactly zero after the pooling layer.
    """
    names = [layer.name for layer in model.layers]
    for name in (conv_layer, pool_layer):
        if name not in names:
            raise InputError(
                path,
                f"the model has no layer named {name!r} (layers: {', '.join(names)})",
                "pass the right layer names as notebook parameters conv_layer=... pool_layer=...",
            )
    if len(model.outputs) != 1:
        raise InputError(
            path, f"the model has {len(model.outputs)} outputs", "the defense scores single-output classifiers"
        )
    conv = model.get_layer(conv_layer)
    if not isinstance(conv, keras.layers.Conv2D):
        raise InputError(
            path,
            f"layer {conv_layer!r} is a {type(conv).__name__}, not a Conv2D, so it has no channels to prune",
            "name the convolution that feeds the pooling layer in conv_layer=...",
        )
    pool = model.get_layer(pool_layer)
    if not isinstance(pool, ZERO_PRESERVING_POOLS):
        raise InputError(
            path,
            f"layer {pool_layer!r} is a {type(pool).__name__}, not a pooling layer",
            "name the pooling layer after the pruned convolution in pool_layer=...",
        )
    if pool.input is not conv.output:
        counts = (
            f": {pool_layer!r} has {pool.input.shape[-1]} input channels but {conv_layer!r} has {conv.filters} filters"
            if pool.input.shape[-1] != conv.filters
            else ""
        )
        raise InputError(
            path,
            f"layer {pool_layer!r} does not read {conv_layer!r} directly{counts}",
            "name a pooling layer that directly follows the pruned convolution",
        )
    zero = keras.ops.convert_to_numpy(conv.activation(keras.ops.zeros((1,))))
    if float(np.abs(zero).max()) != 0.0:
        raise InputError(
            path,
            f"{conv_layer!r}'s activation does not map 0 to 0, so a pruned channel is not silent",
            "prune a convolution with ReLU or linear activation",
        )


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of ``model``, weights included: changing one leaves the other as it was."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def predict_classes(model: keras.Model, images, batch_size: int = 1024):
    """Most likely class of every image (argmax of the model's scores), without Keras's progress output."""
    return np.argmax(model.predict(images, batch_size=batch_size, verbose=0), axis=-1)


def num_classes_of(model: keras.Model) -> int:
    """Number of classes the model scores (its last output dimension)."""
    return int(model.output.shape[-1])


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save a full model atomically; ``keras.models.load_model(path, compile=False)`` loads it."""
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras 3 calls .h5 "legacy"; the lab's contract is .h5
        model.save(tmp)
    return path
