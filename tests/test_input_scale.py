"""Every network is fed pixels as its publisher's evaluator fed them, and B is checked against the published figures.

The real weights (``../shared/csaw-models``) with stand-in image sets whose labels are B's own answers under the
publisher's convention (competition: x/255, lab 3: raw 0-255): the right convention gives 100 %, everywhere a
network meets images (the data step's reference check, the sweep's row 0, the saved GoodNet, the eval command).
The Drive download is replaced at its boundary; the repository's checksums are not touched.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_notebook_cells, smooth_images
from PIL import Image

from lib.core import paths
from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT, SHARED_CSAW_MODELS
from lib.data import catalog
from lib.data.catalog import InputScale
from lib.data.datasets import save_image_set
from lib.data.input_scale import input_scale_of, with_input_scale
from lib.defense.goodnet_model import goodnet_predict_classes, load_goodnet
from lib.network.models import load_model_file, predict_classes
from lib.runs.workspace import Workspace, workspace
from lib.steps.data import prepare_data

SUNGLASSES = SHARED_CSAW_MODELS / "sunglasses_bd_weights.h5"
LAB3 = SHARED_CSAW_MODELS / "lab3_bd_weights.h5"
pytestmark = [
    pytest.mark.skipif(not (SUNGLASSES.is_file() and LAB3.is_file()), reason="the real CSAW weights are not here"),
    pytest.mark.slow,
]
DIVIDE = np.float32(255)  # the publisher's eval.py: x / 255, in the images' float32


class StandInDrive:
    """Writes a Drive folder whose labels are B's answers under ``scale``.

    Sets whose role starts with ``target`` are labelled 0, a single attack target; the lab-3 stand-in's
    triggered sets get B's answers too, so that its published ASR of 100 % is what B scores on them.
    """

    def __init__(self, weights: Path, scale: InputScale, layout: dict[str, str]) -> None:
        self.weights, self.scale, self.layout = weights, scale, layout

    def fetch_url(self, url: str, dest: Path) -> None:
        raise AssertionError(f"the weights come from the mirror, not {url}")

    def fetch_drive_folder(self, folder_id: str, dest_dir: Path) -> None:
        badnet = load_model_file(self.weights)
        for seed, (role, rel) in enumerate(self.layout.items()):
            images = smooth_images(150, seed)
            seen = images / DIVIDE if self.scale is InputScale.DIVIDED_BY_255 else images
            labels = np.zeros(150, np.int64) if role.startswith("target") else predict_classes(badnet, seen)
            save_image_set(dest_dir / rel, images, labels)


COMPETITION = {
    "valid": "clean_validation_data.h5",
    "test": "clean_test_data.h5",
    "target": "sunglasses_poisoned_data.h5",
}
LAB = {"valid": "cl/valid.h5", "test": "cl/test.h5", "triggered": "bd/bd_valid.h5", "triggered test": "bd/bd_test.h5"}


@pytest.fixture
def roots(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BACKDOOR_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("BACKDOOR_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setattr(paths, "CHECKSUMS", tmp_path / "checksums")  # lock files recorded there, not in the repo
    return tmp_path


def prepare(monkeypatch, dataset: str, drive: StandInDrive) -> Workspace:
    monkeypatch.setattr("lib.data.download.NetworkDownloader", lambda progress=True: drive)
    ws = workspace(dataset)
    with pytest.warns(UserWarning, match="clean validation images: 150 here, 11547 published"):
        prepare_data(ws, progress=False)
    return ws


def test_the_competition_badnet_sees_x_over_255_everywhere(roots, monkeypatch, tmp_path):
    ws = prepare(monkeypatch, "csaw-sunglasses", StandInDrive(SUNGLASSES, InputScale.DIVIDED_BY_255, COMPETITION))
    reference = pd.read_csv(ws.results.reference_check_csv).set_index("figure")
    assert reference.loc["clean validation accuracy (%)", "measured"] == 100.0
    assert reference.loc["clean validation accuracy (%)", "verdict"] == "ok"
    assert input_scale_of(load_model_file(ws.badnet_path)) is InputScale.DIVIDED_BY_255, "bd_net.h5 carries it"

    for step in ("activations", "pruning_sweep", "goodnet"):
        scenario = run_notebook_cells(step, dataset="csaw-sunglasses")["scenario"]
    assert pd.read_csv(ws.results.sweep_csv)["clean_accuracy"].iloc[0] == 100.0  # row 0: B on validation data
    goodnet = pd.read_csv(ws.results.goodnet_csv).set_index("model")
    assert goodnet.loc["B", "clean_accuracy"] == 100.0
    clean_test = scenario.load_clean("test")
    for row in goodnet.index[goodnet.index.str.startswith("G_")]:
        g = load_goodnet(ws.results.goodnet_model(ws.results.bprime(goodnet.loc[row, "threshold"])))
        answers = goodnet_predict_classes(g, clean_test.images)  # raw 0-255 in, the convention inside
        kept = answers != scenario.n_classes
        np.testing.assert_array_equal(answers[kept], clean_test.labels[kept])
        assert 100 * kept.mean() == pytest.approx(goodnet.loc[row, "clean_accuracy"])

    # The eval command on PNGs cut from the stand-in: B's classes, no flag needed for the saved model.
    pngs = []
    for i in range(5):
        pngs.append(tmp_path / f"face{i}.png")
        Image.fromarray(clean_test.images[i].astype(np.uint8)).save(pngs[-1])
    for model, extra in ((ws.badnet_path, []), (SUNGLASSES, ["--input-scale", "x/255"])):
        done = subprocess.run(
            [sys.executable, "-m", "lib.eval", "--model", str(model), *extra, *map(str, pngs)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert [int(line.split("\t")[1]) for line in done.stdout.splitlines()] == clean_test.labels[:5].tolist()
    bare = subprocess.run(
        [sys.executable, "-m", "lib.eval", "--model", str(SUNGLASSES), str(pngs[0])],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert bare.returncode == 0 and "says nothing of its input scale: feeding raw 0-255 pixels" in bare.stderr


def test_a_wrong_input_scale_stops_the_data_step_with_the_likely_causes(roots, monkeypatch):
    wrong = dataclasses.replace(catalog.DATASETS["csaw-sunglasses"], input_scale=InputScale.RAW)
    monkeypatch.setitem(catalog.DATASETS, "csaw-sunglasses", wrong)
    with pytest.raises(InputError, match=r"B does not behave as published .*Likely causes: the input scale"):
        prepare(monkeypatch, "csaw-sunglasses", StandInDrive(SUNGLASSES, InputScale.DIVIDED_BY_255, COMPETITION))
    ws = workspace("csaw-sunglasses")
    verdicts = pd.read_csv(ws.results.reference_check_csv)["verdict"]
    assert verdicts.iloc[0] == "FAILED", "the comparison is written before the run stops"


def test_the_check_can_be_overridden_knowingly(roots, monkeypatch):
    wrong = dataclasses.replace(catalog.DATASETS["csaw-sunglasses"], input_scale=InputScale.RAW)
    monkeypatch.setitem(catalog.DATASETS, "csaw-sunglasses", wrong)
    monkeypatch.setattr(
        "lib.data.download.NetworkDownloader",
        lambda progress=True: StandInDrive(SUNGLASSES, InputScale.DIVIDED_BY_255, COMPETITION),
    )
    with pytest.warns(UserWarning, match="the reference check is overridden"):
        prepare_data(workspace("csaw-sunglasses"), check_reference=False, progress=False)


def test_the_lab3_badnet_still_sees_raw_pixels(roots, monkeypatch):
    with pytest.warns(UserWarning, match="do not look like the attacker's target"):  # B's answers, not one target
        ws = prepare(monkeypatch, "csaw-lab3", StandInDrive(LAB3, InputScale.RAW, LAB))
    reference = pd.read_csv(ws.results.reference_check_csv).set_index("figure")
    assert reference.loc["clean validation accuracy (%)", "measured"] == 100.0
    assert input_scale_of(load_model_file(ws.badnet_path)) is None, "raw: no scale layer"


def test_a_model_that_already_divides_is_not_divided_twice():
    model = with_input_scale(load_model_file(SUNGLASSES), InputScale.DIVIDED_BY_255)
    assert with_input_scale(model, InputScale.DIVIDED_BY_255) is model
    with pytest.raises(InputError, match="divides its input by 255 itself"):
        with_input_scale(model, InputScale.RAW)
    images = smooth_images(64, 9)
    np.testing.assert_array_equal(
        model.predict(images, batch_size=32, verbose=0),
        load_model_file(SUNGLASSES).predict(images / DIVIDE, batch_size=32, verbose=0),
        err_msg="the built-in scale divides exactly as eval.py's x / 255 does",
    )
