"""G as one Keras file (lib.goodnet_model) and the eval command (lib.eval) answer what goodnet_classes answers."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import smooth_images
from keras import layers
from PIL import Image

from lib.architecture import build_deepid
from lib.datasets import save_image_set
from lib.errors import InputError
from lib.eval import classify, main
from lib.goodnet import goodnet_classes
from lib.goodnet_model import (
    GoodNetDecision,
    build_goodnet,
    goodnet_predict_classes,
    is_goodnet,
    load_goodnet,
    save_goodnet,
)
from lib.models import load_model_file, predict_classes, save_model
from lib.paths import PROJECT_ROOT
from lib.pruning import prune_channels

N = 5  # classes of the tiny BadNet; G's "poisoned" answer


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    """B (random DeepID, 5 classes), B' (10 conv_3 channels pruned), G, saved files, and test pixels."""
    keras.utils.set_random_seed(2)
    badnet = build_deepid(num_classes=N)
    repaired = prune_channels(badnet, "conv_3", range(10))
    goodnet = build_goodnet(badnet, repaired)
    folder = tmp_path_factory.mktemp("models")
    save_goodnet(goodnet, folder / "g.keras")
    save_model(badnet, folder / "b.h5")
    return {
        "B": badnet,
        "B'": repaired,
        "G": goodnet,
        "g_path": folder / "g.keras",
        "b_path": folder / "b.h5",
        "x": smooth_images(24, seed=1),
    }


def reference(nets: dict, images: np.ndarray, batch_size: int) -> np.ndarray:
    """G's classes the way the notebooks compute them: two separate predictions, then goodnet_classes."""
    b = predict_classes(nets["B"], images, batch_size)
    bprime = predict_classes(nets["B'"], images, batch_size)
    return goodnet_classes(b, bprime, N)


def write_png(path: Path, pixels: np.ndarray, mode: str = "RGB") -> Path:
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(path)
    return path


