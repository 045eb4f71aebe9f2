"""The five notebooks, run headlessly by papermill on a small demo scenario, produce the contract's files;
a step reruns only when its inputs changed, and a results folder is always one consistent run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import run_notebook_cells

import lib.defense.strip  # noqa: F401  (registers the layers of G+STRIP for keras.models.load_model)
from lib.core.paths import PROJECT_ROOT
from lib.core.rows import parse_row
from lib.network.models import load_model_file
from lib.report.tables import read_csv
from lib.runs.notebook import main as run_notebook

pytestmark = pytest.mark.slow

NOTEBOOKS = [
    "01_data",
    "02_activations",
    "03_pruning_sweep",
    "04_goodnet",
    "05_fine_pruning",
    "06_clp",
    "07_strip",
    "08_anp",
]
RUNNER = [sys.executable, "-m", "lib.runs.notebook"]
SMALL_DEMO = "{n_identities: 8, train_per_identity: 24, valid_per_identity: 8, test_per_identity: 8, epochs: 6}"
#: ANP on the small demo: few updates, and a gentler rate (at 0.2 its fragile B's masks fall to 0 together, and the
#: first cut of the scan already exceeds every budget).
SMALL_ANP = {"iterations": 20, "learning_rate": 0.05}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, Path]:
    """Execute the five notebooks once, as `make all` does, into temporary data/ and results/ folders."""
    base = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    mp.setenv("BACKDOOR_DATA_ROOT", str(base / "data"))
    mp.setenv("BACKDOOR_RESULTS_ROOT", str(base / "results"))
    try:
        for name in NOTEBOOKS:
            params = ["-p", "dataset=demo"]
            if name == "01_data":
                params += ["-p", f"demo_recipe={SMALL_DEMO}"]
            if name == "03_pruning_sweep":
                params += ["-p", "thresholds=[2, 4, 10]"]
            if name == "05_fine_pruning":
                params += ["-p", "epochs=3"]
            if name == "07_strip":
                params += ["-p", "n_overlays=20"]  # the small demo has 64 validation images: 32 in the pool
            if name == "08_anp":
                params += [a for k, v in SMALL_ANP.items() for a in ("-p", f"{k}={v}")]
            rc = run_notebook(
                [
                    str(PROJECT_ROOT / "notebooks" / f"{name}.ipynb"),
                    str(base / "results" / "demo" / "notebooks" / f"{name}.ipynb"),
                    *params,
                ]
            )
            assert rc == 0, f"{name} failed"
        yield base / "data" / "demo", base / "results" / "demo"
    finally:
        mp.undo()


def test_notebooks_write_the_contract_files(demo_run):
    data, results = demo_run
    for f in ["cl/valid.h5", "cl/test.h5", "bd/bd_valid.h5", "bd/bd_test.h5", "bd_net.h5"]:
        assert (data / f).is_file(), f
    for f in [
        "activations.csv",
        "sweep.csv",
        "thresholds.csv",
        "goodnet.csv",
        "goodnet.md",
        "fine_pruning.csv",
        "fine_pruning.md",
        "fine_tuning_history.csv",
        "trained_on.json",
        "run.json",
        "models/ft.h5",
        "clp.csv",
        "clp_sweep.csv",
        "models/clp_u3.h5",
        "models/goodnet_clp_u3.keras",
        "detection.csv",
        "strip_scores.csv",
        "models/goodnet_bprime_2_strip.keras",
        "anp_masks.csv",
        "anp_sweep.csv",
        "anp.csv",
        "anp.md",
        "anp_trained_on.json",
    ]:
        assert (results / f).is_file(), f
    figures = ["samples", "activations", "sweep", "goodnet", "fine_pruning", "clp", "detection", "anp"]
    for f in (f"{name}.png" for name in figures):
        assert (results / "figures" / f).stat().st_size > 1000, f
    for name in NOTEBOOKS:
        nb = nbformat.read(results / "notebooks" / f"{name}.ipynb", as_version=4)
        assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert not list(results.rglob("*.tmp*")) and not list(data.rglob("*.tmp*"))


def test_sweep_csv_follows_the_contract(demo_run):
    _, results = demo_run
    sweep = pd.read_csv(results / "sweep.csv")
    assert list(sweep.columns) == [
        "pruned",
        "fraction",
        "channel",
        "mean_activation",
        "clean_accuracy",
        "attack_success_rate",
    ]
    assert sweep["pruned"].tolist() == list(range(61))
    assert pd.isna(sweep.loc[0, "channel"]) and sorted(sweep["channel"][1:].astype(int)) == list(range(60))
    assert np.all(np.diff(sweep["mean_activation"][1:]) >= 0), "channels pruned in increasing order of activation"
    assert sweep["clean_accuracy"].between(0, 100).all() and sweep["attack_success_rate"].between(0, 100).all()
    np.testing.assert_allclose(sweep["fraction"], sweep["pruned"] / 60)


def test_bprime_models_match_their_thresholds(demo_run):
    _, results = demo_run
    sweep = pd.read_csv(results / "sweep.csv")
    chosen = pd.read_csv(results / "thresholds.csv")
    base = sweep.loc[0, "clean_accuracy"]
    for row in chosen.itertuples():
        path = results / "models" / f"bprime_{row.threshold:g}.h5"
        if pd.isna(row.channels_pruned):
            assert not path.exists()
            assert (base - sweep["clean_accuracy"] < row.threshold - 1e-9).all()
            continue
        k = int(row.channels_pruned)
        assert base - sweep.loc[k, "clean_accuracy"] >= row.threshold - 1e-9
        assert (base - sweep.loc[: k - 1, "clean_accuracy"] < row.threshold - 1e-9).all(), "the first such step"
        model = keras.models.load_model(path, compile=False)
        kernel = model.get_layer("conv_3").get_weights()[0]
        pruned = sweep.loc[1:k, "channel"].astype(int).tolist()
        assert np.all(kernel[..., pruned] == 0) and np.count_nonzero(np.abs(kernel).sum(axis=(0, 1, 2)) == 0) >= k


def test_goodnet_and_fine_pruning_csv_follow_the_contract(demo_run):
    """Each step writes its own rows: B, B' and G in goodnet.csv; FT, GFT, FP and GFP in fine_pruning.csv."""
    _, results = demo_run
    columns = ["model", "threshold", "channels_pruned", "clean_accuracy", "attack_success_rate"]
    goodnet, fine = pd.read_csv(results / "goodnet.csv"), pd.read_csv(results / "fine_pruning.csv")
    assert list(goodnet.columns) == columns == list(fine.columns)
    chosen = pd.read_csv(results / "thresholds.csv").dropna(subset=["channels_pruned"])
    assert goodnet["model"].tolist() == ["B"] + [m for t in chosen["threshold"] for m in (f"B'_{t:g}%", f"G_{t:g}%")]
    expected = ["FT", "GFT"] + [m for t in chosen["threshold"] for m in (f"FP_{t:g}%", f"GFP_{t:g}%")]
    assert fine["model"].tolist() == expected
    assert "| model" in (results / "goodnet.md").read_text()
    both = (results / "fine_pruning.md").read_text()
    assert all(f"| {m} " in both for m in [*goodnet["model"], *fine["model"]]), "fine_pruning.md shows both steps"


