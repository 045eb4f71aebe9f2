"""Load a BadNet safely, predict with it, save models atomically.

Model files come from Google Drive, GitHub forks and classmates. Loading never executes code
from a file: a full-model HDF5 is inspected before Keras deserializes it, and a model holding a
``Lambda`` layer (arbitrary Python) is refused unless the caller opts in knowingly.
"""

from __future__ import annotations

import json
import logging
import warnings
import weakref
import zipfile
import zlib
from pathlib import Path

import h5py
import keras
import numpy as np

from lib.core.atomic import atomic_path
from lib.core.errors import InputError
from lib.network.architecture import CSAW_NUM_CLASSES, build_deepid

#: Images per forward batch everywhere (predictions, activations, the sweep, evaluation). Keras's float32 results
#: on a CPU can depend on the batch an image is evaluated in, so the results are defined for this batch size.
BATCH_SIZE = 1024
UNSAFE_LAYER_CLASSES = ("Lambda", "TFOpLambda")


#: Largest model architecture (JSON) accepted, in bytes, checked before it is read or parsed. The
#: CSAW DeepID's is 12 kB and NASNetLarge's (1041 layers, keras.applications) 1 MB; more than this
#: is a damaged or hostile file, whose parsing could exhaust memory.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_CONFIG_FIX = (
    "re-download the model, or save it again with model.save(): Keras stores the architecture as a JSON object"
)


def _check_config_size(path: Path, where: str, size: int) -> None:
    if size > MAX_CONFIG_BYTES:
        raise InputError(
            path,
            f"{where} is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} any real model's architecture needs",
            _CONFIG_FIX,
        )


def _parse_config(path: Path, where: str, raw: object) -> dict:
    """The architecture as a JSON object: one message for text that is not JSON, or JSON that is not an object."""
    if not isinstance(raw, (bytes, str)):
        raise InputError(path, f"{where} is not text but {type(raw).__name__}", _CONFIG_FIX)
    _check_config_size(path, where, len(raw))
    try:
        config = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(path, f"{where} is not UTF-8 text", _CONFIG_FIX) from None
    except ValueError as exc:
        raise InputError(path, f"{where} is not valid JSON ({first_line(exc)})", _CONFIG_FIX) from None
    except RecursionError:
        raise InputError(path, f"{where} is JSON nested too deeply to read", _CONFIG_FIX) from None
    if not isinstance(config, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(config), "a number")
        raise InputError(path, f"{where} is JSON {kind}, not the object that describes a model", _CONFIG_FIX)
    return config


def _model_config(path: Path) -> dict | None:
    """The architecture stored in a full-model HDF5 file, or None for a weights-only file.

    Its size is checked before it is read where HDF5 knows it: a variable-length string (what Keras
    writes) is stored apart from the attribute, so its length is only known, and checked, once read;
    it is no larger than the file.
    """
    where = "its `model_config` attribute"
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                return None
            attr = f.attrs.get_id("model_config")
            if attr.shape != () or h5py.check_string_dtype(attr.dtype) is None:
                raise InputError(path, f"{where} is not one text but {attr.dtype} of shape {attr.shape}", _CONFIG_FIX)
            _check_config_size(path, where, attr.get_storage_size())
            raw = f.attrs["model_config"]
    except OSError as exc:
        raise InputError(
            path,
            f"not a readable HDF5 model file ({exc}); a truncated or interrupted download looks like this",
            "delete the file and run `make data` again",
        ) from None
    return _parse_config(path, where, raw)


def _keras_archive_config(path: Path) -> dict:
    """The architecture stored in a ``.keras`` archive (its ``config.json``), read without deserializing anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            _check_config_size(path, "its `config.json`", info.file_size)
            raw = archive.read(info)  # zipfile stops at the declared size and checks the CRC
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, RuntimeError, NotImplementedError, zlib.error) as exc:
        raise InputError(
            path,
            f"not a readable .keras model file ({exc.__class__.__name__}: {first_line(exc)}); "
            "a truncated or interrupted download looks like this",
            "delete the file and run `make data` again",
        ) from None
    return _parse_config(path, "its `config.json`", raw)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: Keras errors can embed whole weight tensors."""
    text = str(exc)
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _layer_classes(config: dict) -> list[str]:
    """Every ``class_name`` in the architecture, nested models included (iterative: JSON can nest deeply)."""
    found: list[str] = []
    stack: list[object] = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node and isinstance(node.get("config"), dict):
                found.append(str(node["class_name"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def is_weights_only(path: str | Path) -> bool:
    """Whether ``path`` holds weights without an architecture (a CSAW ``bd_weights.h5``): nothing in it says
    how its network sees pixels."""
    path = Path(path)
    return path.suffix != ".keras" and _model_config(path) is None


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
                f"({exc.__class__.__name__}: {first_line(exc)})",
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
            f"Keras could not load this model ({exc.__class__.__name__}: {first_line(exc)})",
            "check that it is a Keras model file that is complete (re-download it) and saved by Keras 2.x or 3.x",
        ) from None


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy of ``model``, weights included: changing one leaves the other as it was."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


#: Sub-models already built, per model and name: a fresh one traces its compiled predict step again on every
#: call (about 0.1 s of a 3 s pass, and TensorFlow's retracing warnings). The weak keys let a model go; a
#: sub-model shares its layers and weights.
_SUB_MODELS: weakref.WeakKeyDictionary[keras.Model, dict[str, keras.Model]] = weakref.WeakKeyDictionary()


def sub_model(model: keras.Model, inputs, outputs, name: str) -> keras.Model:
    """``keras.Model(inputs, outputs, name=name)`` over ``model``'s layers, built once per model and name."""
    built = _SUB_MODELS.setdefault(model, {})
    if name not in built:
        built[name] = keras.Model(inputs, outputs, name=name)
    return built[name]


def predict_classes(model: keras.Model, images, batch_size: int = BATCH_SIZE):
    """Most likely class of every image (argmax of the model's scores), without Keras's progress output."""
    return np.argmax(model.predict(images, batch_size=batch_size, verbose=0), axis=-1)


def num_classes_of(model: keras.Model) -> int:
    """Number of classes the model scores (its last output dimension)."""
    return int(model.output.shape[-1])


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save a full model atomically; ``keras.models.load_model(path, compile=False)`` loads it, in this Keras and
    in the older Keras 3 of the platforms (``portable_config``)."""
    path = Path(path)
    # Keras 3 calls .h5 "legacy" (a warning, or a line of absl's log); the lab's contract is .h5.
    absl = logging.getLogger("absl")
    level = absl.level
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        absl.setLevel(logging.ERROR)
        try:
            model.save(tmp)
        finally:
            absl.setLevel(level)
        if path.suffix == ".h5":
            with h5py.File(tmp, "r+") as f:
                f.attrs["model_config"] = json.dumps(portable_config(json.loads(f.attrs["model_config"])))
    return path


def portable_config(config: object) -> object:
    """A model's config without the initializer arguments left at their default ``None``.

    Keras after 3.13 writes ``input_axes``/``output_axes`` into the initializers' configs, and the Keras 3.13 of
    Kaggle and Colab refuses them (``TypeError`` while loading): a published BadNet saved by the pinned Keras
    would not load there. Initializers only matter for training a layer anew; a missing argument takes the same
    default.
    """
    if isinstance(config, list):
        return [portable_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    portable = {key: portable_config(value) for key, value in config.items()}
    if portable.get("module") == "keras.initializers" and isinstance(portable.get("config"), dict):
        portable["config"] = {key: value for key, value in portable["config"].items() if value is not None}
    return portable
