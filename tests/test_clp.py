"""CLP (lib.defense.clp): the bound, the order, the choice of u on validation data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_deepid, tiny_images

from lib.core import rows
from lib.defense import clp
from lib.defense.plans import choose_within_budgets
from lib.network.models import predict_classes
from lib.network.pruning import prune_plan

LAYERS = ("conv_1", "conv_3", "conv_4")  # the tiny network's convolutions


def test_each_bound_is_the_spectral_norm_of_the_channels_kernel_as_clps_code_reshapes_it():
    model = tiny_deepid(seed=3)
    bounds = clp.channel_bounds(model, LAYERS)
    for name in LAYERS:
        kernel = model.get_layer(name).kernel.numpy().astype(np.float64)  # (kh, kw, in, out)
        expected = [
            np.linalg.svd(kernel[..., k].transpose(2, 0, 1).reshape(kernel.shape[2], -1), compute_uv=False)[0]
            for k in range(kernel.shape[-1])
        ]
        got = bounds[bounds["layer"] == name].sort_values("channel")
        np.testing.assert_allclose(got["bound"], expected, rtol=1e-12)
        z = (np.array(expected) - np.mean(expected)) / np.std(expected, ddof=1)  # torch.std: the sample spread
        np.testing.assert_allclose(got["z"], z, rtol=1e-12)
    assert bounds["z"].is_monotonic_decreasing, "in the order CLP prunes"


def test_lowering_u_prunes_more_channels_and_above_the_largest_z_none():
    bounds = clp.channel_bounds(tiny_deepid(seed=3), LAYERS)
    sizes = [sum(len(c) for c in clp.channels_above(bounds, u).values()) for u in (np.inf, 2.0, 1.0, 0.0, -np.inf)]
    assert sizes == sorted(sizes) and sizes[0] == 0 and sizes[-1] == len(bounds)
    top = bounds.iloc[0]
    assert clp.channels_above(bounds, bounds["z"].iloc[1])[top["layer"]].tolist() == [top["channel"]]


def test_the_scan_prunes_as_a_fresh_copy_would_and_stops_past_the_largest_budget():
    model, images = tiny_deepid(seed=5), tiny_images(64, seed=5)
    labels = predict_classes(model, images)  # B is right on every image: every pruned channel can only cost
    bounds = clp.channel_bounds(model, LAYERS)
    scan = clp.scan_u(model, bounds, (images, labels), max_drop=30, progress=False)
    assert scan["clean_accuracy"].iloc[0] == 100.0 and scan["channels_pruned"].is_monotonic_increasing
    assert (scan["clean_correct"] * 100 / len(images) == scan["clean_accuracy"]).all()
    for k in range(len(scan)):
        fresh = prune_plan(model, clp.channels_above(bounds, scan["u"].iloc[k]))
        assert 100 * np.mean(predict_classes(fresh, images) == labels) == scan["clean_accuracy"].iloc[k]
    assert (100 - scan["clean_accuracy"].iloc[:-1] <= 30).all()
    assert 100 - scan["clean_accuracy"].iloc[-1] > 30 or scan["channels_pruned"].iloc[-1] == len(bounds)
    assert scan["attack_success_rate"].isna().all(), "no triggered images: the ASR is NaN, as in sweep.csv"


def test_each_budget_keeps_the_largest_pruning_whose_drop_stays_within_it_counted_exactly():
    scan = pd.DataFrame({"u": [np.inf, 3, 2, 1, 0], "clean_correct": [200, 198, 195, 199, 170]})
    # of 200 images the drop is 0, 1, 2.5, 0.5 and 15 points: 2 points are first exceeded at row 2, 4 at row 4
    assert choose_within_budgets(scan, [2, 4, 10], n_clean=200) == {2.0: 1, 4.0: 3, 10.0: 3}
    assert choose_within_budgets(scan, [2.5], n_clean=200) == {2.5: 3}, "a drop of exactly 2.5 points stays within 2.5"
    assert choose_within_budgets(scan, [0.5], n_clean=200) == {0.5: 0}, (
        "exceeded by the first channel: CLP_0.5% prunes nothing (the defender keeps B), its row is not left out"
    )


@pytest.mark.parametrize(("name", "stem"), [("CLP_u3", "clp_u3"), ("CLP_2%", "clp_2"), ("GCLP_10%", "clp_10")])
def test_clp_rows_are_named_and_filed_as_the_issue_asks(name, stem):
    row = rows.parse_row(name)
    assert row.name == name and row.step == "clp" and row.file_stem == stem
    assert rows.lipschitz(u=3).name == "CLP_u3" and rows.lipschitz(2).goodnet_of().name == "GCLP_2%"
    with pytest.raises(ValueError, match="either a threshold"):
        rows.ModelRow(rows.LIPSCHITZ, 2.0, u=3.0)


def test_verify_judges_a_scan_that_starts_at_infinity_by_its_values():
    """``make verify`` and the platform jobs compare clp_sweep.csv, whose u runs from inf to -inf."""
    from lib.verify import compare_tables

    scan = pd.DataFrame({"u": [np.inf, 2.5, -np.inf], "clean_accuracy": [100.0, 99.0, 50.0]})
    assert compare_tables(scan, scan.copy()) is None
    other = scan.assign(u=[np.inf, 2.6, -np.inf])
    assert compare_tables(scan, other) is not None and "u" in compare_tables(scan, other)
    assert compare_tables(scan, scan.assign(u=[-np.inf, 2.5, -np.inf])) is not None