def pixels_of(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """What the network should see for an image file: Pillow's decoded RGB pixels (resized bilinear if asked)."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    if size is not None:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32)


# --- the GoodNet model -----------------------------------------------------------------------------


def test_test_images_make_b_and_bprime_both_agree_and_disagree(nets):
    ref = reference(nets, nets["x"], 8)
    assert 0 < np.sum(ref == N) < len(ref), "the fixture must exercise both of G's branches"
    assert len(set(ref[ref != N].tolist())) > 1, "and more than one clean class"


@pytest.mark.parametrize("batch_size", [1, 5, 1024])
def test_goodnet_classes_equal_goodnet_classes_of_b_and_bprime(nets, batch_size):
    got = goodnet_predict_classes(nets["G"], nets["x"], batch_size)
    np.testing.assert_array_equal(got, reference(nets, nets["x"], batch_size))


def test_goodnet_scores_are_b_scores_or_the_poisoned_one_hot(nets):
    scores = nets["G"].predict(nets["x"], batch_size=8, verbose=0)
    b_scores = nets["B"].predict(nets["x"], batch_size=8, verbose=0)
    flagged = reference(nets, nets["x"], 8) == N
    assert scores.shape == (len(nets["x"]), N + 1)
    np.testing.assert_array_equal(scores[~flagged, :N], b_scores[~flagged])
    np.testing.assert_array_equal(scores[~flagged, N], 0.0)
    np.testing.assert_array_equal(scores[flagged], np.eye(N + 1)[[N] * int(flagged.sum())])


def test_saved_goodnet_loads_back_as_the_same_network(nets):
    loaded = load_goodnet(nets["g_path"])
    assert is_goodnet(loaded)
    assert [layer.name for layer in loaded.layers] == ["input", "badnet", "repaired", "goodnet_decision"]
    np.testing.assert_array_equal(
        loaded.predict(nets["x"], batch_size=8, verbose=0), nets["G"].predict(nets["x"], batch_size=8, verbose=0)
    )
    np.testing.assert_array_equal(goodnet_predict_classes(loaded, nets["x"], 8), reference(nets, nets["x"], 8))


def test_goodnet_of_a_model_with_itself_is_that_model(nets):
    goodnet = build_goodnet(nets["B"], nets["B"])
    np.testing.assert_array_equal(
        goodnet_predict_classes(goodnet, nets["x"], 8), predict_classes(nets["B"], nets["x"], 8)
    )


def test_goodnet_is_a_copy_that_later_changes_to_b_do_not_reach(nets):
    badnet = keras.models.clone_model(nets["B"])
    badnet.set_weights(nets["B"].get_weights())
    goodnet = build_goodnet(badnet, nets["B'"])
    before = goodnet.predict(nets["x"][:4], verbose=0)
    badnet.get_layer("output").bias.assign(np.full(N, 100.0, np.float32))
    np.testing.assert_array_equal(goodnet.predict(nets["x"][:4], verbose=0), before)


def test_exact_ties_break_like_numpy_argmax():
    uniform = build_deepid(num_classes=N)  # zero output layer: every class scores exactly 1/N
    out = uniform.get_layer("output")
    out.set_weights([np.zeros_like(w) for w in out.get_weights()])
    images = smooth_images(3, seed=4)
    got = goodnet_predict_classes(build_goodnet(uniform, uniform), images, 4)
    np.testing.assert_array_equal(
        got, goodnet_classes(predict_classes(uniform, images, 4), predict_classes(uniform, images, 4), N)
    )
    np.testing.assert_array_equal(got, 0)


def test_build_goodnet_refuses_networks_that_do_not_match(nets):
    with pytest.raises(ValueError, match="5 classes but the repaired network 6"):
        build_goodnet(nets["B"], build_deepid(num_classes=6))
    with pytest.raises(ValueError, match="input"):
        build_goodnet(nets["B"], build_deepid(num_classes=N, input_shape=(28, 24, 3)))


def test_load_goodnet_refuses_a_plain_model_and_a_non_model(nets, tmp_path):
    with pytest.raises(InputError, match="not a GoodNet") as info:
        load_goodnet(nets["b_path"])
    assert str(nets["b_path"]) in str(info.value) and "build_goodnet" in info.value.fix
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"junk\.keras"):
        load_goodnet(junk)


def test_a_goodnet_holding_a_lambda_layer_is_refused_when_built_and_when_loaded(tmp_path):
    x = keras.Input((14, 12, 3))
    scores = layers.Dense(N, activation="softmax")(layers.Flatten()(layers.Lambda(lambda t: t / 255.0)(x)))
    unsafe = keras.Model(x, scores, name="unsafe")
    with pytest.raises(ValueError, match="Lambda"):
        build_goodnet(unsafe, unsafe)
    inp = keras.Input((14, 12, 3))  # the same thing assembled by hand, as a hostile file would be
    forged = keras.Model(inp, GoodNetDecision()([unsafe(inp), unsafe(inp)]))
    save_model(forged, tmp_path / "forged.keras")
    with pytest.raises(InputError, match="Lambda") as info:
        load_goodnet(tmp_path / "forged.keras")
    assert "forged.keras" in str(info.value)


def test_save_goodnet_wants_a_goodnet_and_the_keras_format(nets, tmp_path):
    with pytest.raises(InputError, match=r"\.keras"):
        save_goodnet(nets["G"], tmp_path / "g.h5")
    with pytest.raises(ValueError, match="not a GoodNet"):
        save_goodnet(nets["B"], tmp_path / "b.keras")
    assert not list(tmp_path.iterdir())


# --- the eval command ------------------------------------------------------------------------------


@pytest.fixture()
def inputs(nets, tmp_path) -> dict:
    """Three PNGs, one JPEG and an HDF5 set of six, with the pixels the network must see, in order."""
    x, png_rows = nets["x"], [0, 6, 22]  # with seed 2: a clean class 0, a flagged image, a clean class 1
    pngs = [write_png(tmp_path / f"face{i}.png", x[i]) for i in png_rows]
    jpeg = write_png(tmp_path / "face.jpg", x[3])
    h5 = save_image_set(tmp_path / "set.h5", x[8:14], np.zeros(6))
    files = [*pngs, jpeg, h5]
    pixels = np.concatenate([x[png_rows], pixels_of(jpeg)[None], x[8:14]])
    names = [str(p) for p in [*pngs, jpeg]] + [f"{h5}[{k}]" for k in range(6)]
    return {"files": files, "pixels": pixels, "names": names, "h5": h5}


def test_classify_answers_goodnet_classes_for_images_and_hdf5_sets(nets, inputs):
    rows = classify(nets["g_path"], inputs["files"], batch_size=4)  # batches straddle the files
    expected = reference(nets, inputs["pixels"], 4)
    assert [r.name for r in rows] == inputs["names"]
    np.testing.assert_array_equal([r.label for r in rows], expected)
    assert [r.poisoned for r in rows] == (expected == N).tolist()
    assert {"clean", "poisoned"} == {r.line().split("\t")[2] for r in rows}
    assert {r.label for r in rows} >= {0, 1, N}, "both of G's branches, and more than one clean class"


def test_classify_with_a_badnet_prints_its_classes_without_a_poisoned_column(nets, inputs):
    rows = classify(nets["b_path"], inputs["files"], batch_size=4)
    np.testing.assert_array_equal(
        [r.label for r in rows], predict_classes(load_model_file(nets["b_path"], num_classes=N), inputs["pixels"], 4)
    )
    assert all(r.poisoned is None and len(r.line().split("\t")) == 2 for r in rows)


def test_wrong_size_is_refused_unless_resize_is_asked(nets, tmp_path):
    big = write_png(tmp_path / "big.png", np.asarray(Image.fromarray(nets["x"][0].astype(np.uint8)).resize((100, 80))))
    with pytest.raises(InputError) as info:
        classify(nets["g_path"], [big])
    message = f"{info.value.problem}; {info.value.fix}"
    assert info.value.what == str(big)
    for phrase in ("100x80 (width x height)", "expects 47x55", "--resize", "bilinear"):
        assert phrase in message
    log = io.StringIO()
    rows = classify(nets["g_path"], [big], batch_size=4, resize=True, log=log)
    assert rows[0].label == reference(nets, pixels_of(big, (47, 55))[None], 4)[0]
    assert "resized from 100x80 to 47x55" in log.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_palette_and_alpha_images_are_classified_as_rgb(nets, tmp_path, mode):
    path = write_png(tmp_path / f"face_{mode}.png", nets["x"][5], mode)
    log = io.StringIO()
    rows = classify(nets["g_path"], [path], batch_size=4, log=log)
    assert rows[0].label == reference(nets, pixels_of(path)[None], 4)[0]
    assert f"converted from {mode} to RGB" in log.getvalue()


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_main_prints_one_tab_separated_line_per_image(nets, inputs, capsys):
    code, out, err = run_main(capsys, "--model", nets["g_path"], *inputs["files"], "--batch-size", 4)
    assert code == 0, err
    expected = reference(nets, inputs["pixels"], 4)
    assert out.splitlines() == [
        f"{n}\t{c}\t{'poisoned' if c == N else 'clean'}" for n, c in zip(inputs["names"], expected, strict=False)
    ]


def assert_one_error_line(code: int, out: str, err: str, *phrases: str) -> None:
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_bad_inputs_exit_2_with_one_error_line(nets, inputs, tmp_path, capsys):
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad_h5 = tmp_path / "bad.h5"
    bad_h5.write_bytes(inputs["h5"].read_bytes()[:600])
    big = write_png(tmp_path / "big.png", np.zeros((80, 100, 3)))
    g = nets["g_path"]
    assert_one_error_line(
        *run_main(capsys, "--model", g, inputs["files"][0], bad_png), f"error: {bad_png}: ", "not a readable image"
    )
    assert_one_error_line(*run_main(capsys, "--model", g, tmp_path / "missing.png"), "missing.png: file not found")
    assert_one_error_line(*run_main(capsys, "--model", g, bad_h5), f"error: {bad_h5}: ")
    assert_one_error_line(*run_main(capsys, "--model", g, big), "100x80", "--resize")
    assert_one_error_line(
        *run_main(capsys, "--model", tmp_path / "none.keras", big), "none.keras: model file not found", "--model"
    )
    assert_one_error_line(
        *run_main(capsys, "--model", inputs["files"][0], big), f"error: {inputs['files'][0]}: ", "--model"
    )
    assert_one_error_line(*run_main(capsys, "--model", inputs["h5"], big), f"error: {inputs['h5']}: ", "--model")


def test_help_documents_model_kinds_output_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for phrase in ("--model", "--resize", "--batch-size", "poisoned", "clean", "FILE[INDEX]", "Exit status", "2 "):
        assert phrase in out, phrase
    with pytest.raises(SystemExit) as info:
        main(["--model", "g.keras", "x.png", "--batch-size", "0"])
    assert info.value.code == 2


def test_the_command_line_entry_point_runs(nets, inputs):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lib.eval",
            "--model",
            str(nets["g_path"]),
            *map(str, inputs["files"]),
            "--batch-size",
            "4",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = reference(nets, inputs["pixels"], 4)
    assert [line.split("\t")[:2] for line in result.stdout.splitlines()] == [
        [n, str(c)] for n, c in zip(inputs["names"], expected, strict=False)
    ]
    assert "Traceback" not in result.stderr
