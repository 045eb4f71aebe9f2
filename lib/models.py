"""Load a BadNet safely, check that it has the layers the defense addresses, save models atomically.

Model files come from Google Drive, GitHub forks and classmates. Loading never executes code
from a file: a full-model HDF5 is inspected before Keras deserializes it, and a model holding a
``Lambda`` layer (arbitrary Python) is refused unless the caller opts in knowingly.
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import keras
import numpy as np

from lib.architecture import CSAW_NUM_CLASSES, build_deepid
from lib.atomic import atomic_path
from lib.errors import InputError

if TYPE_CHECKING:
    from keras.src.ops.node import Node  # a call of a layer in a functional graph

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
        raise InputError(path, f"{where} is not valid JSON ({_first_line(exc)})", _CONFIG_FIX) from None
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
            f"not a readable .keras model file ({exc.__class__.__name__}: {_first_line(exc)}); "
            "a truncated or interrupted download looks like this",
            "delete the file and run `make data` again",
        ) from None
    return _parse_config(path, "its `config.json`", raw)


def _first_line(exc: BaseException, limit: int = 300) -> str:
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


def _producer(tensor) -> tuple[keras.Operation | None, Node | None]:
    """The operation that computed ``tensor`` and that call of it (a Keras node); (None, None) for an input."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None, None
    return history.operation, history.operation._inbound_nodes[history.node_index]


def _calls_between(inputs: list, outputs: list) -> list[Node]:
    """Every call (Keras node) on a path from ``inputs`` back from ``outputs``: the graph of one model."""
    stop = {id(t) for t in inputs}
    seen: dict[int, Node] = {}
    stack = list(outputs)
    while stack:
        tensor = stack.pop()
        _, node = _producer(tensor)
        if id(tensor) in stop or node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(node.input_tensors)
    return list(seen.values())


def _nested_owner(model: keras.Model, name: str) -> str | None:
    """The name of the sub-model (at any depth) holding a layer called ``name``, if any."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and (name in [x.name for x in layer.layers] or _nested_owner(layer, name)):
            return layer.name
    return None


def _path_around(model: keras.Model, pool_node: Node) -> tuple[str, str] | None:
    """A call that reads a tensor computed before the pooling call (or a model input) on the way to the output,
    as (reader, what it reads); None when every path from the input to the output passes through the pooling call.
    """
    inputs = {id(t) for t in model.inputs}
    upstream = {id(t) for n in _calls_between(model.inputs, pool_node.input_tensors) for t in n.input_tensors}
    upstream |= {id(t) for t in pool_node.input_tensors} | inputs
    stop = {id(t) for t in pool_node.output_tensors}
    stack: list[tuple[object, str]] = [(t, "the model's output") for t in model.outputs]
    visited: set[int] = set()
    while stack:
        tensor, reader = stack.pop()
        if id(tensor) in stop or id(tensor) in visited:
            continue
        visited.add(id(tensor))
        op, node = _producer(tensor)
        if id(tensor) in upstream:
            return reader, "the model's input" if id(tensor) in inputs or op is None else repr(op.name)
        if node is not None:
            stack.extend((t, f"layer {op.name!r}") for t in node.input_tensors)
    return None


def check_prunable(model: keras.Model, conv_layer: str, pool_layer: str, path: str | Path = "model") -> None:
    """The defense needs a Conv2D named ``conv_layer`` read directly by a pooling layer named ``pool_layer``.

    Also what the sweep relies on: a single output; a conv activation that maps 0 to 0, so that a
    pruned channel is exactly zero after the pooling layer; each layer called once; and the pruned
    channels reaching the output only through the pooling layer (nothing else reads the conv, and
    every path from the input to the output passes through the pooling layer), so that the part of
    the model after the pooling layer is a function of its output alone.
    """
    names = [layer.name for layer in model.layers]
    for name in (conv_layer, pool_layer):
        owner = None if name in names else _nested_owner(model, name)
        if owner is not None:
            raise InputError(
                path,
                f"layer {name!r} is inside the nested model {owner!r}, which the defense cannot analyse",
                "rebuild the model as one functional model whose layers are all at the top level (as the CSAW "
                "DeepID), then save it with model.save()",
            )
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
    calls = _calls_between(model.inputs, model.outputs)
    (conv_node,), (pool_node,) = (_single_call(path, layer, calls) for layer in (conv, pool))
    conv_out = conv_node.output_tensors[0]
    pool_in = pool_node.input_tensors
    if len(pool_in) != 1 or pool_in[0] is not conv_out:
        counts = (
            f": {pool_layer!r} has {pool_in[0].shape[-1]} input channels but {conv_layer!r} has {conv.filters} filters"
            if len(pool_in) == 1 and pool_in[0].shape[-1] != conv.filters
            else ""
        )
        raise InputError(
            path,
            f"layer {pool_layer!r} does not read {conv_layer!r} directly{counts}",
            "name a pooling layer that directly follows the pruned convolution",
        )
    _check_only_through_pool(model, path, conv_layer, pool_layer, calls, pool_node)
    zero = keras.ops.convert_to_numpy(conv.activation(keras.ops.zeros((1,))))
    if float(np.abs(zero).max()) != 0.0:
        raise InputError(
            path,
            f"{conv_layer!r}'s activation does not map 0 to 0, so a pruned channel is not silent",
            "prune a convolution with ReLU or linear activation",
        )


def _single_call(path: str | Path, layer: keras.layers.Layer, calls: list[Node]) -> list[Node]:
    """The one call of ``layer`` in the model's graph; a layer called twice (shared) is refused."""
    found = [node for node in calls if node.operation is layer]
    if len(found) != 1:
        raise InputError(
            path,
            f"layer {layer.name!r} is called {len(found)} times between the model's input and output",
            "prune a convolution, and read a pooling layer, that the model calls exactly once (as the CSAW DeepID)",
        )
    return found


_ONLY_THROUGH_POOL_FIX = (
    "the defense measures and prunes channels at one pooling layer: use a model whose later layers read only "
    "its output (as the CSAW DeepID's conv_3 -> pool_3), or name such a pair in conv_layer=... pool_layer=..."
)


def _check_only_through_pool(
    model: keras.Model, path: str | Path, conv_layer: str, pool_layer: str, calls: list[Node], pool_node: Node
) -> None:
    """The pruned channels reach the output through the pooling layer alone, and so does the input."""
    conv_out = pool_node.input_tensors[0]  # the conv's output: checked before
    readers = sorted(
        {n.operation.name for n in calls if n is not pool_node and any(t is conv_out for t in n.input_tensors)}
    )
    if readers:
        raise InputError(
            path,
            f"{conv_layer!r} feeds {', '.join(map(repr, readers))} as well as {pool_layer!r}, so pruning its "
            f"channels changes the output by a path the defense does not measure",
            _ONLY_THROUGH_POOL_FIX,
        )
    around = _path_around(model, pool_node)
    if around is not None:
        reader, source = around
        raise InputError(
            path,
            f"{reader} reads {source}, which comes before {pool_layer!r}: the output depends on the input by a "
            f"path around {pool_layer!r} (a skip connection)",
            _ONLY_THROUGH_POOL_FIX,
        )
    try:
        keras.Model(pool_node.output_tensors[0], model.outputs[0])  # the sweep's tail; must be buildable
    except Exception as exc:
        raise InputError(
            path,
            f"Keras cannot build the part of the model after {pool_layer!r} ({exc.__class__.__name__}: "
            f"{_first_line(exc)})",
            _ONLY_THROUGH_POOL_FIX,
        ) from None


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
