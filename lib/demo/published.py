"""The demos' published BadNets: trained once, committed with their digests, used as they are everywhere.

TensorFlow's training on a CPU repeats bit for bit on one processor only: a demo BadNet trained on another
machine is another network, and every result computed from it differs. So each demo's B is published like
the real CSAW BadNets: its file in ``data/published/<dataset>/bd_net.h5`` (with ``recipe.json``: the recipe,
the build's figures and the machine that trained it), its SHA-256 and the digests of the arrays of the
image sets its recipe generates (``lib.data.checksums.arrays_sha256``: HDF5 files written by two h5py
versions differ in bytes, not in pixels) pinned in ``checksums/<dataset>.sha256``. For the dataset's own
recipe the data step keeps a folder that already holds the pinned sets and the published B (it may be
read-only), and otherwise generates the image sets (numpy only), checks them against their pins (a warning
names a set that differs: results will then differ too) and copies the published B, checked against its
pin (a changed file is an error).
Another recipe (a study's seed, ``demo_recipe=...``) trains a new B on this machine.
``make demo-rebuild DATASET=...`` trains and publishes a new B; the committed results then no longer
apply until they are regenerated and committed with it.
"""

from __future__ import annotations

if __name__ == "__main__":  # `make demo-rebuild`: TensorFlow loads without its start-up lines
    from lib.core.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import astuple
from pathlib import Path
from typing import Any

from lib.core.atomic import atomic_path
from lib.core.errors import InputError
from lib.core.paths import PUBLISHED, checksum_file, shown
from lib.core.read_only import require_writable
from lib.data.catalog import dataset_spec
from lib.data.checksums import arrays_key, arrays_sha256, read_lock, sha256_of, write_lock
from lib.demo.data import make_demo_data
from lib.demo.recipe import (
    RECIPE_FILE,
    DemoRecipe,
    demo_files,
    is_demo_current,
    recipe_path,
    stored_summary,
    write_recipe_record,
)
from lib.demo.scenario import build_demo_scenario, ensure_demo_scenario, write_sets
from lib.network.models import load_model_file, save_model
from lib.runs.machine import describe

#: Marks a data folder whose B is the published one (in its ``recipe.json`` summary).
PUBLISHED_KEY = "published_badnet"


def published_folder(dataset: str) -> Path:
    return PUBLISHED / dataset


def dataset_recipe(dataset: str, overrides: dict[str, Any] | None = None) -> DemoRecipe:
    """The recipe of a demo dataset (its catalog entry), with ``overrides`` applied."""
    spec = dataset_spec(dataset)
    if not spec.is_demo:
        raise ValueError(f"{dataset} is not a demo dataset")
    return DemoRecipe(**{**spec.demo_recipe, **(overrides or {})})


def published_record(dataset: str) -> dict[str, Any] | None:
    """The published B's ``recipe.json`` (recipe, fingerprint, figures, machine), or None if none is published."""
    path = recipe_path(published_folder(dataset))
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(path, "not valid JSON", f"restore it: `git checkout {shown(path)}`") from None


def verified_badnet(dataset: str) -> Path:
    """The published B, after checking it against its pin; a changed or unpinned file is an error naming it."""
    spec = dataset_spec(dataset)
    path, pins = published_folder(dataset) / spec.badnet, checksum_file(dataset)
    expected = read_lock(pins).get(spec.badnet)
    if not path.is_file() or expected is None:
        raise InputError(
            path if not path.is_file() else pins,
            "the published BadNet or its pinned digest is missing",
            f"restore them (`git checkout {shown(path)} {shown(pins)}`) or publish a new B: "
            f"`make demo-rebuild DATASET={dataset}`",
        )
    actual = sha256_of(path)
    if actual != expected:
        raise InputError(
            path,
            f"its SHA-256 is {actual}, but {shown(pins)} pins {expected}: the published BadNet was changed",
            f"restore it (`git checkout {shown(path)}`); to publish another B on purpose, "
            f"`make demo-rebuild DATASET={dataset}`",
        )
    return path


def _sets_differing_from_pins(root: Path, dataset: str) -> list[str]:
    """The image sets under ``root`` whose arrays differ from their pins (or that are missing or unreadable)."""
    pins = read_lock(checksum_file(dataset))
    differing = []
    for rel in dataset_spec(dataset).image_files():
        expected = pins.get(arrays_key(rel))
        try:
            actual = arrays_sha256(root / rel)
        except OSError:  # missing, or not an HDF5 file: generated again
            actual = None
        if expected is None or actual != expected:
            differing.append(rel)
    return differing


