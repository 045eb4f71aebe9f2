"""The four steps of the defense, one function each; the notebooks call these and show the results.

1. ``prepare_data``      get the scenario into ``data/<dataset>/`` (demo: build it; csaw-lab3: download it)
2. ``analyse_activations`` mean activation of every channel of the pooling layer on clean validation data
3. ``run_sweep``          prune in increasing order of activation; accuracy and ASR after every step; save B'
4. ``evaluate_goodnets``  test accuracy and ASR of B, each B' and each GoodNet G

Every file is written atomically (``lib.atomic``), so an interrupted run leaves no half-written result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from lib import activations as act
from lib.atomic import write_text
from lib.datasets import ImageSet, check_paired, load_image_set
from lib.errors import InputError
from lib.goodnet import Evaluated, goodnet_table, markdown_table
from lib.models import check_prunable, load_model_file, num_classes_of, predict_classes, save_model
from lib.paths import KNOWN_DATASETS, DatasetFiles, ResultFiles, dataset_files, result_files
from lib.pruning import prune_channels
from lib.sweep import SweepEngine, SweepResult, run_pruning_sweep, threshold_steps, validate_thresholds

#: Datasets whose triggered sets are the clean sets with the trigger added, image for image.
PAIRED_DATASETS = ("csaw-lab3",)


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically, with Unix newlines and full float precision (reruns compare byte for byte)."""
    write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return Path(path)


def check_dataset_name(dataset: str) -> str:
    if dataset not in KNOWN_DATASETS:
        raise InputError("dataset", f"unknown dataset {dataset!r}", f"use one of {', '.join(KNOWN_DATASETS)}")
    return dataset


# ----------------------------------------------------------------------------------------------
# 1. Data
# ----------------------------------------------------------------------------------------------
def prepare_data(dataset: str, demo_recipe: dict | None = None, use_weights_mirror: bool = True, progress: bool = True) -> dict:
    """Get the scenario's five files into ``data/<dataset>/``; files already there and valid are kept."""
    files = dataset_files(check_dataset_name(dataset))
    if dataset == "demo":
        from lib.demo import DemoRecipe, ensure_demo_scenario

        return ensure_demo_scenario(files.root, DemoRecipe(**(demo_recipe or {})), progress=progress)
    from lib.download import default_weights_mirror, ensure_csaw_lab3

    mirror = default_weights_mirror() if use_weights_mirror else None
    return ensure_csaw_lab3(files.root, weights_mirror=mirror, progress=progress)


# ----------------------------------------------------------------------------------------------
# Loading a prepared scenario
# ----------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """The BadNet B and the validated image sets of one dataset."""

    dataset: str
    files: DatasetFiles
    badnet: keras.Model
    n_classes: int
    conv_layer: str
    pool_layer: str

    def load(self, which: str) -> ImageSet:
        """One of ``clean_valid``, ``clean_test``, ``poisoned_valid``, ``poisoned_test``, validated against B's classes."""
        return load_image_set(getattr(self.files, which), num_classes=self.n_classes)

    def load_pair(self, split: str) -> tuple[ImageSet, ImageSet]:
        """Clean and triggered images of ``split`` (``valid`` or ``test``)."""
        clean, poisoned = self.load(f"clean_{split}"), self.load(f"poisoned_{split}")
        if self.dataset in PAIRED_DATASETS:
            check_paired(clean, poisoned)
        return clean, poisoned


def load_scenario(dataset: str, conv_layer: str = "conv_3", pool_layer: str = "pool_3", allow_unsafe_layers: bool = False) -> Scenario:
    """Load B from ``data/<dataset>/bd_net.h5`` and check it has the layers the defense prunes."""
    files = dataset_files(check_dataset_name(dataset))
    missing = files.missing()
    if missing:
        raise InputError(missing[0], "file not found", f"run the data notebook first: `make data DATASET={dataset}`")
    model = load_model_file(files.badnet, allow_unsafe_layers=allow_unsafe_layers)
    check_prunable(model, conv_layer, pool_layer, files.badnet)
    return Scenario(dataset, files, model, num_classes_of(model), conv_layer, pool_layer)


# ----------------------------------------------------------------------------------------------
# 2. Activation analysis
# ----------------------------------------------------------------------------------------------
def analyse_activations(scenario: Scenario, batch_size: int = act.DEFAULT_BATCH_SIZE, progress: bool = True) -> pd.DataFrame:
    """Mean activation of every pooling channel on clean validation data, in pruning order; writes ``activations.csv``."""
    pooled = act.pool_activations(
        scenario.badnet, scenario.files.clean_valid, scenario.pool_layer, batch_size=batch_size, progress=progress, desc="clean validation"
    )
    table = act.activation_table(act.mean_channel_activations(pooled))
    write_csv(table, result_files(scenario.dataset).activations_csv)
    return table


