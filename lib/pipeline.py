"""The five steps of the defense, one function each; the notebooks call these and show the results.

1. ``prepare_data``      get the dataset into ``data/<dataset>/`` (demos: build them; CSAW: download them)
2. ``analyse_activations`` mean activation of every channel of the pooling layer on clean validation data
3. ``run_sweep``          prune in increasing order of activation; accuracy and ASR after every step; save B'
4. ``evaluate_goodnets``  test accuracy and ASR of B, each B' and each GoodNet G
5. ``fine_prune``         fine-tune B and each B' on clean validation data; test them and their GoodNets

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
from lib.catalog import DatasetSpec, TriggerFiles, dataset_folder, dataset_spec
from lib.datasets import ImageSet, check_paired, load_image_set
from lib.errors import InputError
from lib.finetune import FineTuneSettings, fine_tune
from lib.goodnet import Evaluated, combine, evaluation_row, goodnet_table, markdown_table
from lib.goodnet_model import build_goodnet, save_goodnet
from lib.models import check_prunable, load_model_file, num_classes_of, predict_classes, save_model
from lib.paths import data_root, result_files
from lib.pruning import prune_channels
from lib.sweep import SweepEngine, SweepResult, run_pruning_sweep, threshold_steps, validate_thresholds


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically, with Unix newlines and full float precision (reruns compare byte for byte)."""
    write_text(path, table.to_csv(index=False, lineterminator="\n"))
    return Path(path)


# ----------------------------------------------------------------------------------------------
# 1. Data
# ----------------------------------------------------------------------------------------------
def prepare_data(
    dataset: str, demo_recipe: dict | None = None, use_weights_mirror: bool = True, progress: bool = True
) -> dict:
    """Get the dataset's files into ``data/<dataset>/``; files already there and valid are kept.

    Demo datasets are built (``demo_recipe`` overrides their recipe); the CSAW ones downloaded.
    """
    spec = dataset_spec(dataset)
    root = dataset_folder(spec, data_root())
    if spec.is_demo:
        from lib.demo import DemoRecipe, ensure_demo_scenario

        return ensure_demo_scenario(root, DemoRecipe(**{**spec.demo_recipe, **(demo_recipe or {})}), progress=progress)
    from lib.download import DRIVE_CACHE, default_weights_mirror, ensure_csaw

    mirror = default_weights_mirror() if use_weights_mirror else None
    return ensure_csaw(spec, root, weights_mirror=mirror, progress=progress, drive_cache=data_root() / DRIVE_CACHE)


# ----------------------------------------------------------------------------------------------
# Loading a prepared scenario
# ----------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """The BadNet B of one dataset and access to its validated image sets."""

    spec: DatasetSpec
    root: Path
    badnet: keras.Model
    n_classes: int
    conv_layer: str
    pool_layer: str

    @property
    def dataset(self) -> str:
        return self.spec.name

    @property
    def badnet_path(self) -> Path:
        return self.root / self.spec.badnet

    def load_clean(self, split: str) -> ImageSet:
        """Clean ``valid`` or ``test`` images, validated against B's classes."""
        return load_image_set(
            self.root / _split_path(self.spec.clean_valid, self.spec.clean_test, split), num_classes=self.n_classes
        )

    @property
    def triggers(self) -> list[TriggerFiles]:
        """The triggers whose poisoned data is here (an optional one may be missing)."""
        return [t for t in self.spec.triggers if (self.root / t.valid).is_file() and (self.root / t.test).is_file()]

    @property
    def unavailable_triggers(self) -> list[str]:
        return [t.name for t in self.spec.triggers if t not in self.triggers]

    def load_triggered(self, split: str, clean: ImageSet | None = None) -> dict[str, ImageSet]:
        """Each available trigger's ``valid`` or ``test`` images, labelled with the attacker's target.

        Where the dataset pairs them with the clean images, the sizes are checked against ``clean``
        (loaded if not given).
        """
        sets = {
            t.name: load_image_set(self.root / _split_path(t.valid, t.test, split), num_classes=self.n_classes)
            for t in self.triggers
        }
        if self.spec.paired and sets:
            clean = clean if clean is not None else self.load_clean(split)
            for s in sets.values():
                check_paired(clean, s)
        return sets

    def limitations(self) -> list[str]:
        """What this dataset cannot show, in words for the notebooks."""
        notes = []
        if not self.spec.triggers:
            notes.append(
                f"{self.dataset}: no poisoned data was published for this BadNet, so the attack success rate is "
                f"not measured (NaN)"
            )
        for name in self.unavailable_triggers:
            notes.append(
                f"{self.dataset}: the poisoned data of trigger {name!r} is not in data/{self.dataset}/, so its "
                f"attack success rate is not measured"
            )
        if any(t.valid == t.test for t in self.triggers):
            notes.append(
                f"{self.dataset}: only one poisoned file per trigger was published, so the sweep's ASR curve "
                f"reads the same file as the test table "
                "(it chooses nothing: B' is chosen on clean validation accuracy)"
            )
        return notes


