"""The DeepID-style face recognizer of CSAW-HackML-2020, built with the layer names of its files.

The names matter: they are the HDF5 group names of the published weight files, and the
pruning defense addresses ``conv_3`` and ``pool_3`` by name. The layers are created in the
order of the original Keras 2 model so that weights-only files load in order as well as by name.
"""

from __future__ import annotations

import keras
from keras import layers

from lib.core.shapes import IMAGE_SHAPE_NHWC

CSAW_NUM_CLASSES = 1283
PRUNED_CONV = "conv_3"
PRUNED_POOL = "pool_3"


def build_deepid(
    num_classes: int = CSAW_NUM_CLASSES, input_shape: tuple[int, int, int] = IMAGE_SHAPE_NHWC
) -> keras.Model:
    """conv_1..pool_3, then two heads (fc_1 on pool_3; conv_4 -> fc_2) added, ReLU, softmax.

    With 1283 classes this has 601,643 parameters, as the CSAW BadNets do.
    """
    x = keras.Input(shape=input_shape, name="input")
    h = layers.Conv2D(20, 4, activation="relu", name="conv_1")(x)
    h = layers.MaxPooling2D(2, name="pool_1")(h)
    h = layers.Conv2D(40, 3, activation="relu", name="conv_2")(h)
    h = layers.MaxPooling2D(2, name="pool_2")(h)
    h = layers.Conv2D(60, 3, activation="relu", name="conv_3")(h)
    pool = layers.MaxPooling2D(2, name="pool_3")(h)
    conv4 = layers.Conv2D(80, 2, activation="relu", name="conv_4")(pool)
    flat1 = layers.Flatten(name="flatten_1")(pool)
    flat2 = layers.Flatten(name="flatten_2")(conv4)
    fc1 = layers.Dense(160, name="fc_1")(flat1)
    fc2 = layers.Dense(160, name="fc_2")(flat2)
    merged = layers.Add(name="add_1")([fc1, fc2])
    merged = layers.Activation("relu", name="activation_1")(merged)
    out = layers.Dense(num_classes, activation="softmax", name="output")(merged)
    return keras.Model(x, out, name="deepid_badnet")