def read_activation_table(dataset: str, n_channels: int) -> pd.DataFrame:
    """``activations.csv`` as written by ``analyse_activations``, checked against the model's channel count."""
    path = result_files(dataset).activations_csv
    if not path.is_file():
        raise InputError(path, "file not found", f"run the activation notebook first: `make activations DATASET={dataset}`")
    table = pd.read_csv(path)
    if sorted(table.get("channel", pd.Series(dtype=int)).tolist()) != list(range(n_channels)):
        raise InputError(path, f"does not list each of the model's {n_channels} channels once", f"rerun `make activations DATASET={dataset}`")
    return table


# ----------------------------------------------------------------------------------------------
# 3. Pruning sweep
# ----------------------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    result: SweepResult
    steps: dict[float, int | None]
    thresholds: pd.DataFrame


def run_sweep(
    scenario: Scenario,
    thresholds: list[float],
    batch_size: int = act.DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> SweepOutcome:
    """Prune channels in increasing order of mean activation; after each, accuracy and ASR on validation data.

    Writes ``sweep.csv``, ``thresholds.csv`` and, for each threshold t reached, B' as
    ``models/bprime_<t>.h5``. Only validation data is used: test data never chooses a model.
    """
    thresholds = validate_thresholds(thresholds)
    out = result_files(scenario.dataset)
    n_channels = scenario.badnet.get_layer(scenario.conv_layer).filters
    order_table = read_activation_table(scenario.dataset, n_channels)
    means = np.empty(n_channels)
    means[order_table["channel"].to_numpy()] = order_table["mean_activation"].to_numpy()
    order = order_table["channel"].to_numpy()

    clean, poisoned = scenario.load_pair("valid")
    pooled = [
        act.pool_activations(scenario.badnet, s.images, scenario.pool_layer, batch_size, progress, desc=name)
        for s, name in ((clean, "clean validation"), (poisoned, "triggered validation"))
    ]
    engine = SweepEngine(scenario.badnet, scenario.conv_layer, scenario.pool_layer, batch_size=batch_size)
    result = run_pruning_sweep(engine, pooled[0], clean.labels, pooled[1], poisoned.labels, means, order, progress=progress)
    write_csv(result.table, out.sweep_csv)

    steps = threshold_steps(result.clean_correct, result.n_clean, thresholds)
    rows = []
    for t, k in steps.items():
        path = out.bprime(t)
        if k is None:
            path.unlink(missing_ok=True)  # a B' of an earlier run with other data must not survive
        else:
            save_model(prune_channels(scenario.badnet, scenario.conv_layer, order[:k]), path)
        step = result.table.iloc[k] if k is not None else None
        rows.append(
            {
                "threshold": t,
                "channels_pruned": k,
                "fraction": None if k is None else k / n_channels,
                "clean_accuracy": None if step is None else step["clean_accuracy"],
                "attack_success_rate": None if step is None else step["attack_success_rate"],
                "model": None if k is None else path.relative_to(out.root).as_posix(),
            }
        )
    table = pd.DataFrame(rows).astype({"channels_pruned": "Int64"})
    write_csv(table, out.root / "thresholds.csv")
    return SweepOutcome(result, steps, table)


# ----------------------------------------------------------------------------------------------
# 4. GoodNet evaluation
# ----------------------------------------------------------------------------------------------
def read_thresholds(dataset: str) -> pd.DataFrame:
    path = result_files(dataset).root / "thresholds.csv"
    if not path.is_file():
        raise InputError(path, "file not found", f"run the sweep notebook first: `make sweep DATASET={dataset}`")
    return pd.read_csv(path).astype({"channels_pruned": "Int64"})


def evaluate_goodnets(scenario: Scenario, batch_size: int = act.DEFAULT_BATCH_SIZE, progress: bool = True) -> pd.DataFrame:
    """Test accuracy and ASR of B, each saved B' and each G; writes ``goodnet.csv`` and ``goodnet.md``."""
    from tqdm.auto import tqdm

    out = result_files(scenario.dataset)
    chosen = read_thresholds(scenario.dataset).dropna(subset=["channels_pruned"])
    clean, poisoned = scenario.load_pair("test")
    b = Evaluated("B", None, 0, predict_classes(scenario.badnet, clean.images, batch_size), predict_classes(scenario.badnet, poisoned.images, batch_size))
    pruned = []
    for row in tqdm(list(chosen.itertuples()), desc="B' models", unit="model", disable=not progress):
        path = out.bprime(row.threshold)
        model = load_model_file(path)
        pruned.append(
            Evaluated(f"B'_{row.threshold:g}%", row.threshold, int(row.channels_pruned), predict_classes(model, clean.images, batch_size), predict_classes(model, poisoned.images, batch_size))
        )
    table = goodnet_table(b, pruned, clean.labels, poisoned.labels, scenario.n_classes)
    write_csv(table, out.goodnet_csv)
    write_text(out.goodnet_md, markdown_table(table))
    return table
