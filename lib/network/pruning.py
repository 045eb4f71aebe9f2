"""Prune conv channels in a copy of a Keras model: zero the channel's kernel slice and bias (or copy them back).

With a ReLU after the convolution, a zeroed channel outputs exactly 0 everywhere, and so does the
matching channel of the max-pooling layer after it; ``lib.sweep.engine`` relies on that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import keras
import numpy as np

from lib.network.models import copy_model


def zero_channels(conv: keras.layers.Layer, channels: np.ndarray, keep_bias: bool = False) -> None:
    """Zero the given output channels (or a Dense layer's units) in place: their kernel slice and, unless
    ``keep_bias`` (ANP's pruning, which zeroes the mask on ``w . x`` only), their bias."""
    kernel = conv.kernel.numpy().copy()
    kernel[..., channels] = 0.0
    conv.kernel.assign(kernel)
    if conv.use_bias and not keep_bias:
        bias = conv.bias.numpy().copy()
        bias[channels] = 0.0
        conv.bias.assign(bias)


def copy_channels(source: keras.layers.Layer, target: keras.layers.Layer, channels: np.ndarray) -> None:
    """Give the given output channels of conv layer ``target`` the kernel slice and bias they have in ``source``.

    In place, on ``target`` only; the two layers must have the same kernel shape. Undoes
    ``zero_channels`` when ``source`` is the layer as it was before.
    """
    if tuple(source.kernel.shape) != tuple(target.kernel.shape):
        raise ValueError(
            f"cannot copy channels from {source.name!r} {tuple(source.kernel.shape)} "
            f"to {target.name!r} {tuple(target.kernel.shape)}: the kernels differ in shape"
        )
    kernel = target.kernel.numpy().copy()
    kernel[..., channels] = source.kernel.numpy()[..., channels]
    target.kernel.assign(kernel)
    if target.use_bias:
        bias = target.bias.numpy().copy()
        bias[channels] = source.bias.numpy()[channels]
        target.bias.assign(bias)


def prune_channels(model: keras.Model, conv_layer: str, channels: Iterable[int]) -> keras.Model:
    """A copy of ``model`` with the given output channels of ``conv_layer`` zeroed (kernel and bias).

    The original model is left untouched.
    """
    channels = np.asarray(list(channels), dtype=np.int64)
    pruned = copy_model(model)
    conv = pruned.get_layer(conv_layer)
    n_filters = conv.kernel.shape[-1]
    if channels.size and (channels.min() < 0 or channels.max() >= n_filters):
        raise ValueError(f"channels must lie in [0, {n_filters}) for layer {conv_layer!r}, got {channels.tolist()}")
    zero_channels(conv, channels)
    return pruned


def zero_plan(model: keras.Model, plan: Mapping[str, np.ndarray], keep_bias: bool = False) -> int:
    """Zero, in place, the channels of each layer of ``plan`` (layer name -> channels); how many it names.

    Channels already zero stay zero, so applying a larger plan of the same nested family prunes further.
    """
    for name, channels in plan.items():
        if len(channels):
            zero_channels(model.get_layer(name), np.asarray(channels, dtype=np.int64), keep_bias)
    return sum(len(c) for c in plan.values())


def prune_plan(model: keras.Model, plan: Mapping[str, np.ndarray], keep_bias: bool = False) -> keras.Model:
    """A copy of ``model`` with the channels of ``plan`` (layer name -> channels) zeroed; the original untouched."""
    pruned = copy_model(model)
    zero_plan(pruned, plan, keep_bias)
    return pruned
