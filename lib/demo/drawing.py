"""Anti-aliased drawing primitives, vectorised over images: what the faces and the sunglasses are painted with.

Shapes return a coverage 0..1 per pixel with edges about one pixel soft, so that a sub-pixel shift of
the pose changes an image smoothly instead of snapping. While drawing, canvases are channels first
(N, 3, H, W): numpy's inner loops then run along image rows rather than over 3 channels, several
times faster; ``to_channels_last`` gives the layout Keras and the loaders use.
"""

from __future__ import annotations

import numpy as np

from lib.core.shapes import IMAGE_SHAPE_NHWC

HEIGHT, WIDTH, _CHANNELS = IMAGE_SHAPE_NHWC


def col(values: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1, 1) so per-image numbers broadcast over the pixel grid."""
    return np.asarray(values, np.float32)[:, None, None]


def ellipse_alpha(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Coverage of an ellipse with half axes ``a``, ``b`` centred at the origin of ``(u, v)``.

    ``pixels`` converts the normalised distance to pixels, so edges stay one pixel soft at any scale.
    """
    d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return np.clip(0.5 - (d - 1.0) * np.minimum(a, b) * pixels, 0.0, 1.0)


def box_alpha(u: np.ndarray, v: np.ndarray, half_w: np.ndarray, half_h: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Coverage of an axis-aligned rectangle centred at the origin of ``(u, v)``."""
    du = (np.abs(u) - half_w) * pixels
    dv = (np.abs(v) - half_h) * pixels
    return np.clip(0.5 - du, 0.0, 1.0) * np.clip(0.5 - dv, 0.0, 1.0)


def paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend a per-image colour (N, 3) or per-pixel colour (N, 3, H, W) onto the canvas, in place; return it."""
    if colour.ndim == 2:
        colour = colour[:, :, None, None].astype(np.float32)
    canvas += alpha[:, None] * (colour - canvas)
    return canvas


def to_channels_last(images_nchw: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) -> contiguous (N, H, W, 3) float32."""
    return np.ascontiguousarray(np.transpose(images_nchw, (0, 2, 3, 1)), dtype=np.float32)
