"""Fine-tuning on clean data (lib.defense.finetune): the split, what is kept, what stays pruned, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_deepid, tiny_images

from lib.defense.finetune import FineTuneSettings, fine_tune, holdout_split
from lib.network.pruning import prune_channels


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), 9)  # 9 images per person, as CSAW's validation set
    train, hold = holdout_split(labels, 0.2, seed=3)
    assert np.intersect1d(train, hold).size == 0 and np.union1d(train, hold).tolist() == list(range(45))
    assert np.bincount(labels[hold]).tolist() == [2] * 5  # round(0.2 * 9) of every person
    assert set(labels[train]) == set(range(5))
    again, _ = holdout_split(labels, 0.2, seed=3)
    other, _ = holdout_split(labels, 0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_a_person_with_one_image_keeps_it_for_training():
    train, hold = holdout_split(np.array([0, 1, 1, 1, 1, 1]), 0.5, seed=0)
    assert 0 in train and len(hold) == 2
    with pytest.raises(ValueError, match="hold-out is empty"):
        holdout_split(np.array([0, 1]), 0.2, seed=0)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"learning_rate": 0}, {"holdout_fraction": 1.0}, {"patience": 0}])
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        FineTuneSettings(**bad)


@pytest.fixture(scope="module")
def tuned():
    model = tiny_deepid(n_classes=4, seed=1)
    pruned = prune_channels(model, "conv_3", [0, 3, 7])
    images = tiny_images(80, seed=2)
    labels = np.arange(80) % 4
    settings = FineTuneSettings(epochs=4, learning_rate=1e-2, batch_size=16, patience=2, seed=5)
    before = [w.copy() for w in pruned.get_weights()]
    result = fine_tune(pruned, images, labels, settings, "conv_3", [0, 3, 7], progress=False)
    return pruned, before, result, (images, labels, settings)


@pytest.mark.slow
def test_the_given_model_is_left_untouched(tuned):
    pruned, before, _, _ = tuned
    assert all(np.array_equal(a, b) for a, b in zip(pruned.get_weights(), before, strict=False))


@pytest.mark.slow
def test_pruned_channels_stay_pruned(tuned):
    _, _, (model, _), _ = tuned
    kernel, bias = model.get_layer("conv_3").get_weights()
    assert np.all(kernel[..., [0, 3, 7]] == 0) and np.all(bias[[0, 3, 7]] == 0)
    assert np.any(kernel[..., [1, 2]] != 0)


@pytest.mark.slow
def test_the_epoch_with_the_lowest_holdout_loss_is_kept(tuned):
    _, _, (model, history), (images, labels, settings) = tuned
    assert history["epoch"].tolist()[0] == 0 and np.isnan(history["train_loss"][0])
    trained = history[history["epoch"] >= 1]
    assert history["kept"].sum() == 1
    assert history.loc[history["kept"], "epoch"].item() == trained.loc[trained["holdout_loss"].idxmin(), "epoch"]
    _, hold = holdout_split(labels, settings.holdout_fraction, settings.seed)
    model.compile(loss="sparse_categorical_crossentropy")
    loss = model.evaluate(images[hold], labels[hold], verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(trained["holdout_loss"].min(), rel=1e-4)  # the kept weights are that epoch's


@pytest.mark.slow
def test_fine_tuning_is_deterministic(tuned):
    pruned, _, (model, history), (images, labels, settings) = tuned
    again, history2 = fine_tune(pruned, images, labels, settings, "conv_3", [0, 3, 7], progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), again.get_weights(), strict=False))
    assert history.equals(history2)
