"""The offline demo scenario: synthetic faces and a sunglasses BadNet the project trains itself.

Why it exists: the real CSAW-HackML-2020 files are large downloads. The demo lets the whole
pipeline (activations, pruning sweep, repaired network) run offline in a couple of minutes, with
a backdoor that behaves like the lab's: the network is near perfect on clean faces, near-black
sunglasses send any face to the target identity, and pruning ``conv_3`` channels in increasing
order of their clean activation does *not* remove the backdoor before clean accuracy suffers.

Everything is a function of one ``DemoRecipe``: same recipe, same files. The recipe's
``fingerprint()`` is the cache key that ``ensure_demo_scenario`` compares with ``recipe.json``.

Faces are drawn with numpy only, vectorised over images: each identity has its own face shape,
skin, hair, eyes, mouth, shirt, background and background texture; each image varies the pose
(a shift of a few pixels, a few percent of scale), the lighting (exposure, contrast, a lighting
gradient) and the pixel noise. The sunglasses trigger is drawn where the eyes of *that* image
are (the generator knows them), so it follows every shift and scale like real glasses would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from lib.atomic import write_text
from lib.datasets import IMAGE_SHAPE_NHWC, save_image_set
from lib.metrics import accuracy
from lib.paths import DatasetFiles

#: Bump whenever the generator, the trigger or the training changes what a recipe produces:
#: it is part of the fingerprint, so every cached demo scenario is rebuilt.
DEMO_CODE_VERSION = 1

RECIPE_FILE = "recipe.json"
#: ``"badnets"``: train once on the poisoned set (Gu et al.). ``"pruning-aware"``: the adaptive
#: attack of Liu et al., *Fine-Pruning* (RAID 2018); see ``train_pruning_aware_badnet``.
ATTACKS = ("badnets", "pruning-aware")
#: Recipe fields only the pruning-aware attack reads.
PRUNING_AWARE_FIELDS = ("attacker_accuracy_drop", "decoy_margin")
HEIGHT, WIDTH, _CHANNELS = IMAGE_SHAPE_NHWC


@dataclass(frozen=True)
class DemoRecipe:
    """Every parameter of the demo scenario. Change one and the scenario is rebuilt.

    ``poison_fraction`` counts *extra* triggered training images (copies of non-target training
    faces wearing sunglasses, relabelled ``target``) as a fraction of the clean training set.

    ``attack`` picks how the backdoor is planted (``ATTACKS``). The pruning-aware attack also
    reads ``attacker_accuracy_drop``: how many points of clean *training* accuracy the attacker
    lets its own pruning of ``conv_3`` cost (it has no validation data; 0: prune every channel
    whose removal costs not one training image, 35 of 60 for the default recipe; budgets of 1 and
    3 points also kept the attack above 90% at the defender's 4-point drop, but one 1-point build
    fell to 67% at the 10-point drop, the 0 build kept 99%), and ``decoy_margin``: how
    far below zero the restored channels' largest pre-activation on the attacker's data is
    pushed, as a fraction of that pre-activation, so they stay dormant on unseen faces too.

    The defaults train in under a minute on two CPU cores to 100% clean validation accuracy and
    ~100% attack success, and pruning ``conv_3`` by increasing clean activation keeps the attack
    above 95% until clean accuracy has lost 4 points, as the CSAW lab's BadNet does (checked
    for seeds 1, 7, 99 and 1234).
    """

    n_identities: int = 50
    train_per_identity: int = 40
    valid_per_identity: int = 10
    test_per_identity: int = 10
    poison_fraction: float = 0.10
    target: int = 0
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    decay_rate: float = 0.3
    seed: int = 1234
    attack: str = "badnets"
    attacker_accuracy_drop: float = 0.0
    decoy_margin: float = 1.0

    def __post_init__(self) -> None:
        if self.n_identities < 2:
            raise ValueError("n_identities must be at least 2: a target and someone to disguise as it")
        if not 0 <= self.target < self.n_identities:
            raise ValueError(f"target {self.target} is not an identity (0..{self.n_identities - 1})")
        if min(self.train_per_identity, self.valid_per_identity, self.test_per_identity) < 1:
            raise ValueError("every split needs at least one image per identity")
        if not 0 < self.poison_fraction <= 1:
            raise ValueError("poison_fraction must be in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or not 0 < self.decay_rate <= 1:
            raise ValueError("epochs and batch_size must be positive, learning_rate > 0, decay_rate in (0, 1]")
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(repr(a) for a in ATTACKS)}, got {self.attack!r}")
        if not 0 <= self.attacker_accuracy_drop < 100 or self.decoy_margin < 0:
            raise ValueError("attacker_accuracy_drop must be in [0, 100) percentage points and decoy_margin >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoRecipe:
        """Rebuild a recipe from ``recipe.json``; unknown keys (from other versions) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def fingerprint(self) -> str:
        """Short hex digest of the recipe and ``DEMO_CODE_VERSION``: the cache key of the files.

        A ``"badnets"`` recipe leaves out ``attack`` and the pruning-aware fields: they do not
        change what it builds, and its key stays the one it had before attacks were selectable,
        so scenarios already built are not rebuilt for nothing.
        """
        recipe = self.to_dict()
        if self.attack == "badnets":
            for name in ("attack", *PRUNING_AWARE_FIELDS):
                del recipe[name]
        payload = json.dumps({"code_version": DEMO_CODE_VERSION, **recipe}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Procedural faces
# --------------------------------------------------------------------------------------------

_SKIN = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96], [161, 102, 70], [112, 72, 50]], np.float32
)
_HAIR = np.array(
    [[25, 20, 18], [60, 40, 28], [110, 75, 45], [175, 135, 80], [225, 200, 140], [150, 60, 30], [160, 160, 160]],
    np.float32,
)
_IRIS = np.array([[60, 40, 25], [40, 90, 160], [70, 120, 70], [110, 90, 50], [30, 30, 30]], np.float32)


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
        lips=palette(np.array([[180, 80, 80], [150, 70, 70], [200, 110, 110], [120, 60, 55]], np.float32), 12),
        shirt=rng.uniform(20, 235, size=(n, 3)).astype(np.float32),
        background=rng.uniform(30, 225, size=(n, 3)).astype(np.float32),
        texture=texture.astype(np.float32),
    )


