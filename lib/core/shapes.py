"""The CSAW face as the networks see it: one place for the shape the data, the networks and the demos share.

Here and not in ``lib.network.architecture`` so that reading a dataset never imports Keras (a study's command
line, for one, answers before TensorFlow loads).
"""

from __future__ import annotations

#: Height, width, RGB.
IMAGE_SHAPE_NHWC = (55, 47, 3)