def _holds_published_demo(root: Path, dataset: str, recipe: DemoRecipe, badnet: Path) -> bool:
    """``root`` already holds this demo: its recipe.json, the published B and the pinned image sets."""
    files = demo_files(root)
    return (
        is_demo_current(root, recipe)
        and sha256_of(files.badnet) == sha256_of(badnet)
        and not _sets_differing_from_pins(root, dataset)
    )


def ensure_demo(root: Path, dataset: str, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict:
    """Make ``root`` hold the demo for this recipe; the published B where it applies, else one trained here.

    Returns the summary recorded in ``root/recipe.json``. With the published B, a folder that already holds
    it and image sets equal to their pins is only read (it may be read-only); otherwise the sets are
    generated (numpy, a few seconds), B is copied and a set that differs from its pin gets a warning.
    """
    root = Path(root)
    recipe = dataset_recipe(dataset, overrides)
    published = published_record(dataset)
    if published is None or published["fingerprint"] != recipe.fingerprint():
        if published is not None and not overrides:
            warnings.warn(
                f"{dataset}: the published B was trained for another recipe or code version "
                f"(fingerprint {published['fingerprint']}, now {recipe.fingerprint()}): training a new B on this "
                f"machine. Publish it with `make demo-rebuild DATASET={dataset}`; until then the committed "
                "results do not apply",
                stacklevel=2,
            )
        return ensure_demo_scenario(root, recipe, progress=progress)
    badnet = verified_badnet(dataset)
    if _holds_published_demo(root, dataset, recipe, badnet):
        return stored_summary(root)
    files = demo_files(root)
    require_writable(root, [p.relative_to(root).as_posix() for p in astuple(files)] + [RECIPE_FILE], dataset)
    recipe_path(root).unlink(missing_ok=True)  # an interrupted run must not look finished
    write_sets(files, make_demo_data(recipe))
    if not files.badnet.is_file() or sha256_of(files.badnet) != sha256_of(badnet):
        with atomic_path(files.badnet) as tmp:
            shutil.copyfile(badnet, tmp)
    for rel in _sets_differing_from_pins(root, dataset):
        warnings.warn(
            f"{shown(root / rel)}: the image set generated on this machine holds other pixels than the one pinned "
            f"in {shown(checksum_file(dataset))}; results computed from it will differ from the committed ones "
            "(numpy's random generator or float functions behave differently here)",
            stacklevel=2,
        )
    write_recipe_record(root, recipe, published["summary"])
    return stored_summary(root)


def publish(dataset: str, progress: bool = True) -> Path:
    """Train the dataset's recipe on this machine and publish the result: B, its recipe.json and the pins."""
    spec = dataset_spec(dataset)
    recipe = dataset_recipe(dataset)
    folder = published_folder(dataset)
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_demo_scenario(Path(tmp), recipe, progress=progress)
        built = demo_files(Path(tmp))
        digests = {spec.badnet: sha256_of(built.badnet)}
        digests.update({arrays_key(rel): arrays_sha256(Path(tmp) / rel) for rel in spec.image_files()})
        summary = {**summary, PUBLISHED_KEY: digests[spec.badnet], "trained_on": describe()}
        # Loaded without its training state (the optimizer's moments would triple the file) and saved again:
        # the weights are the same bits, the file is the one the data step copies.
        save_model(load_model_file(built.badnet), built.badnet)
        digests[spec.badnet] = sha256_of(built.badnet)
        summary[PUBLISHED_KEY] = digests[spec.badnet]
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / spec.badnet) as target:
            shutil.copyfile(built.badnet, target)
    write_recipe_record(folder, recipe, summary)
    write_lock(checksum_file(dataset), digests, order=list(digests))
    return folder / spec.badnet


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.demo.published DATASET``: train and publish a new B (``make demo-rebuild``)."""
    parser = argparse.ArgumentParser(prog="python -m lib.demo.published", description=main.__doc__)
    parser.add_argument("dataset")
    args = parser.parse_args(argv)
    try:
        path = publish(args.dataset)
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"published {shown(path)} (trained on this machine) and its pins in {shown(checksum_file(args.dataset))}.\n"
        "The committed results no longer apply: run `make all`, then commit results/, data/published/ and "
        "checksums/ together."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
