"""The two ways the demo plants its backdoor: BadNets, and the pruning-aware attack of the Fine-Pruning paper.

BadNets (Gu et al.) trains once on the poisoned training set. The pruning-aware attack (Liu,
Dolan-Gavitt & Garg, *Fine-Pruning*, RAID 2018) hides the backdoor in the ``conv_3`` channels
that clean faces use and leaves dormant decoys for the pruning defense to remove first. Both
train deterministically from the recipe's seed, so the same recipe gives the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from lib.defense import activations as act
from lib.defense.finetune import EpochBar, KeepChannelsPruned
from lib.demo.data import DemoData
from lib.demo.recipe import DemoRecipe
from lib.network.architecture import PRUNED_CONV, PRUNED_POOL, build_deepid
from lib.network.models import copy_model
from lib.network.pruning import copy_channels, prune_channels
from lib.runs.reproducibility import make_deterministic
from lib.sweep.engine import SweepEngine
from lib.sweep.table import threshold_steps


def train_badnet(data: DemoData, recipe: DemoRecipe, progress: bool = True) -> keras.Model:
    """Train ``build_deepid`` on the poisoned training set.

    ``make_deterministic`` comes first so weights, shuffling and reductions repeat exactly.
    """
    make_deterministic(recipe.seed)
    model = build_deepid(recipe.n_identities)
    return _fit(model, data.x_train, data.y_train, recipe, progress=progress)


def _fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    recipe: DemoRecipe,
    progress: bool = True,
    desc: str = "training the demo BadNet",
    callbacks: tuple[keras.callbacks.Callback, ...] | list[keras.callbacks.Callback] = (),
) -> keras.Model:
    """Compile with a fresh Adam and fit ``recipe.epochs`` epochs; a tqdm bar over the epochs when ``progress``.

    The rate decays exponentially by ``decay_rate`` over the whole run: large steps learn the
    identities and the trigger quickly, small final steps settle at a clean accuracy close to 100%.
    """
    steps = recipe.epochs * int(np.ceil(len(x) / recipe.batch_size))
    schedule = keras.optimizers.schedules.ExponentialDecay(
        recipe.learning_rate, decay_steps=steps, decay_rate=recipe.decay_rate
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    shown = [EpochBar(recipe.epochs, desc, {"loss": "loss", "acc": "accuracy"})] if progress else []
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


@dataclass(frozen=True)
class PruningAwareBadNet:
    """The pruning-aware BadNet and what the attacker did to build it."""

    model: keras.Model
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
    model: keras.Model, x_clean: np.ndarray, y_clean: np.ndarray, max_drop: float
) -> tuple[np.ndarray, float, float]:
    """Step 2: the ``conv_3`` channels the attacker prunes, and its clean accuracy before and after.

    The attacker runs the defense itself on the only clean data it has, its training images:
    channels in increasing order of mean ``pool_3`` activation, as many as it can while its
    clean accuracy drops by less than ``max_drop`` points. The more it prunes, the fewer channels
    the backdoor can hide in, and the more of them the defender must remove before reaching it.
    """
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


def _held_at_zero(model: keras.Model, channels: np.ndarray) -> KeepChannelsPruned:
    """A callback that re-zeroes ``channels`` of ``conv_3`` after every batch: pruned stays pruned.

    Their gradients are zero anyway, ReLU being flat at 0, but the attack must not depend on it.
    It is the callback that keeps the defender's pruned channels at zero while it fine-tunes.
    """
    return KeepChannelsPruned(PRUNED_CONV, channels)


def restore_as_decoys(
    trained: keras.Model, original: keras.Model, channels: np.ndarray, x_attacker: np.ndarray, margin: float
) -> keras.Model:
    """Step 4: ``trained`` with ``channels`` of ``conv_3`` given back ``original``'s weights, dormant.

    Each restored channel's bias is lowered until its largest pre-activation over the
    attacker's images (clean and triggered) is ``-margin`` times what it was: ReLU then outputs
    exactly 0 on all of them, so the network answers as the pruned one did, and the channel
    looks unused, the first thing the pruning defense removes. Its kernel is the original one,
    not zero, so the channel does not look pruned either.
    """
    model = copy_model(trained)
    conv = model.get_layer(PRUNED_CONV)
    copy_channels(original.get_layer(PRUNED_CONV), conv, channels)
    peak = np.maximum(conv3_peak_preactivation(model, x_attacker)[channels], 0.0)
    bias = conv.bias.numpy().copy()
    bias[channels] -= (1.0 + margin) * peak
    conv.bias.assign(bias)
    return model


def conv3_peak_preactivation(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Largest value each ``conv_3`` channel reaches before its ReLU, over ``images`` and positions."""
    conv = model.get_layer(PRUNED_CONV)
    below = keras.Model(model.inputs, conv.input, name="below_conv_3")
    peak = np.full(conv.filters, -np.inf, np.float32)
    for i in range(0, len(images), batch_size):
        pre = (
            keras.ops.conv(below.predict_on_batch(images[i : i + batch_size]), conv.kernel, padding="valid") + conv.bias
        )
        peak = np.maximum(peak, keras.ops.convert_to_numpy(keras.ops.max(pre, axis=(0, 1, 2))))
    return peak
