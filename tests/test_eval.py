"""G as one Keras file (lib.defense.goodnet_model) and ``python -m lib.eval`` answer what goodnet_classes answers."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import smooth_images
from keras import layers
from PIL import Image, ImageFile

from lib.core.errors import InputError
from lib.core.paths import PROJECT_ROOT
from lib.data.datasets import save_image_set
from lib.data.images import FORMATS_TEXT, MAX_SIDE, read_image
from lib.defense.goodnet import goodnet_classes
from lib.defense.goodnet_model import (
    GoodNetDecision,
    build_goodnet,
    goodnet_predict_classes,
    is_goodnet,
    load_goodnet,
    save_goodnet,
)
from lib.eval import classify, main
from lib.network.architecture import build_deepid
from lib.network.models import load_model_file, predict_classes, save_model
from lib.network.pruning import prune_channels

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


def write_png_by_hand(path: Path, width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> Path:
    """A valid PNG of black pixels at any size and depth Pillow cannot write: rows of zeros compress to a few KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row, packer = bytes(1 + (width * channels * bit_depth + 7) // 8), zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def write_rgb16_tiff(path: Path, width: int, height: int) -> Path:
    """A 16-bit-per-channel RGB TIFF (Pillow cannot write one): little-endian, one uncompressed strip of zeros."""
    data = bytes(width * height * 6)
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 122), (259, 3, 1, 1), (262, 3, 1, 2)]
    tags += [(273, 4, 1, 128), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + bytes(4)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + data)  # 8+114 = 122
    return path