def test_fine_pruned_models_keep_their_channels_pruned(demo_run):
    _, results = demo_run
    sweep = pd.read_csv(results / "sweep.csv")
    history = pd.read_csv(results / "fine_tuning_history.csv")
    for row in pd.read_csv(results / "thresholds.csv").dropna(subset=["channels_pruned"]).itertuples():
        k = int(row.channels_pruned)
        kernel, bias = (
            keras.models.load_model(results / "models" / f"fp_{row.threshold:g}.h5", compile=False)
            .get_layer("conv_3")
            .get_weights()
        )
        pruned = sweep.loc[1:k, "channel"].astype(int).tolist()
        assert np.all(kernel[..., pruned] == 0) and np.all(bias[pruned] == 0)
        kept = history[(history["model"] == f"FP_{row.threshold:g}%") & history["kept"]]
        assert len(kept) == 1 and kept["epoch"].item() >= 1  # one epoch kept, and fine-tuning happened


def test_saved_goodnets_answer_as_the_table_says(demo_run, monkeypatch):
    """Each G saved as one model reproduces its goodnet.csv row on the test sets."""
    from lib.data.datasets import load_image_set
    from lib.defense.goodnet_model import goodnet_predict_classes, load_goodnet
    from lib.defense.metrics import accuracy

    data, results = demo_run
    table = pd.concat([pd.read_csv(results / "goodnet.csv"), pd.read_csv(results / "fine_pruning.csv")]).set_index(
        "model"
    )
    clean, triggered = load_image_set(data / "cl" / "test.h5"), load_image_set(data / "bd" / "bd_test.h5")
    files = {f"G_{t:g}%": f"bprime_{t:g}" for t in table["threshold"].dropna().unique()}
    files.update({f"GFP_{t:g}%": f"fp_{t:g}" for t in table["threshold"].dropna().unique()} | {"GFT": "ft"})
    for row, stem in files.items():
        g = load_goodnet(results / "models" / f"goodnet_{stem}.keras")
        assert accuracy(goodnet_predict_classes(g, clean.images), clean.labels) == pytest.approx(
            table.loc[row, "clean_accuracy"]
        ), row
        asr = accuracy(goodnet_predict_classes(g, triggered.images), triggered.labels)
        assert asr == pytest.approx(table.loc[row, "attack_success_rate"]), row


