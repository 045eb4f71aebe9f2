"""The image sets of a demo scenario: clean splits, the poisoned training set, the triggered sets.

A module of its own because both the attacks (which train on these sets) and the builder (which
writes them and calls the attacks) need ``DemoData``: kept in the builder, the two would import
each other. Only numpy: no training happens here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from lib.demo.faces import generate_faces
from lib.demo.recipe import DemoRecipe
from lib.demo.trigger import stamp_sunglasses


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
        x_train=x_train[order],
        y_train=y_train[order],
        x_valid=images[valid],
        y_valid=labels[valid],
        x_test=images[test],
        y_test=labels[test],
        x_valid_bd=x_vbd,
        y_valid_bd=y_vbd,
        orig_valid_bd=o_vbd,
        x_test_bd=x_tbd,
        y_test_bd=y_tbd,
        orig_test_bd=o_tbd,
        n_poisoned_train=n_poison,
        train_poisoned=is_poisoned[order],
    )