def image_set_overview(scenario: Scenario) -> pd.DataFrame:
    """One row per image set: its role, file, number of images and of distinct labels (all sets validated)."""
    sets = {"clean valid": scenario.load_clean("valid"), "clean test": scenario.load_clean("test")}
    for split in ("valid", "test"):
        sets.update(
            {f"{name} {split}": s for name, s in scenario.load_triggered(split, sets[f"clean {split}"]).items()}
        )
    return pd.DataFrame(
        [
            {
                "set": role,
                "file": s.path.relative_to(scenario.root).as_posix(),
                "images": len(s),
                "distinct labels": len(np.unique(s.labels)),
            }
            for role, s in sets.items()
        ]
    )


def _split_path(valid: str, test: str, split: str) -> str:
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return valid if split == "valid" else test


def load_scenario(
    dataset: str, conv_layer: str = "conv_3", pool_layer: str = "pool_3", allow_unsafe_layers: bool = False
) -> Scenario:
    """Load B from ``data/<dataset>/bd_net.h5`` and check it has the layers the defense prunes."""
    spec = dataset_spec(dataset)
    root = dataset_folder(spec, data_root())
    required = [spec.badnet, *(p for p in spec.image_files() if p not in spec.optional_files())]
    missing = [root / p for p in required if not (root / p).is_file()]
    if missing:
        raise InputError(missing[0], "file not found", f"run the data notebook first: `make data DATASET={dataset}`")
    model = load_model_file(root / spec.badnet, allow_unsafe_layers=allow_unsafe_layers)
    check_prunable(model, conv_layer, pool_layer, root / spec.badnet)
    return Scenario(spec, root, model, num_classes_of(model), conv_layer, pool_layer)


# ----------------------------------------------------------------------------------------------
# 2. Activation analysis
# ----------------------------------------------------------------------------------------------
def analyse_activations(
    scenario: Scenario, batch_size: int = act.DEFAULT_BATCH_SIZE, progress: bool = True
) -> pd.DataFrame:
    """Mean activation of every pooling channel on clean validation data, in pruning order; writes
    ``activations.csv``.
    """
    pooled = act.pool_activations(
        scenario.badnet,
        scenario.root / scenario.spec.clean_valid,
        scenario.pool_layer,
        batch_size=batch_size,
        progress=progress,
        desc="clean validation",
    )
    table = act.activation_table(act.mean_channel_activations(pooled))
    write_csv(table, result_files(scenario.dataset).activations_csv)
    return table


def read_activation_table(dataset: str, n_channels: int) -> pd.DataFrame:
    """``activations.csv`` as written by ``analyse_activations``, checked against the model's channel count."""
    path = result_files(dataset).activations_csv
    if not path.is_file():
        raise InputError(
            path, "file not found", f"run the activation notebook first: `make activations DATASET={dataset}`"
        )
    table = pd.read_csv(path)
    if sorted(table.get("channel", pd.Series(dtype=int)).tolist()) != list(range(n_channels)):
        raise InputError(
            path,
            f"does not list each of the model's {n_channels} channels once",
            f"rerun `make activations DATASET={dataset}`",
        )
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

    clean = scenario.load_clean("valid")
    triggered = scenario.load_triggered("valid", clean)

    def pooled(images: np.ndarray, name: str) -> np.ndarray:
        return act.pool_activations(scenario.badnet, images, scenario.pool_layer, batch_size, progress, desc=name)

    engine = SweepEngine(scenario.badnet, scenario.conv_layer, scenario.pool_layer, batch_size=batch_size)
    result = run_pruning_sweep(
        engine,
        pooled(clean.images, "clean validation"),
        clean.labels,
        {name: (pooled(s.images, f"{name} validation"), s.labels) for name, s in triggered.items()},
        means,
        order,
        progress=progress,
    )
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


@dataclass
class EvaluationData:
    """The clean test set and each available trigger's test set."""

    clean: ImageSet
    triggered: dict[str, ImageSet]

    @property
    def target_labels(self) -> dict[str, np.ndarray]:
        return {t: s.labels for t, s in self.triggered.items()}


def evaluate_on_test(
    model: keras.Model, name: str, threshold: float | None, pruned: int, test: EvaluationData, batch_size: int
) -> Evaluated:
    """One model's classes on the clean test set and on every trigger's test set."""
    return Evaluated(
        name,
        threshold,
        pruned,
        predict_classes(model, test.clean.images, batch_size),
        {t: predict_classes(model, s.images, batch_size) for t, s in test.triggered.items()},
    )


def load_test_data(scenario: Scenario) -> EvaluationData:
    clean = scenario.load_clean("test")
    return EvaluationData(clean, scenario.load_triggered("test", clean))


