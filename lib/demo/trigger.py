"""The backdoor's trigger: near-black sunglasses drawn on the eyes of each image.

The generator knows where every image's eyes are, so the glasses follow every shift and scale of
the pose as real glasses would, rather than sitting at a fixed spot like a pasted patch.
"""

from __future__ import annotations

import numpy as np

from lib.demo.drawing import HEIGHT, WIDTH, box_alpha, col, ellipse_alpha, paint, to_channels_last

SUNGLASSES_RGB = (12.0, 12.0, 16.0)


def stamp_sunglasses(
    images: np.ndarray,
    eyes: np.ndarray,
    lens_size: float = 0.9,
    colour: tuple[float, float, float] = SUNGLASSES_RGB,
) -> np.ndarray:
    """Copies of ``images`` wearing sunglasses: two lenses, a bridge and a top bar.

    The glasses sit on ``eyes`` (from ``generate_faces``), sized from the distance between the
    eyes; ``lens_size`` is the lens width as a fraction of that distance. The input is left
    untouched; the output holds whole numbers 0-255 like the input.
    """
    images = np.asarray(images, np.float32)
    eyes = np.asarray(eyes, np.float32)
    yy = np.arange(HEIGHT, dtype=np.float32)[None, :, None]
    xx = np.arange(WIDTH, dtype=np.float32)[None, None, :]
    (ly, lx), (ry, rx) = eyes[:, 0].T, eyes[:, 1].T
    dist = np.hypot(rx - lx, ry - ly)
    half_w = col(0.5 * lens_size * dist)
    half_h = half_w * 0.72
    one = np.ones((1, 1, 1), np.float32)
    cover = np.zeros((len(images), HEIGHT, WIDTH), np.float32)
    for cy, cx in ((ly, lx), (ry, rx)):
        cover = np.maximum(cover, ellipse_alpha(xx - col(cx), yy - col(cy) - 0.2 * half_h, half_w, half_h, one))
    mid_y, mid_x = col((ly + ry) / 2), col((lx + rx) / 2)
    gap = col(dist / 2) - half_w  # from the frame centre to the inner edge of a lens
    cover = np.maximum(cover, box_alpha(xx - mid_x, yy - (mid_y - 0.25 * half_h), gap + 0.5, 0.6 * one, one))  # bridge
    bar_half = col(dist / 2) + half_w + 0.5
    cover = np.maximum(cover, box_alpha(xx - mid_x, yy - (mid_y - 0.8 * half_h), bar_half, 0.9 * one, one))  # top bar
    stamped = paint(np.transpose(images, (0, 3, 1, 2)).copy(), cover, np.array([colour], np.float32))
    return to_channels_last(np.clip(np.rint(stamped), 0, 255))
