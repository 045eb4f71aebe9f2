"""STRIP (lib.defense.strip): the entropy of the blends, the threshold rule, the ROC and its area, and G combined
with STRIP as one model that answers as the detector's table says, saved, loaded and run by ``lib.eval``."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import smooth_images

from lib.data.catalog import InputScale
from lib.data.datasets import save_image_set
from lib.data.input_scale import with_input_scale
from lib.defense import strip
from lib.defense.goodnet import goodnet_classes
from lib.defense.goodnet_model import build_goodnet, is_goodnet, load_goodnet, save_goodnet
from lib.eval import classify
from lib.network.architecture import build_deepid
from lib.network.models import predict_classes
from lib.network.pruning import prune_channels
from lib.report.tables import write_csv

N = 5


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    """B (random DeepID, 5 classes, fed x / 255 so that its softmax is not saturated), B' (10 conv_3 channels
    pruned), G, overlays and test pixels."""
    keras.utils.set_random_seed(3)
    badnet = with_input_scale(build_deepid(num_classes=N), InputScale.DIVIDED_BY_255)
    repaired = prune_channels(badnet, "conv_3", range(10))
    images = smooth_images(40, seed=4)
    return {
        "B": badnet,
        "B'": repaired,
        "G": build_goodnet(badnet, repaired),
        "overlays": images[:6],
        "x": images[6:],
        "folder": tmp_path_factory.mktemp("strip"),
    }


def reference_entropy(model: keras.Model, images: np.ndarray, overlays: np.ndarray, blend: str) -> np.ndarray:
    """The formula, spelled out in float64: mean over the overlays of -sum p log p of B's blend predictions."""
    out = []
    for x in images:
        blended = np.minimum(x + overlays, 255.0) if blend == "sum" else (x + overlays) / 2.0
        p = model.predict(blended.astype(np.float32), verbose=0).astype(np.float64)
        out.append(np.mean(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)))
    return np.array(out)


@pytest.mark.parametrize("blend", strip.BLENDS)
def test_the_entropy_is_the_mean_entropy_of_b_over_the_blends(nets, blend):
    model = strip.entropy_model(nets["B"], nets["overlays"], blend)
    got = strip.entropies(model, nets["x"], blends_per_batch=12)  # two images per forward pass
    assert got.shape == (len(nets["x"]),) and got.dtype == np.float32
    assert got.min() > 0.1 and np.ptp(got) > 1e-3, "the fixture must give entropies that differ"
    np.testing.assert_allclose(got, reference_entropy(nets["B"], nets["x"], nets["overlays"], blend), rtol=1e-5)


def test_blends_saturate_at_255_or_average():
    x = np.full((1, 2, 2, 3), 200.0, np.float32)
    overlays = np.stack([np.full((2, 2, 3), 100.0), np.full((2, 2, 3), 10.0)]).astype(np.float32)
    for blend, expected in (("sum", [255.0, 210.0]), ("mean", [150.0, 105.0])):
        layer = strip.StripBlend(2, blend)
        layer.build(x.shape)
        layer.overlays.assign(overlays)
        out = keras.ops.convert_to_numpy(layer(x))
        assert out.shape == (2, 2, 2, 3)
        np.testing.assert_array_equal(out[:, 0, 0, 0], expected)
    with pytest.raises(ValueError, match="blend must be one of"):
        strip.StripBlend(2, "max")


def test_the_threshold_flags_at_most_the_stated_share_of_calibration_images():
    values = np.random.default_rng(0).permutation(np.arange(200, dtype=np.float32))
    for frr, flagged in ((0, 0), (1, 2), (1.25, 2), (1.5, 3), (10, 20), (99.5, 199)):
        threshold = strip.threshold_at_frr(values, frr)
        assert np.sum(values < threshold) == flagged, frr
    tied = np.array([1.0, 1.0, 1.0, 2.0, 3.0], np.float32)  # a tie below: fewer flagged, never more
    assert np.sum(tied < strip.threshold_at_frr(tied, 40)) == 0
    for bad in (-1, 100, 150):
        with pytest.raises(ValueError, match="percentage"):
            strip.threshold_at_frr(values, bad)


def test_the_auc_counts_pairs_with_ties_as_half():
    rng = np.random.default_rng(1)
    clean, triggered = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 20).astype(float)
    pairs = [(c > t) + 0.5 * (c == t) for c, t in itertools.product(clean, triggered)]
    assert strip.auc(clean, triggered) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert strip.auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0  # triggered all lower: perfect
    assert np.isnan(strip.auc(clean, np.array([])))