def test_eval_command_runs_a_saved_goodnet_on_the_test_set(demo_run):
    """`python -m lib.eval --model <G> bd_test.h5`: one line per image, N ("poisoned") where B and B' disagree."""
    from lib.data.datasets import load_image_set

    data, results = demo_run
    threshold = pd.read_csv(results / "thresholds.csv").dropna(subset=["channels_pruned"])["threshold"].iloc[0]
    model = results / "models" / f"goodnet_bprime_{threshold:g}.keras"
    proc = subprocess.run(
        [sys.executable, "-m", "lib.eval", "--model", str(model), str(data / "bd" / "bd_test.h5")],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    triggered = load_image_set(data / "bd" / "bd_test.h5")
    assert len(lines) == len(triggered) and lines[0][0].endswith("bd_test.h5[0]")
    classes = np.array([int(c) for _, c, _ in lines])
    n = keras.models.load_model(data / "bd_net.h5", compile=False).output_shape[-1]
    assert all(status == ("poisoned" if int(c) == n else "clean") for _, c, status in lines)
    table = pd.read_csv(results / "goodnet.csv").set_index("model")
    assert 100 * np.mean(classes == triggered.labels) == pytest.approx(
        table.loc[f"G_{threshold:g}%", "attack_success_rate"]
    )


def test_triggered_sets_hold_only_non_target_images(demo_run):
    data, _ = demo_run
    with h5py.File(data / "bd" / "bd_test.h5") as f:
        assert np.all(f["label"][()] == 0) and np.all(f["orig_label"][()] != 0)


def test_a_failing_notebook_is_kept_apart_and_named(tmp_path, isolated_roots):
    out = tmp_path / "02.ipynb"
    proc = subprocess.run(
        [*RUNNER, str(PROJECT_ROOT / "notebooks" / "02_activations.ipynb"), str(out), "-p", "dataset=csaw-lab3"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 1
    assert not out.exists(), "a failed run must not look like a good one"
    assert out.with_suffix(".failed.ipynb").is_file()
    assert "InputError" in proc.stderr and "make data DATASET=csaw-lab3" in proc.stderr


def test_unknown_parameters_are_refused(tmp_path):
    rc = run_notebook(
        [str(PROJECT_ROOT / "notebooks" / "02_activations.ipynb"), str(tmp_path / "x.ipynb"), "-p", "datset=demo"]
    )
    assert rc == 2 and not (tmp_path / "x.ipynb").exists()


def test_sweep_is_deterministic(demo_run, isolated_roots):
    """The same command gives the same numbers: a second sweep and fine-pruning write byte-identical CSVs."""
    data, results = demo_run
    new_data, new_results = isolated_roots

    shutil.copytree(data, new_data / "demo")
    (new_results / "demo").mkdir(parents=True)
    shutil.copy(results / "activations.csv", new_results / "demo" / "activations.csv")
    for step in ("activations", "pruning_sweep", "goodnet"):
        run_notebook_cells(step)
    stale = [
        new_results / "demo" / "models" / name for name in ("fp_99.h5", "goodnet_fp_99.keras")
    ]  # a threshold not reached now
    for path in stale:
        path.write_bytes(b"an earlier run's model")
    run_notebook_cells("fine_pruning", epochs=3)
    assert not any(path.exists() for path in stale)
    written = ["activations.csv", "sweep.csv", "thresholds.csv", "goodnet.csv", "goodnet.md", "fine_pruning.csv"]
    for f in [*written, "fine_tuning_history.csv", "trained_on.json"]:
        assert (new_results / "demo" / f).read_bytes() == (results / f).read_bytes(), f


def test_an_interrupted_run_leaves_nothing_and_reruns_cleanly(demo_run, tmp_path, monkeypatch):
    """Killing a notebook run midway (as Ctrl-C on `make all` does) leaves no output; the rerun succeeds."""
    import signal
    import time

    data, results = demo_run
    monkeypatch.setenv("BACKDOOR_DATA_ROOT", str(data.parent))
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(results.parent))
    out = tmp_path / "nb" / "02_activations.ipynb"
    notebook = str(PROJECT_ROOT / "notebooks" / "02_activations.ipynb")
    cmd = [*RUNNER, notebook, str(out), "-p", "dataset=demo", "--force"]  # current results: only a forced run writes
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(out.parent.glob(".*.tmp*")) and time.time() < deadline:  # wait until it is writing
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not out.exists() and not list(out.parent.glob(".*.tmp*"))
    assert subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True).returncode == 0
    assert out.is_file()


def _copy_of_results(results: Path, to: Path) -> Path:
    """The demo run's results up to its activations, in a folder of their own (the sweep writes there)."""
    shutil.copytree(results, to, ignore=shutil.ignore_patterns("notebooks", "models"))
    return to


def test_the_pruning_order_cell_drives_the_sweep(demo_run, tmp_path):
    """A reader replaces the code of notebook 03's ``pruning-order`` cell with another order (a random one) and runs
    the notebook: the sweep, its thresholds and the B' models follow that order, with no edit to ``lib/``."""
    data, results = demo_run
    notebook = json.loads((PROJECT_ROOT / "notebooks" / "03_pruning_sweep.ipynb").read_text())
    [cell] = [c for c in notebook["cells"] if "pruning-order" in c["metadata"].get("tags", [])]
    cell["source"] = [
        "ranking = read_activation_table(scenario)\n",
        "order = np.random.default_rng(7).permutation(len(ranking))\n",
    ]
    edited = tmp_path / "03_pruning_sweep.ipynb"
    edited.write_text(json.dumps(notebook))
    mine = _copy_of_results(results, tmp_path / "results")
    rc = run_notebook([str(edited), "-p", "dataset=demo", "-p", f"data_dir={data}", "-p", f"results_dir={mine}"])
    assert rc == 0
    random_order = np.random.default_rng(7).permutation(60)
    activation_order = pd.read_csv(results / "activations.csv")["channel"].to_numpy()
    assert not np.array_equal(random_order, activation_order)
    swept = pd.read_csv(mine / "sweep.csv")["channel"].dropna().astype(int).to_numpy()
    np.testing.assert_array_equal(swept, random_order)
    for row in pd.read_csv(mine / "thresholds.csv", dtype={"pruned_channels": str}).dropna().itertuples():
        np.testing.assert_array_equal(np.array(row.pruned_channels.split(), int), random_order[: row.channels_pruned])
        bprime = load_model_file(mine / row.model)
        zeroed = ~bprime.get_layer("conv_3").get_weights()[0].any(axis=(0, 1, 2))
        np.testing.assert_array_equal(np.flatnonzero(zeroed), np.sort(random_order[: row.channels_pruned]))


def test_the_plain_keras_path_gives_the_same_sweep(demo_run, tmp_path, monkeypatch):
    """Notebook 03's ``sweep_strategy`` switches the engine to the plain Keras path: the same sweep, byte for byte."""
    data, results = demo_run
    monkeypatch.setenv("BACKDOOR_DATA_ROOT", str(data.parent))
    mine = _copy_of_results(results, tmp_path / "results")
    variables = run_notebook_cells("pruning_sweep", results_dir=str(mine), sweep_strategy="keras_tail")
    assert variables["engine"].strategy.value == "keras_tail"
    for name in ("sweep.csv", "thresholds.csv"):
        assert (mine / name).read_bytes() == (results / name).read_bytes(), name


@pytest.mark.parametrize(
    "step, allowed, layers",
    [
        ("clp", ["CLP_u3", "CLP_2%", "CLP_4%", "CLP_10%"], ("conv_1", "conv_2", "conv_3", "conv_4")),
        ("anp", ["ANP_2%", "ANP_4%", "ANP_10%"], ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2")),
    ],
)
def test_every_repaired_model_of_another_defense_gives_its_row_with_plain_keras(demo_run, step, allowed, layers):
    """Each saved CLP or ANP model, loaded with plain Keras, predicts the test sets as its row of clp.csv or anp.csv
    says, with at least as many neurons zeroed as the row counts."""
    data, results = demo_run
    table = read_csv(results / f"{step}.csv").set_index("model")
    clean, triggered = (h5py.File(data / f, "r") for f in ("cl/test.h5", "bd/bd_test.h5"))
    x_clean, y_clean = np.transpose(clean["data"][()], (0, 2, 3, 1)), clean["label"][()]
    x_bd, y_bd = np.transpose(triggered["data"][()], (0, 2, 3, 1)), triggered["label"][()]
    names = [m for m in table.index if not m.startswith("G")]
    assert names and names == [n for n in allowed if n in names], f"{step}: rows in the order of {allowed}"
    for name in names:
        model = keras.models.load_model(results / "models" / f"{parse_row(name).file_stem}.h5", compile=False)
        accuracy = 100 * np.mean(np.argmax(model.predict(x_clean, verbose=0), axis=1) == y_clean)
        asr = 100 * np.mean(np.argmax(model.predict(x_bd, verbose=0), axis=1) == y_bd)
        assert accuracy == pytest.approx(table.loc[name, "clean_accuracy"], abs=1e-9), name
        assert asr == pytest.approx(table.loc[name, "attack_success_rate"], abs=1e-9), name
        zeroed = sum(
            int(np.all(model.get_layer(c).kernel.numpy()[..., k] == 0))
            for c in layers
            for k in range(model.get_layer(c).kernel.shape[-1])
        )
        assert zeroed >= table.loc[name, "channels_pruned"], name


@pytest.mark.parametrize(
    "step, chosen_files", [("clp", ["clp_sweep.csv"]), ("anp", ["anp_masks.csv", "anp_sweep.csv"])]
)
def test_clp_and_anp_choose_with_validation_data_only(demo_run, tmp_path, step, chosen_files):
    """Other test images change CLP's and ANP's test rows, never what they chose: ANP's masks, each scan, each u or
    mask threshold, and each pruned neuron."""
    data, results = demo_run
    other = tmp_path / "data"
    shutil.copytree(data, other)
    for name in ("cl/test.h5", "bd/bd_test.h5"):
        with h5py.File(other / name, "r+") as f:
            f["data"][...] = 255.0 - f["data"][()]  # other images, same schema and labels
    extra = SMALL_ANP if step == "anp" else {}  # as demo_run ran it
    variables = run_notebook_cells(step, data_dir=str(other), results_dir=str(tmp_path / "results"), **extra)
    for name in chosen_files:
        assert (tmp_path / "results" / name).read_bytes() == (results / name).read_bytes(), name
    ours, theirs = pd.read_csv(tmp_path / "results" / f"{step}.csv"), pd.read_csv(results / f"{step}.csv")
    assert ours[["model", "threshold", "channels_pruned"]].equals(theirs[["model", "threshold", "channels_pruned"]])
    assert not ours["clean_accuracy"].equals(theirs["clean_accuracy"]), "the test sets did change"
    for row, model in variables["repaired"].items():
        saved = keras.models.load_model(results / "models" / f"{row.file_stem}.h5", compile=False)
        for a, b in zip(model.get_weights(), saved.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def _test_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (NHWC) and labels of a CSAW HDF5 set, read with h5py alone."""
    with h5py.File(path, "r") as f:
        return np.transpose(f["data"][()], (0, 2, 3, 1)), f["label"][()]


def _flags(model: keras.Model, images: np.ndarray) -> np.ndarray:
    scores = model.predict(images, verbose=0)
    return np.argmax(scores, axis=1) == scores.shape[1] - 1


def test_every_strip_goodnet_flags_as_its_detection_row_says(demo_run):
    """Each saved G+STRIP, loaded with plain Keras, flags the clean and triggered test images as detection.csv says;
    so does each G on its own, and STRIP's rates are those of its entropies in strip_scores.csv."""
    data, results = demo_run
    table = read_csv(results / "detection.csv").set_index("detector")
    assert list(table.index[:1]) == ["STRIP"] and {"G_2%", "G_2%+STRIP"} <= set(table.index)
    x_clean, _ = _test_set(data / "cl/test.h5")
    x_bd, _ = _test_set(data / "bd/bd_test.h5")
    scores = read_csv(results / "strip_scores.csv")
    threshold = table.loc["STRIP", "entropy_threshold"]
    test = scores[scores["split"] == "test"]
    strip_clean = test.loc[test["set"] == "clean", "entropy"].to_numpy() < threshold
    strip_bd = test.loc[test["set"] != "clean", "entropy"].to_numpy() < threshold
    assert table.loc["STRIP", "FRR"] == pytest.approx(100 * strip_clean.mean(), abs=1e-9)
    assert table.loc["STRIP", "FAR"] == pytest.approx(100 * (1 - strip_bd.mean()), abs=1e-9)
    valid = scores[scores["split"] == "valid"]["entropy"].to_numpy()
    assert np.mean(valid < threshold) <= 0.01, "at most the stated 1 % of calibration images flagged"
    for name in (n for n in table.index if n.startswith("G") and not n.endswith("+STRIP")):
        stem = f"goodnet_bprime_{name.removeprefix('G_').removesuffix('%')}"
        goodnet = keras.models.load_model(results / "models" / f"{stem}.keras", compile=False)
        combined = keras.models.load_model(results / "models" / f"{stem}_strip.keras", compile=False)
        g_clean, g_bd = _flags(goodnet, x_clean), _flags(goodnet, x_bd)
        c_clean, c_bd = _flags(combined, x_clean), _flags(combined, x_bd)
        np.testing.assert_array_equal(c_clean, g_clean | strip_clean)
        np.testing.assert_array_equal(c_bd, g_bd | strip_bd)
        for row, (clean, bd) in ((name, (g_clean, g_bd)), (f"{name}+STRIP", (c_clean, c_bd))):
            assert table.loc[row, "FRR"] == pytest.approx(100 * clean.mean(), abs=1e-9), row
            assert table.loc[row, "FAR"] == pytest.approx(100 * (1 - bd.mean()), abs=1e-9), row


def test_strip_chooses_with_validation_data_only(demo_run, tmp_path):
    """Other test images change STRIP's test rates, never what it chose: the overlays, the calibration entropies
    and the threshold."""
    data, results = demo_run
    other, mine = tmp_path / "data", tmp_path / "results"
    shutil.copytree(data, other)
    shutil.copytree(results, mine, ignore=shutil.ignore_patterns("notebooks"))
    for name in ("cl/test.h5", "bd/bd_test.h5"):
        with h5py.File(other / name, "r+") as f:
            f["data"][...] = 255.0 - f["data"][()]  # other images, same schema and labels
    for name, extra in (("04_goodnet", []), ("07_strip", ["-p", "n_overlays=20"])):  # G reads the test sets too
        notebook = str(PROJECT_ROOT / "notebooks" / f"{name}.ipynb")
        params = ["-p", "dataset=demo", "-p", f"data_dir={other}", "-p", f"results_dir={mine}", *extra]
        assert run_notebook([notebook, *params]) == 0
    ours, theirs = read_csv(mine / "strip_scores.csv"), read_csv(results / "strip_scores.csv")
    pd.testing.assert_frame_equal(ours[ours["split"] == "valid"], theirs[theirs["split"] == "valid"])
    assert not ours["entropy"].equals(theirs["entropy"]), "the test sets did change"
    ours, theirs = read_csv(mine / "detection.csv"), read_csv(results / "detection.csv")
    assert ours["entropy_threshold"].equals(theirs["entropy_threshold"])
    assert not ours["FRR"].equals(theirs["FRR"]) or not ours["FAR"].equals(theirs["FAR"])
    for path in (results / "models").glob("*_strip.keras"):
        a, b = (keras.models.load_model(p, compile=False) for p in (path, mine / "models" / path.name))
        for layer in ("strip_blend", "strip_decision"):
            assert a.get_layer(layer).get_config() == b.get_layer(layer).get_config()
        overlays = [m.get_layer("strip_blend").get_weights()[0] for m in (a, b)]
        np.testing.assert_array_equal(*overlays)