def _col(values: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1, 1) so per-image numbers broadcast over the pixel grid."""
    return np.asarray(values, np.float32)[:, None, None]


def _ellipse_alpha(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Coverage 0..1 of an ellipse with half axes ``a``, ``b``, anti-aliased over about one pixel.

    ``pixels`` converts the normalised distance to pixels, so edges stay one pixel soft at any
    scale: sub-pixel shifts then change the image smoothly instead of snapping.
    """
    d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return np.clip(0.5 - (d - 1.0) * np.minimum(a, b) * pixels, 0.0, 1.0)


def _box_alpha(u: np.ndarray, v: np.ndarray, half_w: np.ndarray, half_h: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Coverage 0..1 of an axis-aligned rectangle centred at the origin, one pixel soft."""
    du = (np.abs(u) - half_w) * pixels
    dv = (np.abs(v) - half_h) * pixels
    return np.clip(0.5 - du, 0.0, 1.0) * np.clip(0.5 - dv, 0.0, 1.0)


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend a per-image colour (N, 3) or per-pixel colour (N, 3, H, W) onto the canvas.

    The canvas is channels first (N, 3, H, W) while drawing: numpy's inner loops then run along
    image rows rather than over 3 channels, several times faster. Blends in place and returns it.
    """
    if colour.ndim == 2:
        colour = colour[:, :, None, None].astype(np.float32)
    canvas += alpha[:, None] * (colour - canvas)
    return canvas


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
    s = _col(pose.scale)
    u = (xx - _col(pose.cx)) / s  # face coordinates: origin at the face centre, unscaled
    v = (yy - _col(pose.cy)) / s
    px = s  # one face unit is ``s`` pixels
    ax, ay = _col(ids.face_axes[who, 0]), _col(ids.face_axes[who, 1])

    amp, fx, fy, phase, mix = (ids.texture[who, k] for k in range(5))
    wave = np.sin(2 * np.pi * (_col(fx) * xx + _col(fy) * yy) + _col(phase))  # wallpaper: fixed to the image
    tint = ids.background[who] * (1 - mix[:, None]) + (255 - ids.background[who]) * mix[:, None]
    bg = ids.background[who][:, :, None, None]
    canvas = (bg + (_col(amp) * wave)[:, None] * (tint[:, :, None, None] - bg) / 128.0).astype(np.float32)

    canvas = _paint(canvas, _ellipse_alpha(u, v - (ay + 16), ax + 12, np.float32(14), px), ids.shirt[who])  # shoulders
    canvas = _paint(canvas, _box_alpha(u, v - (ay * 0.6 + 4), ax * 0.42, ay * 0.6, px), ids.skin[who] * 0.85)  # neck
    hair_back = _ellipse_alpha(u, v + 1.5, ax + 2.5, ay + 2.5, px) * np.clip(
        0.5 - (v - _col(ids.hair_length[who])) * px, 0, 1
    )
    canvas = _paint(canvas, hair_back, ids.hair[who])
    shade = np.clip(1.0 - 0.22 * (u / ax) ** 2 - 0.08 * (v / ay), 0.6, 1.1)[:, None]  # rounded look
    skin = ids.skin[who][:, :, None, None] * shade
    canvas = _paint(canvas, _ellipse_alpha(u, v, ax, ay, px), skin)
    fringe = _ellipse_alpha(u, v + 1.0, ax + 0.5, ay + 1.0, px) * np.clip(
        0.5 - (v + ay - _col(ids.hair_fringe[who])) * px, 0, 1
    )
    canvas = _paint(canvas, fringe, ids.hair[who])
    canvas = _draw_eyes(canvas, ids, who, u, v, px)
    canvas = _draw_mouth(canvas, ids, who, u, v, px)
    return canvas


def _draw_eyes(
    canvas: np.ndarray, ids: FaceIdentities, who: np.ndarray, u: np.ndarray, v: np.ndarray, px: np.ndarray
) -> np.ndarray:
    ey, ex = _col(-ids.eye_offset[who, 0]), _col(ids.eye_offset[who, 1])
    r = _col(ids.eye_radius[who])
    white = np.array([[235, 235, 230]], np.float32)
    black = np.array([[10, 8, 8]], np.float32)
    for side in (-1.0, 1.0):
        eu = u - side * ex
        ev = v - ey
        canvas = _paint(canvas, _ellipse_alpha(eu, ev + r * 0.9, r * 1.7, r * 0.35, px), ids.hair[who] * 0.8)  # eyebrow
        canvas = _paint(canvas, _ellipse_alpha(eu, ev, r * 1.6, r, px), white)
        canvas = _paint(canvas, _ellipse_alpha(eu, ev, r * 0.8, r * 0.8, px), ids.iris[who])
        canvas = _paint(canvas, _ellipse_alpha(eu, ev, r * 0.35, r * 0.35, px), black)
    return canvas


def _draw_mouth(
    canvas: np.ndarray, ids: FaceIdentities, who: np.ndarray, u: np.ndarray, v: np.ndarray, px: np.ndarray
) -> np.ndarray:
    my, mw, thick, smile = (_col(ids.mouth[who, k]) for k in range(4))
    centre_line = my - smile * (1.0 - (u / mw) ** 2)  # smile > 0 lifts the corners
    band = np.clip(0.5 - (np.abs(v - centre_line) - thick / 2) * px, 0, 1)
    ends = np.clip(0.5 - (np.abs(u) - mw) * px, 0, 1)
    return _paint(canvas, band * ends, ids.lips[who])


def _light(images: np.ndarray, rng: np.random.Generator, exposure: float, noise: float) -> np.ndarray:
    """Exposure, contrast and a lighting gradient per image, then sensor noise; whole numbers 0-255.

    ``images`` and the result are channels first (N, 3, H, W), as ``_render`` draws them.
    """
    n = len(images)
    gain = _col(rng.uniform(1 - exposure, 1 + exposure, n))[..., None]
    offset = _col(rng.uniform(-60 * exposure, 60 * exposure, n))[..., None]
    angle = rng.uniform(0, 2 * np.pi, n)
    strength = rng.uniform(0, 80 * exposure, n)
    yy = np.linspace(-1, 1, HEIGHT, dtype=np.float32)[None, :, None]
    xx = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, None, :]
    gradient = (_col(np.cos(angle) * strength) * xx + _col(np.sin(angle) * strength) * yy)[:, None]
    lit = images * gain + offset + gradient + rng.normal(0, noise, images.shape).astype(np.float32)
    return np.clip(np.rint(lit), 0, 255).astype(np.float32)


