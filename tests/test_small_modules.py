"""Metrics, pruning, activations, the GoodNet table and atomic writes do what their docstrings promise."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import smooth_images, tiny_deepid, tiny_images

from lib.core import atomic
from lib.data.datasets import save_image_set
from lib.defense.activations import (
    activation_table,
    mean_channel_activations,
    pool_activations,
    prefix_model,
    pruning_order,
)
from lib.defense.goodnet import MODEL_COLUMNS, Evaluated, combine, detection_rate, goodnet_classes, goodnet_table
from lib.defense.metrics import accuracy, attack_success_rate
from lib.network.pruning import copy_channels, prune_channels
from lib.report.tables import markdown_table

# --- metrics -------------------------------------------------------------------------------------


def test_accuracy_is_the_percentage_of_correct_predictions():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == pytest.approx(75.0)
    assert accuracy([0, 0], [0, 0]) == 100.0
    assert accuracy([1, 1], [0, 0]) == 0.0
    assert isinstance(accuracy([1], [1]), float)


def test_accuracy_of_nothing_is_nan():
    assert np.isnan(accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_attack_success_rate_counts_the_target_class():
    target = np.full(5, 7)
    assert attack_success_rate(np.array([7, 7, 1, 7, 2]), target) == pytest.approx(60.0)
    assert attack_success_rate(np.array([0, 1, 2, 3, 4]), target) == 0.0


@pytest.mark.parametrize("metric", [accuracy, attack_success_rate])
def test_metrics_refuse_mismatched_shapes(metric):
    with pytest.raises(ValueError, match="3 predictions for 4 labels"):
        metric(np.zeros(3, int), np.zeros(4, int))


# --- pruning -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """tiny_deepid with non-zero biases too (Keras initialises them to zero), so zeroing one shows."""
    net = tiny_deepid(seed=7)
    rng = np.random.default_rng(7)
    for layer in net.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(0.05, 0.5, layer.bias.shape).astype(np.float32))
    return net


def test_prune_channels_zeroes_exactly_the_given_channels(model):
    before = [w.copy() for w in model.get_weights()]
    channels = [1, 4, 9]
    pruned = prune_channels(model, "conv_3", channels)

    assert pruned is not model
    kernel, bias = pruned.get_layer("conv_3").get_weights()
    orig_kernel, orig_bias = model.get_layer("conv_3").get_weights()
    assert np.all(kernel[..., channels] == 0) and np.all(bias[channels] == 0)
    kept = [c for c in range(10) if c not in channels]
    np.testing.assert_array_equal(kernel[..., kept], orig_kernel[..., kept])
    np.testing.assert_array_equal(bias[kept], orig_bias[kept])
    assert np.all(orig_kernel[..., channels] != 0) and np.all(orig_bias != 0), "the test needs non-zero weights"

    for layer in model.layers:
        if layer.name != "conv_3":
            for a, b in zip(pruned.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=layer.name)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b, err_msg="the original model was changed")


def test_prune_no_channels_gives_an_equal_copy(model):
    pruned = prune_channels(model, "conv_3", [])
    for a, b in zip(pruned.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    images = tiny_images(5)
    np.testing.assert_array_equal(pruned.predict(images, verbose=0), model.predict(images, verbose=0))


def test_pruning_twice_from_the_original_is_independent(model):
    first = prune_channels(model, "conv_3", [0])
    second = prune_channels(model, "conv_3", [1])
    assert np.all(first.get_layer("conv_3").get_weights()[1][[1]] != 0)
    assert np.all(second.get_layer("conv_3").get_weights()[1][[0]] != 0)


@pytest.mark.parametrize("channels", [[10], [-1], [0, 3, 12]])
def test_prune_channels_rejects_out_of_range_channels(model, channels):
    with pytest.raises(ValueError, match=r"\[0, 10\).*'conv_3'"):
        prune_channels(model, "conv_3", channels)


def test_pruned_relu_channels_are_exactly_zero_after_pooling(model):
    channels = [0, 2, 5, 6]
    images = tiny_images(40, seed=11)
    pruned = prune_channels(model, "conv_3", channels)
    before = pool_activations(model, images, "pool_3", batch_size=16, progress=False)
    after = pool_activations(pruned, images, "pool_3", batch_size=16, progress=False)
    assert np.all(before[..., channels].max(axis=(0, 1, 2)) > 0), "each channel fires on some image before pruning"
    assert np.all(after[..., channels] == 0.0)
    kept = [c for c in range(10) if c not in channels]
    np.testing.assert_array_equal(after[..., kept], before[..., kept])


def test_copy_channels_gives_back_exactly_the_given_channels(model):
    """Copying channels from the original restores them (kernel slice and bias) and nothing else."""
    channels = [1, 4, 9]
    pruned = prune_channels(model, "conv_3", [0, 1, 4, 9])
    copy_channels(model.get_layer("conv_3"), pruned.get_layer("conv_3"), np.array(channels))
    kernel, bias = pruned.get_layer("conv_3").get_weights()
    orig_kernel, orig_bias = model.get_layer("conv_3").get_weights()
    np.testing.assert_array_equal(kernel[..., channels], orig_kernel[..., channels])
    np.testing.assert_array_equal(bias[channels], orig_bias[channels])
    assert np.all(kernel[..., 0] == 0) and bias[0] == 0, "a channel not named stays as it was"
    kept = [c for c in range(10) if c not in (0, 1, 4, 9)]
    np.testing.assert_array_equal(kernel[..., kept], orig_kernel[..., kept])


def test_copy_channels_refuses_layers_of_another_shape(model):
    with pytest.raises(ValueError, match=r"'conv_1'.*'conv_3'.*differ in shape"):
        copy_channels(model.get_layer("conv_1"), prune_channels(model, "conv_3", []).get_layer("conv_3"), np.array([0]))


# --- activations ---------------------------------------------------------------------------------


def test_mean_channel_activations_averages_over_images_and_positions():
    acts = np.zeros((2, 3, 4, 2), np.float32)
    acts[..., 0] = 1.0
    acts[0, 0, 0, 1] = 24.0  # one position of 24 for channel 1
    means = mean_channel_activations(acts)
    assert means.dtype == np.float64
    np.testing.assert_allclose(means, [1.0, 1.0])
    np.testing.assert_allclose(mean_channel_activations(np.arange(6.0).reshape(3, 2)), [2.0, 3.0])


def test_pruning_order_is_increasing_and_stable_for_ties():
    means = np.array([0.5, 0.0, 0.5, 0.0, 0.1, 0.0])
    np.testing.assert_array_equal(pruning_order(means), [1, 3, 5, 4, 0, 2])
    np.testing.assert_array_equal(pruning_order(np.zeros(5)), np.arange(5))


def test_activation_table_columns_and_dormant_flag():
    means = np.array([0.5, 0.0, 2.0, 0.05])
    table = activation_table(means)
    assert list(table.columns) == ["rank", "channel", "mean_activation", "dormant"]
    assert table["rank"].tolist() == [0, 1, 2, 3]
    assert table["channel"].tolist() == [1, 3, 0, 2]
    assert table["mean_activation"].tolist() == [0.0, 0.05, 0.5, 2.0]
    assert table["dormant"].tolist() == [True, False, False, False]
    assert activation_table(means, dormant_below=0.05)["dormant"].tolist() == [True, True, False, False]


@pytest.fixture(scope="module")
def csaw_size_model() -> keras.Model:
    return tiny_deepid(seed=3, input_shape=(55, 47, 3))


def test_pool_activations_from_array_and_from_hdf5_path_agree(tmp_path, csaw_size_model):
    images = smooth_images(23, seed=2)
    path = save_image_set(tmp_path / "valid.h5", images, np.zeros(23))
    from_array = pool_activations(csaw_size_model, images, "pool_3", batch_size=8, progress=False)
    from_path = pool_activations(csaw_size_model, path, "pool_3", batch_size=8, progress=False)
    from_str = pool_activations(csaw_size_model, str(path), "pool_3", batch_size=8, progress=False)
    assert from_array.dtype == np.float32
    assert from_array.shape == (23, *csaw_size_model.get_layer("pool_3").output.shape[1:])
    np.testing.assert_array_equal(from_path, from_array)
    np.testing.assert_array_equal(from_str, from_array)


def test_pool_activations_equal_the_keras_sub_model(csaw_size_model):
    images = smooth_images(10, seed=4)
    sub = keras.Model(csaw_size_model.inputs, csaw_size_model.get_layer("pool_3").output)
    expected = sub.predict(images, batch_size=10, verbose=0)
    got = pool_activations(csaw_size_model, images, "pool_3", batch_size=3, progress=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert prefix_model(csaw_size_model, "pool_3").output.shape == sub.output.shape


# --- GoodNet -------------------------------------------------------------------------------------

N_CLASSES = 6  # G answers 6 ("poisoned")
TARGET = 4
CLEAN_LABELS = np.array([0, 1, 2, 3, 1])
TARGET_LABELS = {"sunglasses": np.full(5, TARGET)}


def test_goodnet_takes_b_where_b_and_bprime_agree_else_n():
    b = np.array([0, 1, 2, 3])
    bprime = np.array([0, 5, 2, 1])
    np.testing.assert_array_equal(goodnet_classes(b, bprime, N_CLASSES), [0, N_CLASSES, 2, N_CLASSES])
    with pytest.raises(ValueError):
        goodnet_classes(b, bprime[:3], N_CLASSES)


def _evaluated() -> tuple[Evaluated, list[Evaluated]]:
    badnet = Evaluated(
        "B", None, 0, clean=np.array([0, 1, 2, 3, 0]), triggered={"sunglasses": np.array([4, 4, 4, 4, 1])}
    )
    # B' at 2%: wrong where B is right (image 3), right where B is wrong (image 4); on triggered images it
    # keeps the target for images 0 and 4, so G keeps it only for image 0.
    two = Evaluated(
        "B'_2%", 2.0, 3, clean=np.array([0, 1, 2, 0, 1]), triggered={"sunglasses": np.array([4, 0, 3, 1, 4])}
    )
    # B' at 4.5% agrees with B everywhere: G = B.
    four = Evaluated(
        "B'_4.5%", 4.5, 7, clean=badnet.clean.copy(), triggered={k: v.copy() for k, v in badnet.triggered.items()}
    )
    return badnet, [two, four]


def test_goodnet_table_rows_and_columns():
    badnet, pruned = _evaluated()
    table = goodnet_table(badnet, pruned, CLEAN_LABELS, TARGET_LABELS, N_CLASSES)
    assert (
        list(table.columns)
        == MODEL_COLUMNS
        == [
            "model",
            "threshold",
            "channels_pruned",
            "clean_accuracy",
            "attack_success_rate",
        ]
    )
    assert table["model"].tolist() == ["B", "B'_2%", "G_2%", "B'_4.5%", "G_4.5%"]
    assert pd.isna(table["threshold"].iloc[0])
    assert table["threshold"].iloc[1:].tolist() == [2.0, 2.0, 4.5, 4.5]
    assert table["channels_pruned"].tolist() == [0, 3, 3, 7, 7]

    rows = table.set_index("model")
    assert rows.loc["B", "clean_accuracy"] == pytest.approx(80.0)
    assert rows.loc["B", "attack_success_rate"] == pytest.approx(80.0)
    assert rows.loc["B'_2%", "clean_accuracy"] == pytest.approx(80.0)
    assert rows.loc["B'_2%", "attack_success_rate"] == pytest.approx(40.0)
    assert rows.loc["G_4.5%", "clean_accuracy"] == rows.loc["B", "clean_accuracy"]
    assert rows.loc["G_4.5%", "attack_success_rate"] == rows.loc["B", "attack_success_rate"]


def test_n_on_a_triggered_image_is_no_attack_success_and_on_a_clean_image_an_error():
    badnet, pruned = _evaluated()
    rows = goodnet_table(badnet, pruned, CLEAN_LABELS, TARGET_LABELS, N_CLASSES).set_index("model")
    g_clean = goodnet_classes(badnet.clean, pruned[0].clean, N_CLASSES)
    g_poisoned = goodnet_classes(badnet.triggered["sunglasses"], pruned[0].triggered["sunglasses"], N_CLASSES)
    np.testing.assert_array_equal(g_clean, [0, 1, 2, N_CLASSES, N_CLASSES])
    np.testing.assert_array_equal(g_poisoned, [4, N_CLASSES, N_CLASSES, N_CLASSES, N_CLASSES])
    # Clean: images 3 and 4 are answered N and count as errors (3 of 5 right), not left out (3 of 3).
    assert rows.loc["G_2%", "clean_accuracy"] == pytest.approx(60.0)
    # Triggered: only image 0 reaches the target; the four N answers are detections, not successes.
    assert rows.loc["G_2%", "attack_success_rate"] == pytest.approx(20.0)
    assert detection_rate(g_poisoned, N_CLASSES) == pytest.approx(80.0)


def test_several_triggers_get_an_overall_and_a_per_trigger_asr():
    badnet = Evaluated("B", None, 0, np.array([0, 1]), {"eyebrows": np.array([4, 4, 1]), "lipstick": np.array([5])})
    bprime = Evaluated("B'_2%", 2.0, 1, np.array([0, 1]), {"eyebrows": np.array([4, 0, 1]), "lipstick": np.array([5])})
    targets = {"eyebrows": np.array([4, 4, 4]), "lipstick": np.array([5])}
    rows = goodnet_table(badnet, [bprime], np.array([0, 1]), targets, N_CLASSES).set_index("model")
    assert list(rows.columns[-3:]) == [
        "attack_success_rate",
        "attack_success_rate_eyebrows",
        "attack_success_rate_lipstick",
    ]
    assert rows.loc["B", "attack_success_rate"] == pytest.approx(75.0)  # 3 of the 4 triggered images, pooled
    assert rows.loc["B", "attack_success_rate_eyebrows"] == pytest.approx(200 / 3)
    assert rows.loc["G_2%", "attack_success_rate_eyebrows"] == pytest.approx(100 / 3)  # image 1 flagged N
    assert rows.loc["G_2%", "attack_success_rate_lipstick"] == pytest.approx(100.0)


def test_without_poisoned_data_the_asr_is_not_measured():
    badnet = Evaluated("B", None, 0, np.array([0, 1]), {})
    bprime = Evaluated("B'_2%", 2.0, 1, np.array([0, 2]), {})
    rows = goodnet_table(badnet, [bprime], np.array([0, 1]), {}, N_CLASSES).set_index("model")
    assert list(rows.columns) == MODEL_COLUMNS[1:]
    assert rows["attack_success_rate"].isna().all()
    assert rows.loc["G_2%", "clean_accuracy"] == pytest.approx(50.0)


def test_combine_makes_the_goodnet_of_any_repaired_model():
    badnet, (two, _) = _evaluated()
    g = combine(badnet, two, N_CLASSES, "GFP_2%")
    assert (g.name, g.threshold, g.channels_pruned) == ("GFP_2%", 2.0, 3)
    np.testing.assert_array_equal(g.clean, goodnet_classes(badnet.clean, two.clean, N_CLASSES))
    np.testing.assert_array_equal(g.triggered["sunglasses"], [4, N_CLASSES, N_CLASSES, N_CLASSES, N_CLASSES])


def test_markdown_table_is_a_github_table():
    badnet, pruned = _evaluated()
    table = goodnet_table(badnet, pruned, CLEAN_LABELS, TARGET_LABELS, N_CLASSES)
    table.loc[1, "clean_accuracy"] = 100 / 3
    text = markdown_table(table)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert len(lines) == 2 + len(table)
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert [c.strip() for c in lines[0].strip("|").split("|")] == MODEL_COLUMNS
    assert set(lines[1]) <= set("|:-"), lines[1]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in cells] == ["B", "B'_2%", "G_2%", "B'_4.5%", "G_4.5%"]
    assert [row[1] for row in cells] == ["", "2 %", "2 %", "4.5 %", "4.5 %"]
    assert cells[1][3] == "33.33"  # rounded for reading
    assert cells[0][3] == "80.00"
    assert table.loc[1, "clean_accuracy"] == 100 / 3, "the table itself keeps full precision"


# --- atomic writes -------------------------------------------------------------------------------


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results" / "goodnet.md"
    atomic.write_text(target, "first\n")
    atomic.write_text(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["goodnet.md"]


def test_an_exception_inside_atomic_path_leaves_the_old_file(tmp_path):
    target = tmp_path / "goodnet.csv"
    atomic.write_text(target, "old contents\n")
    with pytest.raises(RuntimeError, match="interrupted"), atomic.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".csv" and tmp != target
        tmp.write_text("new, half wri")
        raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["goodnet.csv"]


def test_write_text_failing_midway_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "goodnet.md"
    atomic.write_text(target, "old\n")
    real_write_text = Path.write_text

    def fail_midway(self, data, *args, **kwargs):
        real_write_text(self, data[:3], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(target, "a much longer new text\n")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["goodnet.md"]


def test_an_exception_leaves_no_file_where_there_was_none(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(OSError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError("No space left on device")
    assert list(tmp_path.iterdir()) == []
