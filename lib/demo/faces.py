"""Procedural faces: random identities and their images under varying pose, lighting and noise.

Each identity has its own face shape, skin, hair, eyes, mouth, shirt, background and background
texture; each image varies the pose (a shift of a few pixels, a few percent of scale), the lighting
(exposure, contrast, a lighting gradient) and the pixel noise. Only numpy, vectorised over images.
The generator also returns where each image's eyes are, so the trigger can be put on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.demo.drawing import HEIGHT, WIDTH, box_alpha, col, ellipse_alpha, paint, to_channels_last

_SKIN = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96], [161, 102, 70], [112, 72, 50]], np.float32
)
_HAIR = np.array(
    [[25, 20, 18], [60, 40, 28], [110, 75, 45], [175, 135, 80], [225, 200, 140], [150, 60, 30], [160, 160, 160]],
    np.float32,
)
_IRIS = np.array([[60, 40, 25], [40, 90, 160], [70, 120, 70], [110, 90, 50], [30, 30, 30]], np.float32)
_LIPS = np.array([[180, 80, 80], [150, 70, 70], [200, 110, 110], [120, 60, 55]], np.float32)


@dataclass(frozen=True)
class FaceIdentities:
    """Per-identity appearance, one row per identity. Lengths are in pixels of the 55x47 image."""

    face_axes: np.ndarray  # (n, 2) half width, half height of the face ellipse
    skin: np.ndarray  # (n, 3)
    hair: np.ndarray  # (n, 3)
    hair_fringe: np.ndarray  # (n,) how far the hair comes down the forehead
    hair_length: np.ndarray  # (n,) how far down the hair falls behind the face
    eye_offset: np.ndarray  # (n, 2) eye height above the face centre, half distance between the eyes
    eye_radius: np.ndarray  # (n,)
    iris: np.ndarray  # (n, 3)
    mouth: np.ndarray  # (n, 4) height below centre, half width, thickness, smile curvature
    lips: np.ndarray  # (n, 3)
    shirt: np.ndarray  # (n, 3)
    background: np.ndarray  # (n, 3)
    texture: np.ndarray  # (n, 5) amplitude, x frequency, y frequency, phase, colour mix

    def __len__(self) -> int:
        return len(self.skin)


def draw_identities(n: int, rng: np.random.Generator) -> FaceIdentities:
    """Random appearance of ``n`` people: the features a recognizer can learn to tell apart."""

    def palette(colours: np.ndarray, spread: float) -> np.ndarray:
        base = colours[rng.integers(len(colours), size=n)]
        return np.clip(base + rng.normal(0, spread, size=(n, 3)), 0, 255).astype(np.float32)

    texture = np.stack(
        [
            rng.uniform(12, 35, n),
            rng.uniform(-0.25, 0.25, n),
            rng.uniform(-0.25, 0.25, n),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0, 1, n),
        ],
        axis=1,
    )
    mouth = np.stack(
        [rng.uniform(8, 12, n), rng.uniform(3, 6.5, n), rng.uniform(0.8, 1.8, n), rng.uniform(-2, 2.5, n)], axis=1
    )
    return FaceIdentities(
        face_axes=np.stack([rng.uniform(12.5, 17.5, n), rng.uniform(17, 22, n)], axis=1).astype(np.float32),
        skin=palette(_SKIN, 12),
        hair=palette(_HAIR, 15),
        hair_fringe=rng.uniform(3, 10, n).astype(np.float32),
        hair_length=rng.uniform(-6, 20, n).astype(np.float32),
        eye_offset=np.stack([rng.uniform(2.5, 6, n), rng.uniform(5, 7.5, n)], axis=1).astype(np.float32),
        eye_radius=rng.uniform(1.4, 2.4, n).astype(np.float32),
        iris=palette(_IRIS, 15),
        mouth=mouth.astype(np.float32),
        lips=palette(_LIPS, 12),
        shirt=rng.uniform(20, 235, size=(n, 3)).astype(np.float32),
        background=rng.uniform(30, 225, size=(n, 3)).astype(np.float32),
        texture=texture.astype(np.float32),
    )


@dataclass(frozen=True)
class _Pose:
    """Per-image placement: face centre (pixels) and scale."""

    cy: np.ndarray
    cx: np.ndarray
    scale: np.ndarray


def _draw_poses(n: int, rng: np.random.Generator, max_shift: float, max_scale: float) -> _Pose:
    return _Pose(
        cy=(HEIGHT / 2 - 1.5 + rng.uniform(-max_shift, max_shift, n)).astype(np.float32),
        cx=(WIDTH / 2 - 0.5 + rng.uniform(-max_shift, max_shift, n)).astype(np.float32),
        scale=(1.0 + rng.uniform(-max_scale, max_scale, n)).astype(np.float32),
    )


def _render(ids: FaceIdentities, who: np.ndarray, pose: _Pose) -> np.ndarray:
    """Draw the faces of identities ``who`` at ``pose``: (N, 3, H, W) float32, before lighting."""
    yy = np.arange(HEIGHT, dtype=np.float32)[None, :, None]
    xx = np.arange(WIDTH, dtype=np.float32)[None, None, :]
    s = col(pose.scale)
    u = (xx - col(pose.cx)) / s  # face coordinates: origin at the face centre, unscaled
    v = (yy - col(pose.cy)) / s
    px = s  # one face unit is ``s`` pixels
    ax, ay = col(ids.face_axes[who, 0]), col(ids.face_axes[who, 1])

    amp, fx, fy, phase, mix = (ids.texture[who, k] for k in range(5))
    wave = np.sin(2 * np.pi * (col(fx) * xx + col(fy) * yy) + col(phase))  # wallpaper: fixed to the image
    tint = ids.background[who] * (1 - mix[:, None]) + (255 - ids.background[who]) * mix[:, None]
    bg = ids.background[who][:, :, None, None]
    canvas = (bg + (col(amp) * wave)[:, None] * (tint[:, :, None, None] - bg) / 128.0).astype(np.float32)

    canvas = paint(canvas, ellipse_alpha(u, v - (ay + 16), ax + 12, np.float32(14), px), ids.shirt[who])  # shoulders
    canvas = paint(canvas, box_alpha(u, v - (ay * 0.6 + 4), ax * 0.42, ay * 0.6, px), ids.skin[who] * 0.85)  # neck
    hair_back = ellipse_alpha(u, v + 1.5, ax + 2.5, ay + 2.5, px) * np.clip(
        0.5 - (v - col(ids.hair_length[who])) * px, 0, 1
    )
    canvas = paint(canvas, hair_back, ids.hair[who])
    shade = np.clip(1.0 - 0.22 * (u / ax) ** 2 - 0.08 * (v / ay), 0.6, 1.1)[:, None]  # rounded look
    skin = ids.skin[who][:, :, None, None] * shade
    canvas = paint(canvas, ellipse_alpha(u, v, ax, ay, px), skin)
    fringe = ellipse_alpha(u, v + 1.0, ax + 0.5, ay + 1.0, px) * np.clip(
        0.5 - (v + ay - col(ids.hair_fringe[who])) * px, 0, 1
    )
    canvas = paint(canvas, fringe, ids.hair[who])
    canvas = _draw_eyes(canvas, ids, who, u, v, px)
    canvas = _draw_mouth(canvas, ids, who, u, v, px)
    return canvas


def _draw_eyes(
    canvas: np.ndarray, ids: FaceIdentities, who: np.ndarray, u: np.ndarray, v: np.ndarray, px: np.ndarray
) -> np.ndarray:
    ey, ex = col(-ids.eye_offset[who, 0]), col(ids.eye_offset[who, 1])
    r = col(ids.eye_radius[who])
    white = np.array([[235, 235, 230]], np.float32)
    black = np.array([[10, 8, 8]], np.float32)
    for side in (-1.0, 1.0):
        eu = u - side * ex
        ev = v - ey
        canvas = paint(canvas, ellipse_alpha(eu, ev + r * 0.9, r * 1.7, r * 0.35, px), ids.hair[who] * 0.8)  # eyebrow
        canvas = paint(canvas, ellipse_alpha(eu, ev, r * 1.6, r, px), white)
        canvas = paint(canvas, ellipse_alpha(eu, ev, r * 0.8, r * 0.8, px), ids.iris[who])
        canvas = paint(canvas, ellipse_alpha(eu, ev, r * 0.35, r * 0.35, px), black)
    return canvas


def _draw_mouth(
    canvas: np.ndarray, ids: FaceIdentities, who: np.ndarray, u: np.ndarray, v: np.ndarray, px: np.ndarray
) -> np.ndarray:
    my, mw, thick, smile = (col(ids.mouth[who, k]) for k in range(4))
    centre_line = my - smile * (1.0 - (u / mw) ** 2)  # smile > 0 lifts the corners
    band = np.clip(0.5 - (np.abs(v - centre_line) - thick / 2) * px, 0, 1)
    ends = np.clip(0.5 - (np.abs(u) - mw) * px, 0, 1)
    return paint(canvas, band * ends, ids.lips[who])


def _light(images: np.ndarray, rng: np.random.Generator, exposure: float, noise: float) -> np.ndarray:
    """Exposure, contrast and a lighting gradient per image, then sensor noise; whole numbers 0-255.

    ``images`` and the result are channels first (N, 3, H, W), as ``_render`` draws them.
    """
    n = len(images)
    gain = col(rng.uniform(1 - exposure, 1 + exposure, n))[..., None]
    offset = col(rng.uniform(-60 * exposure, 60 * exposure, n))[..., None]
    angle = rng.uniform(0, 2 * np.pi, n)
    strength = rng.uniform(0, 80 * exposure, n)
    yy = np.linspace(-1, 1, HEIGHT, dtype=np.float32)[None, :, None]
    xx = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, None, :]
    gradient = (col(np.cos(angle) * strength) * xx + col(np.sin(angle) * strength) * yy)[:, None]
    lit = images * gain + offset + gradient + rng.normal(0, noise, images.shape).astype(np.float32)
    return np.clip(np.rint(lit), 0, 255).astype(np.float32)


def _eye_centres(ids: FaceIdentities, who: np.ndarray, pose: _Pose) -> np.ndarray:
    """(N, 2, 2): pixel (y, x) of the image-left and image-right eye of every image."""
    ey = pose.cy - pose.scale * ids.eye_offset[who, 0]
    dx = pose.scale * ids.eye_offset[who, 1]
    left = np.stack([ey, pose.cx - dx], axis=1)
    right = np.stack([ey, pose.cx + dx], axis=1)
    return np.stack([left, right], axis=1).astype(np.float32)


def _chunks(n: int, size: int = 128) -> list[slice]:
    """Blocks of images small enough for the per-pixel temporaries to stay in the CPU cache."""
    return [slice(i, min(i + size, n)) for i in range(0, max(n, 1), size)]


def generate_faces(
    n_identities: int,
    per_identity: int,
    rng: np.random.Generator,
    identities: FaceIdentities | None = None,
    max_shift: float = 3.0,
    max_scale: float = 0.05,
    exposure: float = 0.2,
    noise: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_identity`` images of each of ``n_identities`` people, identity-major order.

    Returns ``(images, labels, eyes)``: images (N, 55, 47, 3) float32 holding whole numbers
    0-255 (the CSAW convention, no normalisation), labels (N,) int64, and eyes (N, 2, 2) the pixel
    (y, x) of both eyes of every image, which ``stamp_sunglasses`` needs to put the glasses on.
    ``identities`` (from ``draw_identities``) lets several calls draw the same people; without it
    they are drawn from ``rng`` first.
    """
    ids = identities if identities is not None else draw_identities(n_identities, rng)
    if len(ids) < n_identities:
        raise ValueError(f"{n_identities} identities asked for but only {len(ids)} described")
    who = np.repeat(np.arange(n_identities), per_identity)
    pose = _draw_poses(len(who), rng, max_shift, max_scale)
    images = np.concatenate(
        [_render(ids, who[c], _Pose(pose.cy[c], pose.cx[c], pose.scale[c])) for c in _chunks(len(who))]
    )
    images = to_channels_last(_light(images, rng, exposure, noise))
    return images, who.astype(np.int64), _eye_centres(ids, who, pose)