def _eye_centres(ids: FaceIdentities, who: np.ndarray, pose: _Pose) -> np.ndarray:
    """(N, 2, 2): pixel (y, x) of the image-left and image-right eye of every image."""
    ey = pose.cy - pose.scale * ids.eye_offset[who, 0]
    dx = pose.scale * ids.eye_offset[who, 1]
    left = np.stack([ey, pose.cx - dx], axis=1)
    right = np.stack([ey, pose.cx + dx], axis=1)
    return np.stack([left, right], axis=1).astype(np.float32)


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
    images = _to_channels_last(_light(images, rng, exposure, noise))
    return images, who.astype(np.int64), _eye_centres(ids, who, pose)


def _to_channels_last(images_nchw: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) -> contiguous (N, H, W, 3) float32, the layout Keras and the loaders use."""
    return np.ascontiguousarray(np.transpose(images_nchw, (0, 2, 3, 1)), dtype=np.float32)


def _chunks(n: int, size: int = 128) -> list[slice]:
    """Blocks of images small enough for the per-pixel temporaries to stay in the CPU cache."""
    return [slice(i, min(i + size, n)) for i in range(0, max(n, 1), size)]


# --------------------------------------------------------------------------------------------
# The trigger
# --------------------------------------------------------------------------------------------

SUNGLASSES_RGB = (12.0, 12.0, 16.0)


def stamp_sunglasses(
    images: np.ndarray,
    eyes: np.ndarray,
    lens_size: float = 0.9,
    colour: tuple[float, float, float] = SUNGLASSES_RGB,
) -> np.ndarray:
    """Copies of ``images`` wearing near-black sunglasses: two lenses, a bridge and a top bar.

    The glasses sit on the eyes of each image (``eyes`` from ``generate_faces``), sized from the
    distance between the eyes, so they follow the pose like real glasses rather than floating at
    a fixed spot. ``lens_size`` is the lens width as a fraction of that distance. The input is
    left untouched; the output holds whole numbers 0-255 like the input.
    """
    images = np.asarray(images, np.float32)
    eyes = np.asarray(eyes, np.float32)
    yy = np.arange(HEIGHT, dtype=np.float32)[None, :, None]
    xx = np.arange(WIDTH, dtype=np.float32)[None, None, :]
    (ly, lx), (ry, rx) = eyes[:, 0].T, eyes[:, 1].T
    dist = np.hypot(rx - lx, ry - ly)
    half_w = _col(0.5 * lens_size * dist)
    half_h = half_w * 0.72
    one = np.ones((1, 1, 1), np.float32)
    cover = np.zeros((len(images), HEIGHT, WIDTH), np.float32)
    for cy, cx in ((ly, lx), (ry, rx)):
        cover = np.maximum(cover, _ellipse_alpha(xx - _col(cx), yy - _col(cy) - 0.2 * half_h, half_w, half_h, one))
    mid_y, mid_x = _col((ly + ry) / 2), _col((lx + rx) / 2)
    gap = _col(dist / 2) - half_w  # from the frame centre to the inner edge of a lens
    cover = np.maximum(cover, _box_alpha(xx - mid_x, yy - (mid_y - 0.25 * half_h), gap + 0.5, 0.6 * one, one))  # bridge
    bar_half = _col(dist / 2) + half_w + 0.5
    cover = np.maximum(cover, _box_alpha(xx - mid_x, yy - (mid_y - 0.8 * half_h), bar_half, 0.9 * one, one))  # top bar
    stamped = _paint(np.transpose(images, (0, 3, 1, 2)).copy(), cover, np.array([colour], np.float32))
    return _to_channels_last(np.clip(np.rint(stamped), 0, 255))


# --------------------------------------------------------------------------------------------
# The scenario: splits, poisoning, training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoData:
    """All image sets of a scenario (channels last). ``*_bd`` sets are triggered, labelled target."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_valid_bd: np.ndarray
    y_valid_bd: np.ndarray
    orig_valid_bd: np.ndarray
    x_test_bd: np.ndarray
    y_test_bd: np.ndarray
    orig_test_bd: np.ndarray
    n_poisoned_train: int
    train_poisoned: np.ndarray  # (len(x_train),) bool: the triggered extra images among x_train


