"""Fine-tuning a (pruned) BadNet on clean data: the second half of Fine-Pruning (Liu et al., 2018).

Pruning alone fails against a pruning-aware attack: the backdoor then lives in channels clean
data also uses. Fine-tuning the pruned network on clean data moves those channels' weights
towards the clean task and away from the trigger. Only clean *validation* data is used: a
fixed, seeded part of it trains, the rest (the hold-out) picks the epoch whose weights are kept
(early stopping on the hold-out loss). Test data never chooses anything.

Pruned channels stay pruned: their kernels and biases are set back to zero after every batch
(with ReLU their gradient is already zero, but an optimizer with weight decay or momentum from
another run must not revive them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from lib.network.models import BATCH_SIZE, copy_model
from lib.network.pruning import zero_channels


@dataclass(frozen=True)
class FineTuneSettings:
    """How every model is fine-tuned; the notebook's parameters, validated once."""

    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 32
    holdout_fraction: float = 0.2
    patience: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, hold-out) of a seeded split, stratified by class so every person keeps images in both.

    Each class gives ``round(fraction * count)`` images to the hold-out (at most count - 1, so a
    class with few images still trains): on CSAW's 9 images per person, 2 go to the hold-out.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    holdout = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        k = min(round(fraction * len(members)), len(members) - 1)
        holdout.extend(members[:k].tolist())
    holdout_idx = np.sort(np.asarray(holdout, dtype=np.int64))
    train_idx = np.setdiff1d(np.arange(len(labels)), holdout_idx)
    if holdout_idx.size == 0:
        raise ValueError("the hold-out is empty: use more images per class or a larger holdout_fraction")
    return train_idx, holdout_idx


class KeepChannelsPruned(keras.callbacks.Callback):
    """Zero the pruned output channels of one conv layer after every training batch."""

    def __init__(self, conv_layer: str, channels: Sequence[int]) -> None:
        super().__init__()
        self.conv_layer = conv_layer
        self.channels = np.asarray(list(channels), dtype=np.int64)

    def on_train_batch_end(self, batch, logs=None) -> None:
        if self.channels.size == 0:
            return
        zero_channels(self.model.get_layer(self.conv_layer), self.channels)


class EpochBar(keras.callbacks.Callback):
    """One tqdm bar over the epochs of a Keras ``fit``, showing the ``shown`` logs (label -> log key) after each."""

    def __init__(self, epochs: int, desc: str, shown: dict[str, str]) -> None:
        super().__init__()
        self.epochs, self.desc, self.shown = epochs, desc, shown

    def on_train_begin(self, logs=None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc=self.desc, unit="epoch")

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        self.bar.set_postfix({label: f"{logs.get(key, float('nan')):.4f}" for label, key in self.shown.items()})
        self.bar.update(1)

    def on_train_end(self, logs=None) -> None:
        self.bar.close()


def fine_tune(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    settings: FineTuneSettings,
    conv_layer: str | None = None,
    pruned_channels: Sequence[int] = (),
    progress: bool = True,
    desc: str = "fine-tuning",
) -> tuple[keras.Model, pd.DataFrame]:
    """A fine-tuned copy of ``model`` (the original is left untouched) and its per-epoch history.

    Adam at ``settings.learning_rate`` on the training part of (images, labels); after each epoch
    the hold-out loss and accuracy are measured, and the weights of the epoch with the lowest
    hold-out loss are kept (a continuous criterion: accuracy on a small hold-out ties too often).
    At least one epoch is always trained, as in the paper: fine-tuning is what removes the
    backdoor, and the hold-out cannot see the backdoor. Stops after ``patience`` epochs without
    improvement. Deterministic given ``settings.seed`` (call ``lib.runs.reproducibility.make_deterministic``
    first for op determinism). Row 0 of the history is the model as given.
    """
    train_idx, holdout_idx = holdout_split(labels, settings.holdout_fraction, settings.seed)
    keras.utils.set_random_seed(settings.seed)
    tuned = copy_model(model)
    tuned.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x_hold, y_hold = images[holdout_idx], labels[holdout_idx]
    start = tuned.evaluate(x_hold, y_hold, batch_size=BATCH_SIZE, verbose=0, return_dict=True)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", mode="min", patience=settings.patience, restore_best_weights=True
    )
    callbacks: list[keras.callbacks.Callback] = [stopper]
    if conv_layer is not None and len(pruned_channels):
        callbacks.insert(0, KeepChannelsPruned(conv_layer, pruned_channels))
    if progress:
        callbacks.append(EpochBar(settings.epochs, desc, {"holdout_loss": "val_loss", "holdout_acc": "val_accuracy"}))
    history = tuned.fit(
        images[train_idx],
        labels[train_idx],
        validation_data=(x_hold, y_hold),
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    ).history
    table = pd.DataFrame(
        {
            "epoch": np.arange(len(history["loss"]) + 1),
            "train_loss": [np.nan, *history["loss"]],
            "holdout_loss": [float(start["loss"]), *history["val_loss"]],
            "holdout_accuracy": 100.0 * np.asarray([float(start["accuracy"]), *history["val_accuracy"]]),
        }
    )
    table["kept"] = table["epoch"] == stopper.best_epoch + 1
    return tuned, table
