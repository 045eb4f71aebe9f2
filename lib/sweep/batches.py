"""The reference batches: the Keras tail evaluated exactly where ``model.predict(images, batch_size)`` puts an image.

Why this decides every class that float rounding could swap is argued once, in ``lib.sweep.engine``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from lib.defense.metrics import near_ties


class ReferenceBatches:
    """The batches ``predict`` forms over each image set (cut into ``batch_size`` pieces from the set's own start),
    over the sets' concatenation, and the Keras tail run in them.

    One object per sweep: ``evaluated`` counts the images the Keras tail evaluated through it.
    """

    def __init__(self, tail: keras.Model, set_sizes: Sequence[int], batch_size: int) -> None:
        self.tail, self.batch_size = tail, batch_size
        bounds, offset = [], 0
        for n in set_sizes:
            bounds += [(offset + lo, offset + min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
            offset += n
        self.bounds = np.asarray(bounds, dtype=np.int64).reshape(-1, 2)
        sizes = self.bounds[:, 1] - self.bounds[:, 0]
        #: For each image: its batch, that batch's size, and its place in it.
        self.batch_of = np.repeat(np.arange(len(self.bounds)), sizes)
        self.size_of = sizes[self.batch_of]
        self.place_of = np.arange(offset) - self.bounds[self.batch_of, 0]
        self.evaluated = 0

    def classes(self, pooled: np.ndarray, keep: np.ndarray, batches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images of the given reference batches and their classes, channels masked by ``keep``.

        ``predict_on_batch`` runs the same compiled step as ``predict`` without its per-call set-up.
        """
        images, classes = [], []
        for lo, hi in self.bounds[batches]:
            images.append(np.arange(lo, hi))
            classes.append(np.argmax(self.tail.predict_on_batch(pooled[lo:hi] * keep), axis=-1))
            self.evaluated += int(hi - lo)
        if not images:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return np.concatenate(images), np.concatenate(classes).astype(np.int64)

    def touched(
        self, pooled: np.ndarray, keep: np.ndarray, touched: np.ndarray, tie_margin: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes after a step for (at least) the ``touched`` images: (images, classes, near tie).

        A reference batch in which most images are touched is simply re-run, exactly. The other
        touched images are evaluated together, packed into batches of their own: that differs from
        the reference only in float rounding, so their classes hold unless they are near ties.
        """
        batch = self.batch_of[touched]
        counts = np.bincount(batch, minlength=len(self.bounds))
        sizes = self.bounds[:, 1] - self.bounds[:, 0]
        dense_images, dense_classes = self.classes(pooled, keep, np.flatnonzero(2 * counts >= sizes))
        sparse = touched[2 * counts[batch] < sizes[batch]]
        if sparse.size == 0:
            return dense_images, dense_classes, np.zeros(dense_images.size, dtype=bool)
        scores = np.concatenate(
            [
                self.tail.predict_on_batch(pooled[sparse[i : i + self.batch_size]] * keep)
                for i in range(0, sparse.size, self.batch_size)
            ]
        )
        self.evaluated += sparse.size
        near = near_ties(scores, tie_margin)
        return (
            np.concatenate([dense_images, sparse]),
            np.concatenate([dense_classes, np.argmax(scores, axis=-1)]),
            np.concatenate([np.zeros(dense_images.size, dtype=bool), near]),
        )

    def settle(self, pooled: np.ndarray, order: Sequence[int], steps: np.ndarray, images: np.ndarray) -> np.ndarray:
        """The Keras tail's class of each ``images[i]`` with the channels ``order[:steps[i]]`` pruned, at its place.

        A row's result depends on its batch's size and its place in it, not on the other rows'
        values, so the near ties of a whole sweep are evaluated together: each at its own place in
        a batch of its reference batch's size, the other places zero (or other near ties). Ties at
        the same place and batch size go into separate batches.
        """
        rank = np.full(pooled.shape[-1], len(order))
        rank[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        sizes, places = self.size_of[images], self.place_of[images]
        key = sizes * (self.batch_size + 1) + places
        by_key = np.argsort(key, kind="stable")
        first = np.searchsorted(key[by_key], key[by_key])
        round_ = np.empty_like(by_key)
        round_[by_key] = np.arange(by_key.size) - first  # how many earlier ties share this size and place
        classes = np.empty(images.size, dtype=np.int64)
        for size in np.unique(sizes):
            for r in np.unique(round_[sizes == size]):
                members = np.flatnonzero((sizes == size) & (round_ == r))
                keep = (rank[None, :] >= steps[members, None]).astype(np.float32)
                x = np.zeros((int(size), *pooled.shape[1:]), dtype=np.float32)
                x[places[members]] = pooled[images[members]] * keep[:, None, None, :]
                classes[members] = np.argmax(self.tail.predict_on_batch(x)[places[members]], axis=-1)
                self.evaluated += int(size)
        return classes
