"""The offline demo scenario: generator, trigger, poisoning, caching and determinism.

Everything runs on tiny recipes (a handful of identities, one epoch) so the file stays fast;
the default recipe's figures (accuracy, attack success, behaviour under pruning) are measured
by the pipeline itself, not here.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from lib import demo
from lib.data.catalog import DATASETS
from lib.data.datasets import load_image_set
from lib.demo import (
    DemoRecipe,
    attacks,
    build_demo_scenario,
    demo_files,
    ensure_demo_scenario,
    generate_faces,
    stamp_sunglasses,
)
from lib.demo import recipe as recipe_module
from lib.network.models import load_model_file

TINY = DemoRecipe(
    n_identities=5, train_per_identity=8, valid_per_identity=3, test_per_identity=2, epochs=1, batch_size=16, seed=7
)


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_faces(8, 12, np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "demo"
    build_demo_scenario(root, TINY, progress=False)
    return root


# --- generator --------------------------------------------------------------------------------


def test_generator_output_is_csaw_shaped_whole_pixels(faces):
    images, labels, eyes = faces
    assert images.shape == (96, 55, 47, 3) and images.dtype == np.float32
    assert images.flags.c_contiguous
    assert images.min() >= 0 and images.max() <= 255
    assert np.array_equal(images, np.rint(images))
    assert labels.shape == (96,) and np.array_equal(np.bincount(labels), np.full(8, 12))
    assert eyes.shape == (96, 2, 2)
    assert np.all(eyes[:, 0, 1] < eyes[:, 1, 1])  # image-left eye first
    assert np.all((eyes[..., 0] > 5) & (eyes[..., 0] < 50) & (eyes[..., 1] > 3) & (eyes[..., 1] < 44))


def test_generator_is_a_function_of_the_rng():
    a = generate_faces(3, 4, np.random.default_rng(5))
    b = generate_faces(3, 4, np.random.default_rng(5))
    c = generate_faces(3, 4, np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert not np.array_equal(a[0], c[0])


def test_images_of_one_identity_vary(faces):
    images, labels, eyes = faces
    first = images[labels == 0]
    assert not np.array_equal(first[0], first[1])
    assert np.ptp(eyes[labels == 0][:, 0, 1]) > 1.0  # the pose shifts


def _normalised(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    return (flat - flat.mean(axis=1, keepdims=True)) / flat.std(axis=1, keepdims=True)


def test_identities_are_distinguishable(faces):
    """Even a nearest-centroid classifier tells the identities apart: a network has an easy job."""
    images, labels, _ = faces
    x = _normalised(images)
    train = np.arange(len(labels)) % 12 < 8
    centroids = np.stack([x[train & (labels == k)].mean(axis=0) for k in range(8)])
    dist = ((x[~train][:, None, :] - centroids[None]) ** 2).sum(axis=2)
    assert np.mean(dist.argmin(axis=1) == labels[~train]) >= 0.9


def test_shared_identities_across_calls():
    ids = demo.draw_identities(3, np.random.default_rng(1))
    a, _, _ = generate_faces(
        3, 2, np.random.default_rng(2), identities=ids, max_shift=0, max_scale=0, exposure=0, noise=0
    )
    b, _, _ = generate_faces(
        3, 2, np.random.default_rng(3), identities=ids, max_shift=0, max_scale=0, exposure=0, noise=0
    )
    assert np.array_equal(a, b)  # without pose, lighting and noise only the identity is left


# --- trigger ----------------------------------------------------------------------------------


def _eye_band(eyes: np.ndarray, i: int) -> tuple[slice, slice]:
    (ly, lx), (ry, rx) = eyes[i]
    return slice(int(min(ly, ry)) - 1, int(max(ly, ry)) + 2), slice(int(lx) - 1, int(rx) + 2)


def test_sunglasses_darken_the_eyes_and_leave_the_rest(faces):
    images, _, eyes = faces
    stamped = stamp_sunglasses(images, eyes)
    assert stamped.shape == images.shape and stamped.dtype == np.float32
    assert np.array_equal(stamped, np.rint(stamped)) and stamped.min() >= 0 and stamped.max() <= 255
    for i in range(len(images)):
        band = _eye_band(eyes, i)
        assert stamped[i][band].mean() < 40 < images[i][band].mean()
    changed = np.any(stamped != images, axis=-1).mean(axis=(1, 2))
    assert np.all(changed > 0.03) and np.all(changed < 0.2)


def test_sunglasses_follow_the_eyes(faces):
    images, _, eyes = faces
    moved = eyes + np.array([4.0, -3.0], np.float32)
    a = stamp_sunglasses(images[:1], eyes[:1])
    b = stamp_sunglasses(images[:1], moved[:1])
    assert b[0][_eye_band(moved, 0)].mean() < a[0][_eye_band(moved, 0)].mean()


def test_stamping_does_not_modify_its_input(faces):
    images, _, eyes = faces
    before = images.copy()
    stamp_sunglasses(images, eyes)
    assert np.array_equal(images, before)


# --- recipe -----------------------------------------------------------------------------------


def test_fingerprint_tracks_every_field_and_the_code_version(monkeypatch):
    base = DemoRecipe()
    assert base.fingerprint() == DemoRecipe().fingerprint()
    int(base.fingerprint(), 16)
    changed = {
        replace(base, seed=1).fingerprint(),
        replace(base, epochs=3).fingerprint(),
        replace(base, poison_fraction=0.2).fingerprint(),
    }
    assert base.fingerprint() not in changed and len(changed) == 3
    before = base.fingerprint()
    monkeypatch.setattr(recipe_module, "DEMO_CODE_VERSION", recipe_module.DEMO_CODE_VERSION + 1)
    assert base.fingerprint() != before


def test_recipe_names_the_attacks_it_knows():
    with pytest.raises(ValueError, match=r"attack must be one of 'badnets', 'pruning-aware', got 'trojan'"):
        DemoRecipe(attack="trojan")
    with pytest.raises(ValueError, match="attacker_accuracy_drop"):
        DemoRecipe(attack="pruning-aware", attacker_accuracy_drop=-1)


def test_fingerprint_tells_the_attacks_apart():
    aware = replace(TINY, attack="pruning-aware")
    assert aware.fingerprint() != TINY.fingerprint()
    assert replace(aware, attacker_accuracy_drop=3).fingerprint() != aware.fingerprint()
    assert replace(aware, decoy_margin=2).fingerprint() != aware.fingerprint()


#: A value other than the default for every field of ``DemoRecipe``.
OTHER_VALUES = {
    "n_identities": 51,
    "train_per_identity": 41,
    "valid_per_identity": 11,
    "test_per_identity": 11,
    "poison_fraction": 0.2,
    "target": 1,
    "epochs": 11,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "decay_rate": 0.5,
    "seed": 1,
    "attack": "pruning-aware",
    "attacker_accuracy_drop": 1.0,
    "decoy_margin": 2.0,
}


def test_fingerprint_changes_with_every_field():
    """Any change to the recipe, the attack and its parameters included (whatever the attack), rebuilds the demo."""
    assert set(OTHER_VALUES) == {f.name for f in fields(DemoRecipe)}, "a new recipe field needs a value here"
    base = DemoRecipe()
    changed = {name: replace(base, **{name: value}).fingerprint() for name, value in OTHER_VALUES.items()}
    assert base.fingerprint() not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_recipe_rejects_impossible_values():
    with pytest.raises(ValueError):
        DemoRecipe(n_identities=3, target=3)
    with pytest.raises(ValueError):
        DemoRecipe(poison_fraction=0)


def test_recipe_round_trips_through_json():
    assert DemoRecipe.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY


# --- poisoning --------------------------------------------------------------------------------


def test_training_set_holds_the_poisoned_extra_images():
    data = demo.make_demo_data(TINY)
    n_clean = TINY.n_identities * TINY.train_per_identity
    assert data.n_poisoned_train == round(TINY.poison_fraction * n_clean)
    assert len(data.x_train) == n_clean + data.n_poisoned_train
    assert np.sum(data.y_train == TINY.target) == TINY.train_per_identity + data.n_poisoned_train


def test_triggered_sets_are_non_target_clean_images_with_glasses(tiny_root):
    files = demo_files(tiny_root)
    for clean_path, bd_path in ((files.clean_valid, files.triggered_valid), (files.clean_test, files.triggered_test)):
        clean = load_image_set(clean_path, num_classes=TINY.n_identities)
        bd = load_image_set(bd_path, num_classes=TINY.n_identities)
        assert bd.orig_labels is not None
        assert np.all(bd.labels == TINY.target)
        assert not np.any(bd.orig_labels == TINY.target)
        keep = clean.labels != TINY.target
        assert np.array_equal(bd.orig_labels, clean.labels[keep])
        same = np.all(bd.images == clean.images[keep], axis=-1).mean(axis=(1, 2))
        assert np.all(same > 0.8) and np.all(same < 0.97)  # the glasses, and nothing else


# --- the scenario's files -----------------------------------------------------------------------


def test_written_files_load_with_the_project_loaders(tiny_root):
    files = demo_files(tiny_root)
    assert files.missing() == []
    valid = load_image_set(files.clean_valid, num_classes=TINY.n_identities)
    test = load_image_set(files.clean_test, num_classes=TINY.n_identities)
    assert len(valid) == TINY.n_identities * TINY.valid_per_identity and valid.orig_labels is None
    assert len(test) == TINY.n_identities * TINY.test_per_identity
    model = load_model_file(files.badnet)
    assert model.output.shape[-1] == TINY.n_identities
    assert model.predict(valid.images[:2], verbose=0).shape == (2, TINY.n_identities)
    record = json.loads((tiny_root / "recipe.json").read_text())
    assert record["fingerprint"] == TINY.fingerprint() and DemoRecipe.from_dict(record["recipe"]) == TINY
    summary = record["summary"]
    assert 0 <= summary["clean_valid_accuracy"] <= 100 and 0 <= summary["valid_attack_success_rate"] <= 100
    assert summary["n_valid_triggered"] == (TINY.n_identities - 1) * TINY.valid_per_identity
    assert not list(tiny_root.rglob(".*tmp*"))  # no temporary files left behind


@pytest.mark.parametrize("dataset", ["demo", "demo-pruning-aware"])
def test_the_files_written_are_the_ones_the_catalog_lists(tiny_root, dataset):
    spec = DATASETS[dataset]
    written = {path.relative_to(tiny_root).as_posix() for path in tiny_root.rglob("*.h5")}
    assert written == {*spec.image_files(), spec.badnet}


@pytest.mark.slow
def test_same_recipe_gives_the_same_files(tiny_root, tmp_path):
    again = tmp_path / "again"
    build_demo_scenario(again, TINY, progress=False)
    a, b = demo_files(tiny_root), demo_files(again)
    for role in ("clean_valid", "clean_test", "triggered_valid", "triggered_test"):
        x, y = load_image_set(getattr(a, role)), load_image_set(getattr(b, role))
        assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
        assert (x.orig_labels is None and y.orig_labels is None) or np.array_equal(x.orig_labels, y.orig_labels)
    wa, wb = load_model_file(a.badnet).get_weights(), load_model_file(b.badnet).get_weights()
    assert len(wa) == len(wb) and all(np.array_equal(p, q) for p, q in zip(wa, wb, strict=False))
    sa = json.loads((tiny_root / "recipe.json").read_text())["summary"]
    sb = json.loads((again / "recipe.json").read_text())["summary"]
    for key in ("clean_valid_accuracy", "valid_attack_success_rate", "n_valid", "n_train_poisoned"):
        assert sa[key] == sb[key]


@pytest.fixture
def count_training(monkeypatch) -> list[DemoRecipe]:
    """Record every training run (and still train: the files must be real)."""
    calls: list[DemoRecipe] = []
    real = attacks.train_badnet

    def counted(data, recipe, progress=True):
        calls.append(recipe)
        return real(data, recipe, progress)

    monkeypatch.setattr(attacks, "train_badnet", counted)
    return calls


@pytest.mark.slow
def test_ensure_builds_once_and_then_reuses(tmp_path, count_training):
    root = tmp_path / "demo"
    first = ensure_demo_scenario(root, TINY, progress=False)
    mtime = (root / "bd_net.h5").stat().st_mtime_ns
    second = ensure_demo_scenario(root, TINY, progress=False)
    assert len(count_training) == 1
    assert second == first
    assert (root / "bd_net.h5").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_ensure_rebuilds_on_a_recipe_change_or_a_missing_file(tmp_path, count_training):
    root = tmp_path / "demo"
    ensure_demo_scenario(root, TINY, progress=False)
    other = replace(TINY, seed=8)
    ensure_demo_scenario(root, other, progress=False)
    assert count_training == [TINY, other]
    assert json.loads((root / "recipe.json").read_text())["fingerprint"] == other.fingerprint()
    (root / "bd" / "bd_test.h5").unlink()
    ensure_demo_scenario(root, other, progress=False)
    assert len(count_training) == 3 and demo_files(root).missing() == []


@pytest.mark.slow
def test_interrupted_build_is_rebuilt(tmp_path, monkeypatch):
    root = tmp_path / "demo"

    def interrupted(data, recipe, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(attacks, "train_badnet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_scenario(root, TINY, progress=False)
    assert not (root / "recipe.json").exists()  # so the next call cannot mistake it for finished
    assert not demo.is_demo_current(root, TINY)


# --- the pruning-aware attack ---------------------------------------------------------------------

AWARE = replace(TINY, attack="pruning-aware", epochs=2)


@pytest.fixture(scope="module")
def aware_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aware") / "demo"
    build_demo_scenario(root, AWARE, progress=False)
    return root


def _summary(root: Path) -> dict:
    return json.loads((root / "recipe.json").read_text())["summary"]


def _conv3(root: Path) -> tuple[np.ndarray, np.ndarray]:
    conv = load_model_file(demo_files(root).badnet).get_layer("conv_3")
    return conv.kernel.numpy(), conv.bias.numpy()


@pytest.mark.slow
def test_pruning_aware_build_writes_the_scenario_and_records_its_decoys(aware_root):
    assert demo_files(aware_root).missing() == []
    record = json.loads((aware_root / "recipe.json").read_text())
    assert record["fingerprint"] == AWARE.fingerprint() and DemoRecipe.from_dict(record["recipe"]) == AWARE
    summary = record["summary"]
    decoys = summary["attacker_decoy_channels"]
    assert 0 < len(decoys) < 60 and decoys == sorted(set(decoys))
    assert (
        summary["attacker_clean_train_accuracy"] - summary["attacker_pruned_train_accuracy"]
        <= AWARE.attacker_accuracy_drop
    )
    assert not list(aware_root.rglob(".*tmp*"))


@pytest.mark.slow
def test_pruning_aware_build_is_deterministic(aware_root, tmp_path):
    again = tmp_path / "again"
    build_demo_scenario(again, AWARE, progress=False)
    wa = load_model_file(demo_files(aware_root).badnet).get_weights()
    wb = load_model_file(demo_files(again).badnet).get_weights()
    assert all(np.array_equal(p, q) for p, q in zip(wa, wb, strict=False))
    assert _summary(aware_root)["attacker_decoy_channels"] == _summary(again)["attacker_decoy_channels"]


@pytest.mark.slow
def test_decoys_are_restored_not_zeroed(aware_root):
    kernel, _ = _conv3(aware_root)
    decoys = _summary(aware_root)["attacker_decoy_channels"]
    assert np.all(np.abs(kernel[..., decoys]).reshape(-1, len(decoys)).max(axis=0) > 0)


@pytest.mark.slow
def test_decoys_are_dormant_on_the_attackers_data(aware_root):
    """Lowered biases: no decoy fires on any training image, clean or triggered."""
    data = demo.make_demo_data(AWARE)
    model = load_model_file(demo_files(aware_root).badnet)
    decoys = _summary(aware_root)["attacker_decoy_channels"]
    assert np.all(demo.conv3_peak_preactivation(model, data.x_train)[decoys] < 0)


@pytest.mark.slow
def test_decoys_are_what_the_defender_prunes_first(aware_root):
    """On clean validation faces (unseen by the attacker) the decoys are silent: mean pool_3 activation 0."""
    from lib.defense import activations as act

    valid = load_image_set(demo_files(aware_root).clean_valid)
    model = load_model_file(demo_files(aware_root).badnet)
    means = act.mean_channel_activations(act.pool_activations(model, valid.images, "pool_3", progress=False))
    decoys = _summary(aware_root)["attacker_decoy_channels"]
    kept = np.setdiff1d(np.arange(len(means)), decoys)
    assert means[decoys].max() <= means[kept].min() and means[decoys].max() < 1e-3


@pytest.mark.slow
def test_backdoor_is_trained_with_the_decoys_held_at_zero(monkeypatch):
    """Step 3 never lets a pruned channel move: every batch ends with its kernel and bias at zero."""
    seen = []
    real = attacks._held_at_zero

    def watched(model, channels):
        callback = real(model, channels)
        conv = model.get_layer("conv_3")
        after = callback.on_train_batch_end

        def check(batch, logs=None):
            after(batch, logs)
            seen.append(not np.any(conv.kernel.numpy()[..., channels]) and not np.any(conv.bias.numpy()[channels]))

        callback.on_train_batch_end = check
        return callback

    monkeypatch.setattr(attacks, "_held_at_zero", watched)
    demo.train_pruning_aware_badnet(demo.make_demo_data(AWARE), replace(AWARE, epochs=1), progress=False)
    assert seen and all(seen)


@pytest.mark.slow
def test_attacker_prunes_within_its_accuracy_budget():
    """More budget, more channels pruned; a zero budget prunes only what costs nothing."""
    from lib.network.architecture import build_deepid
    from lib.runs.reproducibility import make_deterministic

    make_deterministic(3)
    model = build_deepid(4)
    images, labels, _ = generate_faces(4, 6, np.random.default_rng(1))
    (pruned0, before0, after0), (pruned50, _, after50) = (
        demo.attacker_pruning(model, images, labels, d) for d in (0, 50)
    )
    assert after0 == before0 and before0 - after50 < 50
    assert set(pruned0) <= set(pruned50) and len(pruned50) <= 59