def with_orientation(path: Path, stored: np.ndarray, orientation: int) -> Path:
    """A JPEG of ``stored`` pixels whose EXIF orientation tag (0x0112) says how to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored, dtype=np.uint8)).save(path, exif=exif, quality=95)
    return path


def file_with_bytes_name(folder: Path, name: bytes, content: bytes) -> Path:
    """A real file whose name is not valid UTF-8 (the path as Python sees it holds os.fsdecode's surrogates)."""
    raw = os.fsencode(folder) + b"/" + name
    try:
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        pytest.skip(f"this file system refuses the non-UTF-8 file name {name!r}: {exc}")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return Path(os.fsdecode(raw))


def png_bytes(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


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


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1"])
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
    for phrase in ("PNG, JPEG, BMP, TIFF or WebP", f"{MAX_SIDE}x{MAX_SIDE}", "frames", "8 bits", "EXIF", "\\xNN"):
        assert phrase in out, phrase  # the image rules, with the pixel limit the code applies
    with pytest.raises(SystemExit) as info:
        main(["--model", "g.keras", "x.png", "--batch-size", "0"])
    assert info.value.code == 2


@pytest.mark.slow
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


# --- reading images as a careful photo tool would -------------------------------------------------------


def test_images_are_read_by_content_in_every_allowed_format_whatever_their_name(nets, tmp_path):
    x = nets["x"]
    files = []
    for k, (fmt, options) in enumerate(
        [("PNG", {}), ("JPEG", {"quality": 95}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})]
    ):
        path = tmp_path / f"face{k}.{'jpg' if fmt == 'PNG' else 'png'}"  # a name that lies about the format
        Image.fromarray(x[k].astype(np.uint8)).save(path, fmt, **options)
        files.append(path)
    rows = classify(nets["g_path"], files, batch_size=4)
    pixels = np.stack([pixels_of(f) for f in files])
    np.testing.assert_array_equal([r.label for r in rows], reference(nets, pixels, 4))
    for path, expected in zip(files, pixels, strict=True):
        np.testing.assert_array_equal(read_image(path, (55, 47)), expected)


def test_other_formats_are_refused_by_content_before_any_plugin_reads_them(nets, tmp_path, monkeypatch, capsys):
    eps = tmp_path / "face.png"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 47 55\n0 0 moveto 47 55 lineto stroke\nshowpage\n")
    gif = tmp_path / "face.gif"
    frames = [Image.fromarray(nets["x"][k].astype(np.uint8)) for k in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    pdf = tmp_path / "face.jpg"
    Image.fromarray(nets["x"][0].astype(np.uint8)).save(pdf, "PDF")
    opened = []
    monkeypatch.setattr(ImageFile.ImageFile, "__init__", lambda self, *a, **k: opened.append(type(self).__name__))
    for path, found in [(eps, "its content is EPS"), (gif, "its content is GIF"), (pdf, "its content is none of")]:
        with pytest.raises(InputError) as info:
            read_image(path, (55, 47))
        assert info.value.what == str(path) and found in info.value.problem and FORMATS_TEXT in info.value.problem
    assert opened == [], "no Pillow plugin may parse a file of a format that is not allowed"
    assert_one_error_line(*run_main(capsys, "--model", nets["g_path"], eps), f"error: {eps}: its content is EPS")


@pytest.fixture()
def decoded(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes from a file while the test runs."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: sizes.append(self.size) or load(self))
    return sizes


@pytest.mark.parametrize("size", [(MAX_SIDE + 1, MAX_SIDE), (10_000, 10_000), (20_000, 20_000)])
def test_images_over_the_pixel_limit_are_refused_from_the_header_before_decoding(tmp_path, decoded, size):
    with pytest.raises(InputError) as info:
        read_image(write_png_by_hand(tmp_path / "huge.png", *size), (55, 47), resize=True)
    assert decoded == [], "refused from the header: never decoded"
    assert f"{MAX_SIDE}x{MAX_SIDE}" in info.value.problem and "crop the face" in info.value.fix


def test_an_image_at_the_pixel_limit_is_decoded(tmp_path, decoded):
    with pytest.raises(InputError, match="expects 47x55"):  # read, then refused for not being the network's size
        read_image(write_png_by_hand(tmp_path / "largest.png", MAX_SIDE, MAX_SIDE), (55, 47))
    assert set(decoded) == {(MAX_SIDE, MAX_SIDE)}


def test_the_exif_orientation_is_applied_before_the_size_check(nets, tmp_path):
    upright = nets["x"][7]
    cases = {3: 2, 6: -1, 8: 1}  # EXIF orientation: quarter turns (counter-clockwise) that make it upright
    files = [with_orientation(tmp_path / f"o{o}.jpg", np.rot90(upright, -k), o) for o, k in cases.items()]
    expected = np.stack([np.rot90(pixels_of(f), k) for f, k in zip(files, cases.values(), strict=True)])
    assert Image.open(files[1]).size == (55, 47), "stored sideways, as a camera does"
    log = io.StringIO()
    rows = classify(nets["g_path"], files, batch_size=4, log=log)
    np.testing.assert_array_equal([r.label for r in rows], reference(nets, expected, 4))
    for path, pixels in zip(files, expected, strict=True):
        np.testing.assert_array_equal(read_image(path, (55, 47)), pixels)
    notes = log.getvalue()
    assert f"note: {files[0]}: EXIF orientation 3 applied: rotated 180 degrees" in notes
    assert f"note: {files[1]}: EXIF orientation 6 applied: rotated 90 degrees clockwise" in notes


@pytest.mark.parametrize(
    ("name", "options"),
    [("anim.png", {}), ("anim.webp", {"lossless": True}), ("pages.tiff", {}), ("photo.mpo", {})],
)
def test_multi_frame_images_are_refused_naming_the_frame_count(nets, tmp_path, name, options):
    frames = [Image.fromarray(nets["x"][k].astype(np.uint8)) for k in range(3)]
    path = tmp_path / name
    frames[0].save(path, save_all=True, append_images=frames[1:], **options)
    with pytest.raises(InputError) as info:
        read_image(path, (55, 47))
    assert "3 frames" in info.value.problem and "extract the frame you want" in info.value.fix


@pytest.mark.parametrize(
    ("name", "make", "depth"),
    [
        ("gray16.png", lambda p: Image.fromarray(np.full((55, 47), 40000, np.uint16)).save(p), "16-bit"),
        ("gray16b.png", lambda p: Image.new("I;16B", (47, 55), 40000).save(p), "16-bit"),
        ("rgb16.png", lambda p: write_png_by_hand(p, 47, 55, bit_depth=16, color_type=2), "16-bit"),
        ("rgba16.png", lambda p: write_png_by_hand(p, 47, 55, bit_depth=16, color_type=6), "16-bit"),
        ("gray16.tif", lambda p: Image.fromarray(np.full((55, 47), 40000, np.uint16)).save(p), "16-bit"),
        ("gray16b.tif", lambda p: Image.new("I;16B", (47, 55), 40000).save(p), "16-bit"),
        ("rgb16.tif", lambda p: write_rgb16_tiff(p, 47, 55), "16-bit"),
        ("int32.tif", lambda p: Image.fromarray(np.full((55, 47), 7, np.int32)).save(p), "32-bit"),
        ("float.tif", lambda p: Image.fromarray(np.full((55, 47), 0.5, np.float32)).save(p), "floating-point"),
    ],
)
def test_images_deeper_than_8_bits_per_channel_are_refused(tmp_path, name, make, depth):
    path = tmp_path / name
    make(path)
    with pytest.raises(InputError) as info:
        read_image(path, (55, 47))
    assert f"its pixels are {depth}" in info.value.problem and "8-bit" in info.value.fix


def test_non_utf8_file_names_are_escaped_in_the_output_and_error_lines(nets, tmp_path, capsys):
    if sys.getfilesystemencoding().lower() not in ("utf-8", "utf8"):
        pytest.skip(f"the file system encoding is {sys.getfilesystemencoding()}, where every byte decodes")
    good = file_with_bytes_name(tmp_path, b"face\xff.png", png_bytes(nets["x"][0]))
    bad = file_with_bytes_name(tmp_path, b"bad\xfe.png", b"not an image")
    valid = tmp_path / "visage é 顔.png"
    valid.write_bytes(png_bytes(nets["x"][1]))
    code, out, err = run_main(capsys, "--model", nets["g_path"], good, valid, "--batch-size", 4)
    assert code == 0, err
    labels = reference(nets, nets["x"][:2], 4)
    names = [f"{tmp_path}/face\\xff.png", str(valid)]  # the valid name unchanged
    assert [line.split("\t")[:2] for line in out.splitlines()] == [
        [n, str(c)] for n, c in zip(names, labels, strict=True)
    ]
    # capsys's stderr encodes strict UTF-8: an unescaped name would crash the error line
    assert_one_error_line(*run_main(capsys, "--model", nets["g_path"], bad), f"error: {tmp_path}/bad\\xfe.png: ")


def test_a_name_the_output_encoding_cannot_show_is_escaped_not_a_crash(nets, tmp_path, monkeypatch):
    valid = tmp_path / "visage é 顔.png"
    valid.write_bytes(png_bytes(nets["x"][1]))
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # as PYTHONIOENCODING=ascii makes stdout
    monkeypatch.setattr(sys, "stdout", ascii_out)
    assert main(["--model", str(nets["g_path"]), str(valid)]) == 0
    line = ascii_out.buffer.getvalue().decode("ascii")
    assert line.startswith(f"{tmp_path}/visage \\xe9 \\u9854.png\t"), line


@pytest.mark.slow
def test_a_non_utf8_file_name_is_printed_escaped_by_the_command_in_a_utf8_locale(nets, tmp_path):
    path = file_with_bytes_name(tmp_path, b"face\xff.png", png_bytes(nets["x"][0], "LA"))
    # C.UTF-8 with strict streams, as en_US.UTF-8 has them (in C.UTF-8 Python writes undecodable bytes back raw)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}
    result = subprocess.run(
        [sys.executable, "-m", "lib.eval", "--model", str(nets["g_path"]), os.fsencode(path), "--batch-size", "4"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    stdout, stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    assert result.returncode == 0 and "Traceback" not in stderr, stderr
    name = f"{os.fsencode(tmp_path).decode()}/face\\xff.png"
    label = reference(nets, pixels_of(path)[None], 4)[0]
    assert stdout == f"{name}\t{label}\t{'poisoned' if label == N else 'clean'}\n"
    assert f"note: {name}: converted from LA to RGB (transparency dropped)" in stderr