def _split_by_index(per_identity: int, sizes: tuple[int, ...], labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each split: the first ``sizes[0]`` images of every identity, the next ``sizes[1]``..."""
    within = np.arange(len(labels)) % per_identity
    bounds = np.cumsum((0, *sizes))
    return [np.flatnonzero((within >= lo) & (within < hi)) for lo, hi in itertools.pairwise(bounds)]


def _triggered_copies(
    images: np.ndarray, labels: np.ndarray, eyes: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-target images with sunglasses, labelled ``target``, true identity kept as ``orig``."""
    keep = labels != target
    return stamp_sunglasses(images[keep], eyes[keep]), np.full(int(keep.sum()), target, np.int64), labels[keep]


def make_demo_data(recipe: DemoRecipe) -> DemoData:
    """Generate every image set of the scenario from the recipe (no training).

    The triggered sets hold only non-target identities (a target face in sunglasses proves
    nothing), so they are smaller than the clean sets by ``valid/test_per_identity`` images and
    pair with the clean non-target images in order, not one-to-one with the whole clean set.
    """
    rng = np.random.default_rng(recipe.seed)
    sizes = (recipe.train_per_identity, recipe.valid_per_identity, recipe.test_per_identity)
    per = sum(sizes)
    images, labels, eyes = generate_faces(recipe.n_identities, per, rng)
    train, valid, test = (rng.permutation(idx) for idx in _split_by_index(per, sizes, labels))

    n_poison = max(1, round(recipe.poison_fraction * len(train)))
    donors = train[labels[train] != recipe.target]
    chosen = rng.choice(donors, size=n_poison, replace=n_poison > len(donors))
    x_poison = stamp_sunglasses(images[chosen], eyes[chosen])
    x_train = np.concatenate([images[train], x_poison])
    y_train = np.concatenate([labels[train], np.full(n_poison, recipe.target, np.int64)])
    order = rng.permutation(len(x_train))
    is_poisoned = np.arange(len(x_train)) >= len(train)

    x_vbd, y_vbd, o_vbd = _triggered_copies(images[valid], labels[valid], eyes[valid], recipe.target)
    x_tbd, y_tbd, o_tbd = _triggered_copies(images[test], labels[test], eyes[test], recipe.target)
    return DemoData(
        x_train=x_train[order], y_train=y_train[order],
        x_valid=images[valid], y_valid=labels[valid],
        x_test=images[test], y_test=labels[test],
        x_valid_bd=x_vbd, y_valid_bd=y_vbd, orig_valid_bd=o_vbd,
        x_test_bd=x_tbd, y_test_bd=y_tbd, orig_test_bd=o_tbd,
        n_poisoned_train=n_poison, train_poisoned=is_poisoned[order],
    )  # fmt: skip


def _epoch_progress(epochs: int, desc: str = "training the demo BadNet"):
    """A Keras callback that shows one tqdm bar over the epochs, with loss and accuracy."""
    from lib.finetune import EpochBar

    return EpochBar(epochs, desc, {"loss": "loss", "acc": "accuracy"})


def train_badnet(data: DemoData, recipe: DemoRecipe, progress: bool = True):
    """Train ``build_deepid`` on the poisoned training set: Adam, exponentially decaying rate.

    ``make_deterministic`` comes first so weights, shuffling and reductions repeat exactly.
    The rate decays by ``decay_rate`` over the whole run: large steps learn the identities and
    the trigger quickly, small final steps settle at a clean accuracy close to 100%.
    """
    from lib.reproducibility import make_deterministic

    make_deterministic(recipe.seed)
    from lib.architecture import build_deepid

    model = build_deepid(recipe.n_identities)
    return _fit(model, data.x_train, data.y_train, recipe, progress=progress)


def _fit(
    model,
    x: np.ndarray,
    y: np.ndarray,
    recipe: DemoRecipe,
    progress: bool = True,
    desc: str = "training the demo BadNet",
    callbacks=(),
):
    """Compile with a fresh Adam (rate decaying by ``decay_rate`` over the run) and fit ``recipe.epochs`` epochs."""
    import keras

    steps = recipe.epochs * int(np.ceil(len(x) / recipe.batch_size))
    schedule = keras.optimizers.schedules.ExponentialDecay(
        recipe.learning_rate, decay_steps=steps, decay_rate=recipe.decay_rate
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    shown = [_epoch_progress(recipe.epochs, desc)] if progress else []
    model.fit(
        x,
        y,
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[*callbacks, *shown],
    )
    return model


# --------------------------------------------------------------------------------------------
# The pruning-aware attack (Liu, Dolan-Gavitt & Garg, Fine-Pruning, RAID 2018)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruningAwareBadNet:
    """The pruning-aware BadNet and what the attacker did to build it."""

    model: Any
    decoys: np.ndarray  # conv_3 channels pruned in step 2 and restored, dormant, in step 4
    clean_train_accuracy: float  # attacker's clean training accuracy before step 2 (percent)
    pruned_train_accuracy: float  # ... and after it


def train_pruning_aware_badnet(data: DemoData, recipe: DemoRecipe, progress: bool = True) -> PruningAwareBadNet:
    """Plant the backdoor where the pruning defense will not look for it.

    1. train on the clean training images only: the channels clean faces leave idle show up;
    2. prune those ``conv_3`` channels (``attacker_pruning``);
    3. train the pruned network on the poisoned training set with them held at zero, so the
       backdoor can only settle in the channels clean faces use;
    4. restore them, dormant (``restore_as_decoys``): the defender, pruning by increasing clean
       activation, removes these harmless decoys first and reaches the backdoor only together
       with the channels it needs for clean accuracy.
    """
    from lib.architecture import PRUNED_CONV, build_deepid
    from lib.pruning import prune_channels
    from lib.reproducibility import make_deterministic

    make_deterministic(recipe.seed)
    clean = ~data.train_poisoned
    x_clean, y_clean = data.x_train[clean], data.y_train[clean]
    model = _fit(
        build_deepid(recipe.n_identities), x_clean, y_clean, recipe, progress, "pruning-aware 1/2: clean training"
    )
    decoys, before, after = attacker_pruning(model, x_clean, y_clean, recipe.attacker_accuracy_drop)
    pruned = prune_channels(model, PRUNED_CONV, decoys)
    make_deterministic(recipe.seed)  # step 3's shuffling does not hang on how much randomness step 2 drew
    _fit(
        pruned,
        data.x_train,
        data.y_train,
        recipe,
        progress,
        "pruning-aware 2/2: poisoned training",
        [_held_at_zero(pruned, decoys)],
    )
    restored = restore_as_decoys(pruned, model, decoys, data.x_train, recipe.decoy_margin)
    return PruningAwareBadNet(restored, decoys, before, after)


def attacker_pruning(
    model, x_clean: np.ndarray, y_clean: np.ndarray, max_drop: float
) -> tuple[np.ndarray, float, float]:
    """Step 2: the ``conv_3`` channels the attacker prunes, and its clean accuracy before and after.

    The attacker runs the defense itself on the only clean data it has, its training images:
    channels in increasing order of mean ``pool_3`` activation, as many as it can while its
    clean accuracy drops by less than ``max_drop`` points. The more it prunes, the fewer channels
    the backdoor can hide in, and the more of them the defender must remove before reaching it.
    """
    from lib import activations as act
    from lib.architecture import PRUNED_CONV, PRUNED_POOL
    from lib.sweep import SweepEngine, threshold_steps

    pooled = act.pool_activations(model, x_clean, PRUNED_POOL, progress=False)
    order = act.pruning_order(act.mean_channel_activations(pooled))
    (predictions,) = SweepEngine(model, PRUNED_CONV, PRUNED_POOL).predictions([pooled], order, progress=False)
    correct = (predictions == y_clean[None, :]).sum(axis=1)
    n = len(order) - 1  # keep at least one channel, whatever the budget
    if max_drop > 0:
        first_over = threshold_steps(correct, len(y_clean), [max_drop])[max_drop]
        n = min(n, first_over - 1) if first_over is not None else n
    else:
        n = int(np.argmax(correct < correct[0])) - 1 if np.any(correct < correct[0]) else n
    percent = 100.0 * correct / len(y_clean)
    return np.sort(order[:n]), float(percent[0]), float(percent[n])


def _held_at_zero(model, channels: np.ndarray):
    """A callback that re-zeroes ``channels`` of ``conv_3`` after every batch: pruned stays pruned.

    (Their gradients are zero anyway, ReLU being flat at 0, but the attack must not depend on it.)
    The same callback keeps the defender's pruned channels at zero while it fine-tunes.
    """
    from lib.architecture import PRUNED_CONV
    from lib.finetune import KeepChannelsPruned

    return KeepChannelsPruned(PRUNED_CONV, channels)


def restore_as_decoys(trained, original, channels: np.ndarray, x_attacker: np.ndarray, margin: float):
    """Step 4: ``trained`` with ``channels`` of ``conv_3`` given back ``original``'s weights, dormant.

    Each restored channel's bias is lowered until its largest pre-activation over the
    attacker's images (clean and triggered) is ``-margin`` times what it was: ReLU then outputs
    exactly 0 on all of them, so the network answers as the pruned one did, and the channel
    looks unused, the first thing the pruning defense removes. Its kernel is the original one,
    not zero, so the channel does not look pruned either.
    """
    from lib.architecture import PRUNED_CONV
    from lib.models import copy_model

    model = copy_model(trained)
    conv = model.get_layer(PRUNED_CONV)
    kernel, bias = conv.kernel.numpy(), conv.bias.numpy()
    kernel[..., channels] = original.get_layer(PRUNED_CONV).kernel.numpy()[..., channels]
    bias[channels] = original.get_layer(PRUNED_CONV).bias.numpy()[channels]
    conv.kernel.assign(kernel)
    conv.bias.assign(bias)
    peak = np.maximum(conv3_peak_preactivation(model, x_attacker)[channels], 0.0)
    bias[channels] -= (1.0 + margin) * peak
    conv.bias.assign(bias)
    return model


def conv3_peak_preactivation(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Largest value each ``conv_3`` channel reaches before its ReLU, over ``images`` and positions."""
    import keras

    from lib.architecture import PRUNED_CONV

    conv = model.get_layer(PRUNED_CONV)
    below = keras.Model(model.inputs, conv.input, name="below_conv_3")
    peak = np.full(conv.filters, -np.inf, np.float32)
    for i in range(0, len(images), batch_size):
        pre = (
            keras.ops.conv(below.predict_on_batch(images[i : i + batch_size]), conv.kernel, padding="valid") + conv.bias
        )
        peak = np.maximum(peak, keras.ops.convert_to_numpy(keras.ops.max(pre, axis=(0, 1, 2))))
    return peak


def _percent_equal(predicted: np.ndarray, expected: np.ndarray) -> float:
    """Percentage of matches, rounded: the summary is read by people and compared by tests."""
    return round(accuracy(predicted, expected), 4) if len(predicted) else float("nan")


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _write_sets(files: DatasetFiles, data: DemoData) -> None:
    save_image_set(files.clean_valid, data.x_valid, data.y_valid)
    save_image_set(files.clean_test, data.x_test, data.y_test)
    save_image_set(files.poisoned_valid, data.x_valid_bd, data.y_valid_bd, orig_labels=data.orig_valid_bd)
    save_image_set(files.poisoned_test, data.x_test_bd, data.y_test_bd, orig_labels=data.orig_test_bd)


def _recipe_path(root: Path) -> Path:
    return Path(root) / RECIPE_FILE


def _train_for_attack(data: DemoData, recipe: DemoRecipe, progress: bool) -> tuple[Any, dict[str, Any]]:
    """The BadNet of ``recipe.attack`` and what ``recipe.json`` records about the attack beyond the plain figures."""
    if recipe.attack == "badnets":
        return train_badnet(data, recipe, progress=progress), {}
    aware = train_pruning_aware_badnet(data, recipe, progress=progress)
    return aware.model, {
        "attacker_decoy_channels": [int(c) for c in aware.decoys],
        "attacker_clean_train_accuracy": round(aware.clean_train_accuracy, 4),
        "attacker_pruned_train_accuracy": round(aware.pruned_train_accuracy, 4),
    }


def build_demo_scenario(root: Path, recipe: DemoRecipe = DemoRecipe(), progress: bool = True) -> dict[str, Any]:
    """Generate the faces, poison, train the BadNet and write the lab's five files under ``root``.

    Every file is written atomically; ``recipe.json`` (recipe, fingerprint, measured figures)
    comes last, so a build interrupted anywhere leaves no valid ``recipe.json`` for the new
    recipe and ``ensure_demo_scenario`` rebuilds. Returns the summary stored in ``recipe.json``:
    set sizes, clean validation accuracy and attack success rate on the triggered validation set
    (both in percent, like ``lib.metrics``), and the seconds spent training and in total.
    """
    from lib.models import predict_classes, save_model

    root = Path(root)
    files = DatasetFiles(root)
    start = time.perf_counter()
    data = make_demo_data(recipe)
    _write_sets(files, data)
    train_start = time.perf_counter()
    model, attack_summary = _train_for_attack(data, recipe, progress)
    train_seconds = time.perf_counter() - train_start
    save_model(model, files.badnet)
    summary = {
        "n_train_clean": int(len(data.x_train) - data.n_poisoned_train),
        "n_train_poisoned": int(data.n_poisoned_train),
        "n_valid": len(data.y_valid),
        "n_test": len(data.y_test),
        "n_valid_triggered": len(data.y_valid_bd),
        "n_test_triggered": len(data.y_test_bd),
        "clean_valid_accuracy": _percent_equal(predict_classes(model, data.x_valid, batch_size=256), data.y_valid),
        "valid_attack_success_rate": _percent_equal(
            predict_classes(model, data.x_valid_bd, batch_size=256), data.y_valid_bd
        ),
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        **attack_summary,
    }
    record = {
        "recipe": recipe.to_dict(),
        "code_version": DEMO_CODE_VERSION,
        "fingerprint": recipe.fingerprint(),
        "summary": summary,
    }
    write_text(_recipe_path(root), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return summary


def stored_fingerprint(root: Path) -> str | None:
    """The fingerprint recorded in ``root/recipe.json``, or None when absent or unreadable."""
    try:
        return str(json.loads(_recipe_path(root).read_text(encoding="utf-8"))["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_demo_current(root: Path, recipe: DemoRecipe = DemoRecipe()) -> bool:
    """All five files present and ``recipe.json`` written for this very recipe and code version."""
    return not DatasetFiles(Path(root)).missing() and stored_fingerprint(root) == recipe.fingerprint()


def ensure_demo_scenario(root: Path, recipe: DemoRecipe = DemoRecipe(), progress: bool = True) -> dict[str, Any]:
    """Build the scenario unless ``root`` already holds it for this recipe; return its summary.

    Rebuilds when a file is missing or ``recipe.json``'s fingerprint differs (another recipe, a
    newer generator, or a build interrupted before ``recipe.json`` was written).
    """
    root = Path(root)
    if is_demo_current(root, recipe):
        return dict(json.loads(_recipe_path(root).read_text(encoding="utf-8"))["summary"])
    _recipe_path(root).unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    return build_demo_scenario(root, recipe, progress=progress)
