"""Can the defense prune this model? A Conv2D whose channels reach the output only through one pooling layer.

The sweep measures and prunes channels at one pooling layer and re-evaluates only the layers after it
(``lib.sweep.engine``), so a model qualifies when its output depends on the pruned convolution only through that
pooling layer: the convolution feeds nothing else, no path from the input goes around the pooling layer,
both are called once, at the top level, and a pruned channel is exactly zero after pooling. The graph is
walked through Keras 3's call records; every refusal names the layer and says what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from lib.core.errors import InputError
from lib.network.models import first_line

if TYPE_CHECKING:
    from keras.src.ops.node import Node  # a call of a layer in a functional graph


#: Pooling layers that map an all-zero channel to an all-zero channel.
ZERO_PRESERVING_POOLS = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
)


def producer(tensor) -> tuple[keras.Operation | None, Node | None]:
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
        _, node = producer(tensor)
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
        op, node = producer(tensor)
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
            f"{first_line(exc)})",
            _ONLY_THROUGH_POOL_FIX,
        ) from None