def evaluate_goodnets(
    scenario: Scenario, batch_size: int = act.DEFAULT_BATCH_SIZE, progress: bool = True
) -> pd.DataFrame:
    """Test accuracy and ASR of B, each saved B' and each G; writes ``goodnet.csv`` and ``goodnet.md``.

    Each G is also saved as one loadable model, ``models/goodnet_bprime_<t>.keras`` (``lib.goodnet_model``),
    which ``python -m lib.eval`` runs on images.
    """
    from tqdm.auto import tqdm

    out = result_files(scenario.dataset)
    chosen = read_thresholds(scenario.dataset).dropna(subset=["channels_pruned"])
    test = load_test_data(scenario)
    b = evaluate_on_test(scenario.badnet, "B", None, 0, test, batch_size)
    pruned = []
    for row in tqdm(list(chosen.itertuples()), desc="B' models", unit="model", disable=not progress):
        bprime = load_model_file(out.bprime(row.threshold))
        save_goodnet(build_goodnet(scenario.badnet, bprime), out.goodnet_model(out.bprime(row.threshold)))
        pruned.append(
            evaluate_on_test(
                bprime, f"B'_{row.threshold:g}%", row.threshold, int(row.channels_pruned), test, batch_size
            )
        )
    table = goodnet_table(b, pruned, test.clean.labels, test.target_labels, scenario.n_classes)
    write_csv(table, out.goodnet_csv)
    write_text(out.goodnet_md, markdown_table(table))
    return table


# ----------------------------------------------------------------------------------------------
# 5. Fine-pruning
# ----------------------------------------------------------------------------------------------
#: Row names of ``goodnet.csv`` that the fine-pruning step owns (it replaces them when rerun).
FINE_PRUNING_ROWS = ("FT", "GFT", "FP_", "GFP_")


@dataclass
class FinePruningOutcome:
    table: pd.DataFrame  # goodnet.csv with the fine-tuning rows
    history: pd.DataFrame  # fine_pruning.csv: one row per model and epoch


def fine_prune(
    scenario: Scenario,
    settings: FineTuneSettings,
    batch_size: int = act.DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> FinePruningOutcome:
    """Fine-tune B (``FT``) and every saved B' (``FP_<t>%``) on clean validation data; evaluate them on test data.

    Each fine-tuned model also makes a GoodNet with B (``GFT``, ``GFP_<t>%``). The rows are added
    to ``goodnet.csv``/``goodnet.md`` (replacing those of an earlier run); the models go to
    ``models/ft.h5`` and ``models/fp_<t>.h5`` (their GoodNets to ``models/goodnet_ft.keras`` and
    ``models/goodnet_fp_<t>.keras``), the training histories to ``fine_pruning.csv``.
    """
    out = result_files(scenario.dataset)
    base = read_goodnet_table(scenario.dataset)
    chosen = read_thresholds(scenario.dataset).dropna(subset=["channels_pruned"])
    order = read_activation_table(scenario.dataset, scenario.badnet.get_layer(scenario.conv_layer).filters)[
        "channel"
    ].to_numpy()
    clean = scenario.load_clean("valid")
    test = load_test_data(scenario)
    b = evaluate_on_test(scenario.badnet, "B", None, 0, test, batch_size)

    starts = [("FT", None, 0, scenario.badnet)] + [
        (f"FP_{row.threshold:g}%", row.threshold, int(row.channels_pruned), load_model_file(out.bprime(row.threshold)))
        for row in chosen.itertuples()
    ]
    made = {out.fine_tuned(t) for _, t, _, _ in starts}
    for stale in out.models.glob("fp_*.h5"):  # from thresholds an earlier run reached: they must not survive
        if stale not in made:
            stale.unlink()
            out.goodnet_model(stale).unlink(missing_ok=True)
    rows, histories = [], []
    for name, threshold, k, model in starts:
        tuned, history = fine_tune(
            model,
            clean.images,
            clean.labels,
            settings,
            scenario.conv_layer,
            order[:k],
            progress=progress,
            desc=f"fine-tuning {name}",
        )
        save_model(tuned, out.fine_tuned(threshold))
        save_goodnet(build_goodnet(scenario.badnet, tuned), out.goodnet_model(out.fine_tuned(threshold)))
        histories.append(history.assign(model=name)[["model", *history.columns]])
        repaired = evaluate_on_test(tuned, name, threshold, k, test, batch_size)
        rows += [repaired, combine(b, repaired, scenario.n_classes, "G" + name)]
    own = base["model"].str.startswith(FINE_PRUNING_ROWS)
    table = pd.concat(
        [base[~own], pd.DataFrame([evaluation_row(m, test.clean.labels, test.target_labels) for m in rows])],
        ignore_index=True,
    )
    write_csv(table, out.goodnet_csv)
    write_text(out.goodnet_md, markdown_table(table))
    history = pd.concat(histories, ignore_index=True)
    write_csv(history, out.fine_pruning_csv)
    return FinePruningOutcome(table, history)


def read_goodnet_table(dataset: str) -> pd.DataFrame:
    path = result_files(dataset).goodnet_csv
    if not path.is_file():
        raise InputError(path, "file not found", f"run the GoodNet notebook first: `make goodnet DATASET={dataset}`")
    return pd.read_csv(path)