def test_the_roc_runs_from_nothing_flagged_to_everything_flagged():
    rng = np.random.default_rng(2)
    clean, triggered = rng.normal(1.0, 0.3, 50), rng.normal(0.5, 0.3, 40)
    roc = strip.roc_curve(clean, triggered)
    assert (roc.iloc[0]["FRR"], roc.iloc[0]["FAR"]) == (0.0, 100.0)
    assert (roc.iloc[-1]["FRR"], roc.iloc[-1]["FAR"]) == (100.0, 0.0)
    assert roc["FRR"].is_monotonic_increasing and roc["FAR"].is_monotonic_decreasing
    for cut in roc.itertuples():  # every point is the rates of "flag below this threshold"
        rates = strip.rates(clean < cut.threshold, triggered < cut.threshold)
        assert rates == pytest.approx((cut.FRR, cut.FAR))
    assert strip.roc_curve(clean, np.array([]))["FAR"].isna().all()


def test_the_validation_split_is_disjoint_seeded_and_checked():
    pool, calibration = strip.split_validation(50, 10, seed=7)
    again = strip.split_validation(50, 10, seed=7)
    assert len(pool) == 10 and len(calibration) == 25 and not set(pool) & set(calibration)
    assert all(np.array_equal(a, b) for a, b in zip((pool, calibration), again, strict=True))
    assert not np.array_equal(strip.split_validation(50, 10, seed=8)[1], calibration)
    with pytest.warns(UserWarning, match="blending with those 25"):
        small_pool, _ = strip.split_validation(50, 26, seed=7)
    assert len(small_pool) == 25 and not set(small_pool) & set(calibration)
    with pytest.raises(ValueError, match="at least 2 validation images"):
        strip.split_validation(1, 1, seed=7)


def test_strip_needs_class_probabilities(nets):
    logits = keras.Model(nets["B"].inputs, nets["B"].get_layer("output").output)
    without_softmax = keras.Sequential([keras.Input((55, 47, 3)), keras.layers.Flatten(), keras.layers.Dense(N)])
    strip.entropy_model(logits, nets["overlays"])  # the output layer itself is a softmax Dense: accepted
    with pytest.raises(ValueError, match="softmax"):
        strip.entropy_model(without_softmax, nets["overlays"])


def test_g_with_strip_answers_n_where_g_or_strip_flags_and_survives_saving(nets):
    detector = strip.entropy_model(nets["B"], nets["overlays"], "sum")
    entropy = strip.entropies(detector, nets["x"])
    threshold = float(np.sort(entropy)[len(entropy) // 3])  # a third of the images below it
    g = goodnet_classes(predict_classes(nets["B"], nets["x"]), predict_classes(nets["B'"], nets["x"]), N)
    expected = np.where(entropy < threshold, N, g)
    assert np.any((entropy < threshold) & (g != N)) and np.any(g == N) and np.any(expected != N)
    combined = strip.build_strip_goodnet(nets["G"], nets["overlays"], "sum", threshold)
    assert is_goodnet(combined)
    np.testing.assert_array_equal(predict_classes(combined, nets["x"], 5), expected)
    path = save_goodnet(combined, nets["folder"] / "g_strip.keras")
    for loaded in (load_goodnet(path), keras.models.load_model(path, compile=False)):
        np.testing.assert_array_equal(predict_classes(loaded, nets["x"], 7), expected)
    images = save_image_set(nets["folder"] / "x.h5", nets["x"], np.zeros(len(nets["x"])))
    answers = classify(path, [images], batch_size=4)
    assert [a.label for a in answers] == expected.tolist()
    assert [a.poisoned for a in answers] == (expected == N).tolist()


def test_building_g_with_strip_wants_a_goodnet(nets):
    with pytest.raises(ValueError, match="not a GoodNet"):
        strip.build_strip_goodnet(nets["B"], nets["overlays"], "sum", 0.5)


def test_the_score_table_names_every_image_once():
    table = strip.score_table(np.array([4, 9]), np.ones(2), np.ones(3), {"sunglasses": np.ones(2)})
    assert list(table.columns) == ["split", "set", "index", "entropy"]
    expected = [("valid", "clean", 4), ("valid", "clean", 9), *(("test", "clean", i) for i in range(3))]
    expected += [("test", "sunglasses", 0), ("test", "sunglasses", 1)]
    assert list(table[["split", "set", "index"]].itertuples(index=False, name=None)) == expected


def test_the_scores_read_back_flag_what_the_threshold_flags(tmp_path):
    """strip_scores.csv read back and compared with detection.csv's threshold flags exactly the images the float32
    entropies flag: 0.36313420534 (a float32) is written in its shortest float32 decimals as 0.3631342, which
    reads back below itself, so the threshold's own image would look flagged."""
    calibration = np.array([0.3631342053413391, 0.5, 0.7, 0.9], np.float32)
    threshold = strip.threshold_at_frr(calibration, 1)
    table = strip.score_table(np.arange(4), calibration, calibration[1:], {"sunglasses": calibration[:2]})
    read = pd.read_csv(write_csv(table, tmp_path / "strip_scores.csv"))
    np.testing.assert_array_equal(read["entropy"] < threshold, table["entropy"].to_numpy(np.float32) < threshold)
    assert not (read.loc[read["split"] == "valid", "entropy"] < threshold).any()
