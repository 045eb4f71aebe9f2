"""ANP (lib.defense.anp): the masked forward, the masks it learns, the choice of the pruning on validation data."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_deepid, tiny_images

from lib.core import rows
from lib.defense import anp
from lib.defense.plans import choose_within_budgets
from lib.network.models import predict_classes
from lib.network.pruning import prune_plan

LAYERS = ("conv_1", "conv_3", "conv_4", "fc_1", "fc_2")  # the tiny network's neuron layers
N_NEURONS = 4 + 10 + 6 + 12 + 12
FAST = anp.AnpSettings(eps=0.1, iterations=30, batch_size=16)


def _ones(layers, value=1.0):
    return {n: np.full(int(layer.kernel.shape[-1]), value, np.float32) for n, layer in layers.items()}


def test_the_masked_forward_with_every_mask_one_is_the_model():
    model = tiny_deepid(seed=1)
    layers = anp.neuron_layers(model, LAYERS)
    x = tiny_images(20, seed=2)
    out = anp.masked_forward(model, layers)(x, _ones(layers), _ones(layers))
    np.testing.assert_allclose(np.asarray(out), model.predict(x, verbose=0), rtol=1e-5, atol=1e-7)


def test_a_mask_of_zero_is_the_neuron_pruned_with_its_bias_kept():
    """ANP prunes by setting the mask on ``w . x`` to 0: the saved model zeroes the kernel slice, keeps the bias."""
    model = tiny_deepid(seed=1)
    for name in ("conv_3", "fc_1"):  # give the biases weight, so that keeping them shows
        model.get_layer(name).bias.assign(np.linspace(-0.5, 0.5, model.get_layer(name).bias.shape[0]))
    layers = anp.neuron_layers(model, LAYERS)
    scale = _ones(layers)
    plan = {"conv_3": np.array([1, 4, 7]), "fc_1": np.array([0, 5])}
    for name, neurons in plan.items():
        scale[name][neurons] = 0.0
    x = tiny_images(20, seed=2)
    masked = np.asarray(anp.masked_forward(model, layers)(x, scale, _ones(layers)))
    pruned = prune_plan(model, plan, keep_bias=True)
    np.testing.assert_allclose(masked, pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    without_bias = prune_plan(model, plan).predict(x, verbose=0)
    assert not np.allclose(masked, without_bias, rtol=1e-5, atol=1e-7), "CLP's pruning (bias zeroed) differs"
    np.testing.assert_array_equal(pruned.get_layer("fc_1").bias.numpy(), model.get_layer("fc_1").bias.numpy())


def test_masks_lie_in_the_unit_interval_one_per_neuron_lowest_first_and_leave_the_model_alone():
    model = tiny_deepid(seed=1)
    before = [w.copy() for w in model.get_weights()]
    x, y = tiny_images(64, seed=3), np.arange(64) % 7
    masks = anp.learn_masks(model, x, y, FAST, seed=5, layer_names=LAYERS, progress=False)
    assert len(masks) == N_NEURONS and list(masks.columns) == ["layer", "neuron", "mask"]
    assert masks["mask"].between(0, 1).all() and masks["mask"].is_monotonic_increasing
    assert masks.groupby("layer")["neuron"].nunique().to_dict() == {
        "conv_1": 4,
        "conv_3": 10,
        "conv_4": 6,
        "fc_1": 12,
        "fc_2": 12,
    }
    assert (masks["mask"] < 1).any(), "thirty updates moved some masks"
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_masks_follow_the_seed_and_the_perturbation():
    model = tiny_deepid(seed=1)
    x, y = tiny_images(64, seed=3), np.arange(64) % 7
    learn = lambda settings, seed: anp.learn_masks(model, x, y, settings, seed, LAYERS, progress=False)  # noqa: E731
    first = learn(FAST, 5)
    assert first.equals(learn(FAST, 5)), "seeded: the same masks again on this machine"
    assert not first.equals(learn(FAST, 6)), "another seed draws other batches and perturbations"
    calm = anp.AnpSettings(eps=0.0, iterations=30, batch_size=16)
    assert not first.equals(learn(calm, 5)), "the adversarial perturbation changes what is learnt"


def test_the_settings_default_to_the_papers_and_refuse_what_anp_cannot_mean():
    paper = {"eps": 0.4, "alpha": 0.2, "iterations": 2000, "learning_rate": 0.2, "momentum": 0.9, "batch_size": 128}
    assert anp.PAPER.as_dict() == paper
    for bad in ({"eps": 1.0}, {"eps": -0.1}, {"alpha": 1.5}, {"iterations": 0}, {"learning_rate": 0}, {"momentum": 1}):
        with pytest.raises(ValueError, match="ANP"):
            anp.AnpSettings(**bad)


def test_only_conv_and_dense_layers_that_exist_are_masked():
    model = tiny_deepid()
    with pytest.raises(ValueError, match="no layer 'conv_2'"):
        anp.neuron_layers(model, ("conv_1", "conv_2"))
    with pytest.raises(ValueError, match="pool_3 is a MaxPooling2D"):
        anp.neuron_layers(model, ("pool_3",))


def test_the_validation_split_is_seeded_disjoint_and_complete():
    learn, choose = anp.split_validation(50, 0.5, seed=7)
    assert len(learn) == 25 and len(choose) == 25
    assert set(learn).isdisjoint(choose) and set(learn) | set(choose) == set(range(50))
    assert np.array_equal(anp.split_validation(50, 0.5, seed=7)[0], learn)
    assert not np.array_equal(anp.split_validation(50, 0.5, seed=8)[0], learn)
    assert len(anp.split_validation(50, 0.2, seed=7)[0]) == 10
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="mask_share"):
            anp.split_validation(50, share, seed=7)
    with pytest.raises(ValueError, match="cannot be split"):
        anp.split_validation(2, 0.1, seed=7)


def test_raising_the_threshold_prunes_nested_sets_and_the_scan_stops_past_the_largest_budget():
    model = tiny_deepid(seed=1)
    x = tiny_images(200, seed=4)
    y = predict_classes(model, x)  # B is right on every choice image: every drop is B's own loss
    masks = anp.learn_masks(model, tiny_images(64, seed=3), np.arange(64) % 7, FAST, 5, LAYERS, progress=False)
    values = np.unique(masks["mask"])
    sizes = [sum(len(v) for v in anp.neurons_at_or_below(masks, m).values()) for m in (-np.inf, *values)]
    assert sizes[0] == 0 and sizes[-1] == N_NEURONS and sizes == sorted(sizes)
    scan = anp.scan_masks(model, masks, (x, y), max_drop=10, progress=False)
    assert (scan["channels_pruned"].diff().iloc[1:] > 0).all() and scan["channels_pruned"].iloc[0] == 0
    drops = 200 - scan["clean_correct"]
    assert (drops.iloc[:-1] <= 20).all() and (drops.iloc[-1] > 20 or len(scan) == len(values) + 1)
    assert scan["attack_success_rate"].isna().all(), "no triggered images given: NaN, as in sweep.csv"
    chosen = choose_within_budgets(scan, [10], n_clean=200)[10.0]
    assert drops.iloc[chosen] <= 20 and (chosen == len(scan) - 1 or drops.iloc[chosen + 1] > 20)


def test_anp_rows_are_named_and_filed_like_the_other_defenses():
    row = rows.adversarial(2)
    assert (row.name, row.goodnet_of().name, row.file_stem, row.step) == ("ANP_2%", "GANP_2%", "anp_2", "anp")
    assert rows.parse_row("GANP_10%") == rows.adversarial(10).goodnet_of()
    for bad in ("ANP", "ANP_u3", "GANP"):
        with pytest.raises(ValueError, match="not a model row name"):
            rows.parse_row(bad)
