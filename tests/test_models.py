"""Models: the CSAW architecture, loading the real weights, atomic saving, and one clear error per bad model file."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import LAB3_WEIGHTS, tiny_deepid, tiny_images
from keras import layers

from lib.core.errors import InputError
from lib.network.architecture import CSAW_NUM_CLASSES, PRUNED_CONV, PRUNED_POOL, build_deepid
from lib.network.models import MAX_CONFIG_BYTES, load_model_file, num_classes_of, portable_config, save_model
from lib.network.prunable import check_prunable

CSAW_LAYER_NAMES = [
    "input",
    "conv_1",
    "pool_1",
    "conv_2",
    "pool_2",
    "conv_3",
    "pool_3",
    "conv_4",
    "flatten_1",
    "flatten_2",
    "fc_1",
    "fc_2",
    "add_1",
    "activation_1",
    "output",
]


def _assert_input_error(exc_info: pytest.ExceptionInfo, path: Path | str, *phrases: str) -> str:
    message = str(exc_info.value)
    assert str(path) in message, message
    assert "Fix: " in message and exc_info.value.fix.strip(), message
    for phrase in phrases:
        assert re.search(phrase, message, re.IGNORECASE), f"{phrase!r} not in: {message}"
    assert len(message) < 2000, f"message too long to read ({len(message)} characters)"
    return message


def _lambda_model() -> keras.Model:
    x = keras.Input((14, 12, 3), name="input")
    h = layers.Lambda(lambda t: t / 255.0, name="scale")(x)
    h = layers.Flatten()(h)
    return keras.Model(x, layers.Dense(3, activation="softmax", name="output")(h))


@pytest.fixture(scope="module")
def deepid() -> keras.Model:
    return build_deepid(CSAW_NUM_CLASSES)


# --- architecture --------------------------------------------------------------------------------


def test_deepid_has_the_csaw_size_and_layer_names(deepid):
    assert deepid.count_params() == 601_643
    assert [layer.name for layer in deepid.layers] == CSAW_LAYER_NAMES
    assert deepid.input_shape == (None, 55, 47, 3)
    assert num_classes_of(deepid) == CSAW_NUM_CLASSES
    check_prunable(deepid, PRUNED_CONV, PRUNED_POOL)


def test_layer_names_match_the_real_weights_file():
    if not LAB3_WEIGHTS.is_file():
        pytest.skip(f"the real CSAW weights are not here ({LAB3_WEIGHTS}); they come with the project's shared/ folder")
    with h5py.File(LAB3_WEIGHTS, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["layer_names"]]
    assert names == CSAW_LAYER_NAMES


def test_real_weights_load_layer_by_layer(lab3_model):
    assert lab3_model.count_params() == 601_643
    compared = []
    with h5py.File(LAB3_WEIGHTS, "r") as f:
        for layer in lab3_model.layers:
            weights = layer.get_weights()
            if not weights:
                assert layer.name not in f or not f[layer.name].keys(), f"{layer.name} has weights in the file"
                continue
            group = f[layer.name][layer.name]
            kernel, bias = weights
            np.testing.assert_array_equal(kernel, group["kernel:0"][()], err_msg=f"{layer.name} kernel")
            np.testing.assert_array_equal(bias, group["bias:0"][()], err_msg=f"{layer.name} bias")
            compared.append(layer.name)
    assert compared == ["conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output"]


# --- saving --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_saved_model_loads_with_plain_keras_and_predicts_identically(tmp_path, suffix):
    model = tiny_deepid(seed=4)
    images = tiny_images(9, seed=4)
    path = save_model(model, tmp_path / "models" / f"bprime_2{suffix}")
    assert path == tmp_path / "models" / f"bprime_2{suffix}"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left beside the model"

    reloaded = keras.models.load_model(path, compile=False)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))
    via_lib = load_model_file(path)
    np.testing.assert_array_equal(via_lib.predict(images, verbose=0), model.predict(images, verbose=0))


def test_a_saved_h5_model_carries_no_initializer_argument_an_older_keras_3_refuses(tmp_path):
    """Keras 3.13 (Kaggle, Colab) refuses the ``input_axes=None`` newer ones write; defaults are left out instead."""
    path = save_model(tiny_deepid(seed=5), tmp_path / "b.h5")
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    initializers = []

    def collect(item: object) -> None:
        if isinstance(item, dict):
            if item.get("module") == "keras.initializers":
                initializers.append(item["config"])
            for value in item.values():
                collect(value)
        elif isinstance(item, list):
            for value in item:
                collect(value)

    collect(config)
    assert initializers, "the conv and dense layers' initializers are in the config"
    assert all(None not in c.values() for c in initializers), initializers
    assert portable_config({"module": "keras.initializers", "config": {"seed": None, "scale": 2.0}}) == {
        "module": "keras.initializers",
        "config": {"scale": 2.0},
    }


def test_save_model_replaces_an_existing_file(tmp_path):
    path = tmp_path / "m.h5"
    save_model(tiny_deepid(seed=1), path)
    second = tiny_deepid(seed=2)
    save_model(second, path)
    images = tiny_images(3)
    np.testing.assert_array_equal(
        keras.models.load_model(path, compile=False).predict(images, verbose=0), second.predict(images, verbose=0)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]


def _disk_full(model: keras.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    def save(filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n half a model")  # something was written before the disk filled
        raise OSError("No space left on device")

    monkeypatch.setattr(model, "save", save)


def test_save_model_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    model = tiny_deepid()
    _disk_full(model, monkeypatch)
    target = tmp_path / "models" / "bprime_2.h5"
    with pytest.raises(OSError, match="No space left on device"):
        save_model(model, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == [], "a temporary file was left behind"


def test_save_model_on_a_full_disk_keeps_the_previous_model(tmp_path, monkeypatch):
    target = tmp_path / "bprime_2.h5"
    save_model(tiny_deepid(seed=1), target)
    before = target.read_bytes()
    model = tiny_deepid(seed=2)
    _disk_full(model, monkeypatch)
    with pytest.raises(OSError):
        save_model(model, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bprime_2.h5"]


# --- bad model files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bd_net.h5", "bd_net.keras"])
def test_model_file_missing(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "not found", "make data")


@pytest.mark.parametrize("name", ["bd_net.h5", "bd_net.keras"])
def test_text_file_as_model(tmp_path, name):
    path = tmp_path / name
    path.write_text("<html>quota exceeded</html>\n")
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "not a readable", "delete the file|re-download")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_truncated_full_model(tmp_path, suffix):
    path = save_model(tiny_deepid(), tmp_path / f"bd_net{suffix}")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "truncated|not a readable|could not load", "make data|re-download")


def test_truncated_weights_file(tmp_path):
    if not LAB3_WEIGHTS.is_file():
        pytest.skip(f"the real CSAW weights are not here ({LAB3_WEIGHTS}); they come with the project's shared/ folder")
    raw = LAB3_WEIGHTS.read_bytes()
    path = tmp_path / "bd_weights.h5"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "truncated|not a readable|do not fit", "make data|weights file")


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_keras3_weights_of_another_architecture(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    tiny_deepid().save_weights(path)
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(
        info, path, "do not fit the DeepID architecture with 1283 classes", "CSAW-HackML-2020 weights file"
    )


def test_csaw_format_weights_of_another_architecture(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path / "tiny_weights.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, tiny_deepid())
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "do not fit the DeepID architecture")


def test_csaw_format_weights_with_another_class_count(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path / "ten_class_weights.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, build_deepid(10))
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "1283 classes")
    assert num_classes_of(load_model_file(path, num_classes=10)) == 10


def test_hdf5_with_unrelated_groups(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_group("experiment").create_dataset("loss", data=np.arange(5.0))
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "do not fit", "CSAW-HackML-2020 weights file")


def test_image_set_given_as_model(tmp_path):
    path = tmp_path / "valid.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((2, 3, 55, 47), np.float32))
        f.create_dataset("label", data=np.zeros(2, np.float32))
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "do not fit")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layer_is_refused_unless_allowed(tmp_path, suffix):
    model = _lambda_model()
    path = save_model(model, tmp_path / f"bd_net{suffix}")
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "Lambda", "allow_unsafe_layers=True")

    loaded = load_model_file(path, allow_unsafe_layers=True)
    assert any(isinstance(layer, layers.Lambda) for layer in loaded.layers)
    images = tiny_images(4)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)


# --- check_prunable ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> keras.Model:
    return tiny_deepid()


def test_check_prunable_accepts_conv_3_and_pool_3(tiny):
    check_prunable(tiny, "conv_3", "pool_3", path="bd_net.h5")


@pytest.mark.parametrize(("conv", "pool", "missing"), [("conv_9", "pool_3", "conv_9"), ("conv_3", "pool_9", "pool_9")])
def test_check_prunable_missing_layer(tiny, conv, pool, missing):
    with pytest.raises(InputError) as info:
        check_prunable(tiny, conv, pool, path="bd_net.h5")
    message = _assert_input_error(info, "bd_net.h5", f"no layer named '{missing}'", "conv_layer=.*pool_layer=")
    assert "conv_3" in message and "pool_3" in message, "the message lists the layers there are"


def test_check_prunable_layer_is_not_a_conv(tiny):
    with pytest.raises(InputError) as info:
        check_prunable(tiny, "fc_1", "pool_3", path="bd_net.h5")
    _assert_input_error(info, "bd_net.h5", "'fc_1' is a Dense, not a Conv2D", "conv_layer=")


def test_check_prunable_pool_channels_do_not_match(tiny):
    # conv_1 has 4 filters, pool_3 sees conv_3's 10 channels.
    with pytest.raises(InputError) as info:
        check_prunable(tiny, "conv_1", "pool_3", path="bd_net.h5")
    _assert_input_error(
        info, "bd_net.h5", "'pool_3' has 10 input channels but 'conv_1' has 4 filters", "directly follows"
    )


def test_check_prunable_accepts_the_csaw_architecture_and_its_tail_builds(deepid, tiny):
    for model in (deepid, tiny):
        check_prunable(model, PRUNED_CONV, PRUNED_POOL, path="bd_net.h5")
        tail = keras.Model(model.get_layer(PRUNED_POOL).output, model.outputs[0])  # what the sweep builds
        assert tail.output.shape == model.output.shape


def _functional(skip_from: str | None = None, conv_3_branch: bool = False) -> keras.Model:
    """conv_2 -> conv_3 -> pool_3 -> fc_1 -> output, with a skip to the head or a second reader of conv_3."""
    x = keras.Input((14, 12, 3), name="input")
    c2 = layers.Conv2D(4, 3, activation="relu", name="conv_2")(x)
    c3 = layers.Conv2D(10, 3, activation="relu", name="conv_3")(c2)
    h = layers.Dense(8, name="fc_1")(layers.Flatten(name="flatten_1")(layers.MaxPooling2D(2, name="pool_3")(c3)))
    if skip_from is not None:
        skip = layers.Dense(8, name="fc_skip")(
            layers.Flatten(name="flatten_skip")({"input": x, "conv_2": c2}[skip_from])
        )
        h = layers.Add(name="add_skip")([h, skip])
    if conv_3_branch:
        branch = layers.Dense(8, name="fc_branch")(layers.GlobalAveragePooling2D(name="gap_branch")(c3))
        h = layers.Add(name="add_branch")([h, branch])
    return keras.Model(x, layers.Dense(5, activation="softmax", name="output")(h))


def test_check_prunable_accepts_the_plain_functional_model():
    check_prunable(_functional(), "conv_3", "pool_3", path="bd_net.h5")


@pytest.mark.parametrize(("skip_from", "source"), [("conv_2", "'conv_2'"), ("input", "the model's input")])
def test_check_prunable_refuses_a_skip_connection_around_the_pool(skip_from, source):
    model = _functional(skip_from=skip_from)
    with pytest.raises(InputError) as info:
        check_prunable(model, "conv_3", "pool_3", path="bd_net.h5")
    _assert_input_error(
        info, "bd_net.h5", f"layer 'flatten_skip' reads {source}", "path around 'pool_3'", "read only its output"
    )


def test_check_prunable_refuses_a_conv_read_by_another_layer_too():
    with pytest.raises(InputError) as info:
        check_prunable(_functional(conv_3_branch=True), "conv_3", "pool_3", path="bd_net.h5")
    _assert_input_error(info, "bd_net.h5", "'conv_3' feeds 'gap_branch' as well as 'pool_3'", "conv_layer=")


def test_check_prunable_refuses_a_shared_pooling_layer():
    x = keras.Input((14, 12, 3), name="input")
    pool = layers.MaxPooling2D(2, name="pool_3")
    h = pool(pool(layers.Conv2D(10, 3, activation="relu", name="conv_3")(x)))
    model = keras.Model(x, layers.Dense(3, name="output")(layers.Flatten()(h)))
    with pytest.raises(InputError) as info:
        check_prunable(model, "conv_3", "pool_3", path="bd_net.h5")
    _assert_input_error(info, "bd_net.h5", "'pool_3' is called 2 times", "exactly once")


def _backbone_in_a_model() -> keras.Model:
    inner = keras.Input((14, 12, 3))
    pooled = layers.MaxPooling2D(2, name="pool_3")(layers.Conv2D(10, 3, activation="relu", name="conv_3")(inner))
    backbone = keras.Model(inner, pooled, name="backbone")
    x = keras.Input((14, 12, 3), name="input")
    return keras.Model(x, layers.Dense(3, name="output")(layers.Flatten()(backbone(x))))


def test_check_prunable_refuses_layers_inside_a_nested_model():
    with pytest.raises(InputError) as info:
        check_prunable(_backbone_in_a_model(), "conv_3", "pool_3", path="bd_net.h5")
    _assert_input_error(info, "bd_net.h5", "'conv_3' is inside the nested model 'backbone'", "top level")


def test_check_prunable_accepts_a_nested_head_after_the_pool():
    head_in = keras.Input((6, 5, 10))
    head = keras.Model(head_in, layers.Dense(3)(layers.Flatten()(head_in)), name="head")
    x = keras.Input((14, 12, 3), name="input")
    pooled = layers.MaxPooling2D(2, name="pool_3")(layers.Conv2D(10, 3, activation="relu", name="conv_3")(x))
    model = keras.Model(x, head(pooled))
    check_prunable(model, "conv_3", "pool_3", path="bd_net.h5")
    keras.Model(model.get_layer("pool_3").output, model.outputs[0])


# --- malformed or oversized architectures ----------------------------------------------------------


def _h5_with_config(tmp_path: Path, value) -> Path:
    path = save_model(tiny_deepid(), tmp_path / "bd_net.h5")
    with h5py.File(path, "a") as f:
        del f.attrs["model_config"]
        f.attrs["model_config"] = value
    return path


def _keras_with_config(tmp_path: Path, text: bytes) -> Path:
    path = save_model(tiny_deepid(), tmp_path / "bd_net.keras")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = text
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


BAD_CONFIGS = [
    (b'{"class_name": "Functional", "config": {', "is not valid JSON"),
    (b"[1, 2, 3]", "is JSON an array, not the object that describes a model"),
    (b'"model"', "is JSON a string"),
    (b"[" * 100_000, "is JSON nested too deeply"),
]


@pytest.mark.parametrize(
    ("write", "subject"),
    [(_h5_with_config, "`model_config` attribute"), (_keras_with_config, "`config.json`")],
    ids=["h5", "keras"],
)
@pytest.mark.parametrize(("text", "phrase"), BAD_CONFIGS, ids=["truncated", "array", "string", "deep"])
def test_model_config_that_is_not_a_json_object(tmp_path, write, subject, text, phrase):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, f"{subject} {phrase}", "re-download the model")


def test_keras_config_json_that_is_not_utf8(tmp_path):
    path = _keras_with_config(tmp_path, b'{"name": "\xff\xfe"}')
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "`config.json` is not UTF-8 text")


def test_h5_model_config_that_is_not_text(tmp_path):
    path = _h5_with_config(tmp_path, np.arange(4))
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "`model_config` attribute is not one text", "re-download the model")


def _oversized() -> bytes:
    return json.dumps({"class_name": "Functional", "config": {}, "padding": " " * MAX_CONFIG_BYTES}).encode()


@pytest.mark.parametrize("stored", ["variable-length", "fixed-length"])
def test_h5_model_config_too_large(tmp_path, stored):
    text = _oversized()
    if stored == "variable-length":  # as Keras writes it: the attribute holds a reference to the text
        path = _h5_with_config(tmp_path, text)
    else:  # the text in the attribute itself: an HDF5 file with dense attribute storage
        path = tmp_path / "bd_net.h5"
        with h5py.File(path, "w", libver="latest") as f:
            f.attrs["model_config"] = np.bytes_(text)
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(
        info, path, f"`model_config` attribute is {len(text):,} bytes, more than the {MAX_CONFIG_BYTES:,}"
    )


def test_keras_config_json_too_large(tmp_path):
    text = _oversized()
    path = _keras_with_config(tmp_path, text)
    assert path.stat().st_size < MAX_CONFIG_BYTES, "compressed, the archive is small: its member's size counts"
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, f"`config.json` is {len(text):,} bytes, more than the {MAX_CONFIG_BYTES:,}")


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_config_keras_cannot_deserialize(tmp_path, suffix):
    text = json.dumps({"class_name": "NoSuchModel", "config": {"layers": "none"}}).encode()
    path = _h5_with_config(tmp_path, text) if suffix == ".h5" else _keras_with_config(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_model_file(path)
    _assert_input_error(info, path, "Keras could not load this model", "re-download")
