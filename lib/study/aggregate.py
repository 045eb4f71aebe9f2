"""A study's aggregates: every run's models in one table, per dataset and model a mean with its interval, and
the paired contrasts that give the study's verdicts.

Files under ``results/studies/<name>/`` (committed; the runs themselves are not):

* ``runs.csv``: one row per run and model (``RUN_COLUMNS``), test data, percent; ``worker`` and ``seconds``
  say where and how long the run ran (kept from when it actually ran, so a resumed study writes the same file);
* ``sweeps.csv``: every run's pruning sweep (validation data), so that the figures can be redrawn without the runs;
* ``summary.csv`` / ``summary.md``: per dataset (grid point) and model, ``n``, mean, standard deviation and the
  ``lib.study.stats`` interval of clean accuracy and ASR;
* ``contrasts.csv`` / ``contrasts.md``: the paired differences between models of the same runs, with their
  intervals, exact Wilcoxon p-values, Holm's adjustment and verdicts (``lib.study.contrasts``);
* ``detection.csv``: one row per run and detector of notebook 07 (STRIP, each G, each G+STRIP), test data;
  ``detection_contrasts.csv`` / ``.md``: STRIP and G+STRIP against each G, paired by seed, on FRR and FAR;
* ``figures/thresholds.png``, ``figures/sweeps.png``, ``figures/pairs.png`` (every seed's models joined),
  ``figures/forest.png`` (the contrasts) (``lib.study.figures``).

A file is written only when its content changes. The tables come from the runs' folders when their results
are complete for the study file; where no run is (a fresh clone), from the committed ``runs.csv`` and
``sweeps.csv``. A study run in parts (``--datasets``) takes the datasets it ran from their runs' folders and
keeps the rows of the others, which have no complete run here, as the committed files have them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lib.core.atomic import write_bytes
from lib.core.errors import InputError
from lib.core.paths import StudyFiles, result_files, shown, studies_root
from lib.core.step_names import STEPS, SWEEP
from lib.report import plots
from lib.report.summary import detection_rows, model_rows
from lib.report.tables import markdown_table, read_csv
from lib.runs import provenance
from lib.runs.notebook import full_parameters
from lib.runs.workspace import workspace
from lib.study.contrasts import (
    DETECTION_METRICS,
    METRICS,
    contrast_table,
    contrasts_markdown,
    detector_contrast_table,
)
from lib.study.runner import read_info
from lib.study.spec import Run, StudySpec, grid_value, step_notebook
from lib.study.stats import INTERVAL_DESCRIPTION, INTERVAL_NAME, interval

RUN_COLUMNS = [
    "study",
    "dataset",
    "seed",
    "model",
    "threshold",
    "channels_pruned",
    "clean_accuracy",
    "attack_success_rate",
    "worker",
    "seconds",
    "threads",
]
SWEEP_COLUMNS = ["study", "dataset", "seed", "pruned", "fraction", "clean_accuracy", "attack_success_rate"]
DETECTION_COLUMNS = ["study", "dataset", "seed", "detector", "FRR", "FAR", "AUC", "entropy_threshold"]


@dataclass
class StudySummary:
    """A study's tables and figures, and where they came from."""

    spec: StudySpec
    runs: pd.DataFrame  # runs.csv
    sweeps: pd.DataFrame  # sweeps.csv
    summary: pd.DataFrame  # summary.csv
    contrasts: pd.DataFrame  # contrasts.csv
    detection: pd.DataFrame  # detection.csv
    detection_contrasts: pd.DataFrame  # detection_contrasts.csv
    figures: dict[str, Figure]
    missing: list[str] = field(default_factory=list)  # runs of the file without complete results
    source: str = "runs"  # "runs": the run folders; "files": the committed runs.csv and sweeps.csv
    kept: tuple[str, ...] = ()  # datasets whose committed rows were kept: no complete run of theirs was read
    written: list[Path] = field(default_factory=list)  # files whose content changed and were written now


def is_complete(spec: StudySpec, run: Run) -> bool:
    """Whether every step of ``run`` ran with the parameters the study file asks for and its files are unchanged.

    The code digest is not compared: editing ``lib/`` marks the runs out of date for ``lib.study run``, but
    their numbers still summarize until they are rerun.
    """
    records = provenance.read_record(result_files(run.dataset, run.results_dir))
    for step in STEPS:
        record = records.get(step)
        asked = json.loads(json.dumps(full_parameters(step_notebook(step), spec.notebook_parameters(run, step))))
        if record is None or record.parameters != asked or provenance.changes(record):
            return False
    return True


def with_grid(columns: list[str], spec: StudySpec) -> list[str]:
    """``columns`` with one column per grid parameter after ``seed`` (named after the parameter)."""
    at = columns.index("seed") + 1
    return [*columns[:at], *spec.grid, *columns[at:]]


def run_table(spec: StudySpec, runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``runs.csv``, ``sweeps.csv`` and ``detection.csv`` rows of these (complete) runs, in the study file's
    order."""
    models, sweeps, detectors = [], [], []
    run_columns, sweep_columns = with_grid(RUN_COLUMNS, spec), with_grid(SWEEP_COLUMNS, spec)
    detection_columns = with_grid(DETECTION_COLUMNS, spec)
    for run in runs:
        ws = workspace(run.dataset, run.data_dir, run.results_dir)
        info = read_info(run)
        workers = [s["worker"] for s in info.values()]  # usually one; a shared data step may run elsewhere
        seconds = sum(s["seconds"] for s in info.values()) if info else float("nan")
        labels = {"study": spec.name, "dataset": run.dataset, "seed": run.seed}
        labels |= {k: grid_value(v) if isinstance(v, list | tuple) else v for k, v in run.grid}
        table = model_rows(ws).assign(**labels)
        table["worker"] = " + ".join(dict.fromkeys(workers))
        table["seconds"] = round(seconds, 1)
        table["threads"] = " + ".join(dict.fromkeys(str(s["threads"]) for s in info.values()))
        models.append(table[run_columns])
        provenance.require_current(ws.results, SWEEP, f"rerun the study: `python -m lib.study run {shown(spec.path)}`")
        sweep = read_csv(ws.results.sweep_csv).assign(**labels)
        sweeps.append(sweep[sweep_columns])
        detection = detection_rows(ws)
        if len(detection):
            detectors.append(detection.assign(**labels)[detection_columns])
    return _concat(models, run_columns), _concat(sweeps, sweep_columns), _concat(detectors, detection_columns)


def default_setting_runs() -> pd.DataFrame | None:
    """Every committed study's ``runs.csv`` rows that ran the notebooks' default parameters (None: no study).

    A study that sets a parameter to another value than its notebook's default ran another pipeline, and a
    grid study's other grid points too: ``make verify`` compares a fresh default run with this spread only.
    """
    from lib.study.spec import load_spec, notebook_defaults, spec_path

    tables = []
    for path in sorted(studies_root().glob("*/runs.csv")):
        if not spec_path(path.parent.name).is_file():
            continue  # the study file is gone: what it ran cannot be told
        spec = load_spec(path.parent.name)
        defaults = {k: v for step in STEPS for k, v in notebook_defaults(step).items()}
        if any(defaults.get(k) != v for k, v in spec.parameters.items()):
            continue
        runs = read_csv(path)
        for name in spec.grid:
            runs = runs[runs[name] == defaults[name]]
        tables.append(runs[RUN_COLUMNS])
    return pd.concat(tables, ignore_index=True) if tables else None


def _concat(tables: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def summary_table(runs: pd.DataFrame, grid: Sequence[str] = ()) -> pd.DataFrame:
    """Per dataset, grid point (one column per parameter in ``grid``) and model, in the order they first appear:
    ``n``, mean channels pruned, and per metric its mean, standard deviation and interval bounds."""
    keys = ["dataset", *grid, "model"]
    rows = []
    for values, group in runs.groupby(keys, sort=False):
        row = dict(zip(keys, values, strict=True))
        row |= {"threshold": group["threshold"].iloc[0], "n": len(group)}
        row["channels_pruned_mean"] = group["channels_pruned"].mean()
        for metric in METRICS:
            i = interval(group[metric])
            row |= {
                f"{metric}_mean": i.mean,
                f"{metric}_sd": i.sd,
                f"{metric}_ci_low": i.low,
                f"{metric}_ci_high": i.high,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(spec: StudySpec, summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    """``summary.md``: the table for reading, each metric as mean and interval, with what the interval is."""
    shown_table = pd.DataFrame(
        {
            "dataset": summary["dataset"],
            **{g: summary[g] for g in spec.grid},
            "model": summary["model"],
            "n": summary["n"],
            "channels pruned": summary["channels_pruned_mean"],
        }
    )
    for metric, label in METRICS.items():
        shown_table[f"{label} (%)"] = summary[f"{metric}_mean"].map(_number)
        shown_table[f"{label} 95 % CI"] = [
            _bounds(lo, hi) for lo, hi in zip(summary[f"{metric}_ci_low"], summary[f"{metric}_ci_high"], strict=True)
        ]
    n_runs = len(runs.groupby(["dataset", "seed", *spec.grid]))
    threads = ", ".join(dict.fromkeys(runs["threads"].astype(str)))
    head = (
        f"# Study `{spec.name}`: {n_runs} of {len(replace(spec, only=()).runs())} runs "
        f"({len(spec.datasets)} dataset(s) x {len(spec.seeds)} seeds{_points(spec)})\n\n"
        f"Test data, percent: the mean over the seeds and its {INTERVAL_NAME} ({INTERVAL_DESCRIPTION}). "
        "`n` counts the runs that have the model (a threshold that never fired leaves no B'); channels pruned "
        f"is their mean. Each run's TensorFlow used {threads} thread(s): training results depend on it.\n\n"
    )
    return head + markdown_table(shown_table)


def _points(spec: StudySpec) -> str:
    return f" x {len(spec.grid_points())} grid points" if spec.grid else ""


def _number(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.2f}"


def _bounds(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"[{low:.2f}, {high:.2f}]"


def summarize(spec: StudySpec, write: bool = False) -> StudySummary:
    """The study's tables and figures; with ``write``, the aggregate files whose content changed.

    From the run folders where any run is complete (the others are listed as missing), else from the
    committed ``runs.csv``/``sweeps.csv``. A dataset with no complete run here (another ``part`` of the study)
    keeps its committed rows. Files are never rewritten from themselves.
    """
    from lib.study.figures import forest_figure, pairs_figure, sweep_figure, threshold_figure

    files = StudyFiles(spec.root)
    all_runs = spec.runs()
    complete = [r for r in all_runs if is_complete(spec, r)]
    missing = [r.name for r in all_runs if r not in complete]
    kept: tuple[str, ...] = ()
    if complete:
        kept = tuple(d for d in spec.datasets if d not in {r.dataset for r in complete})
        runs, sweeps, detection = _with_kept(spec, files, kept, run_table(spec, complete))
        source = "runs"
    elif files.runs_csv.is_file() and files.sweeps_csv.is_file():
        runs, sweeps = read_csv(files.runs_csv), read_csv(files.sweeps_csv)
        detection = (  # a study committed before notebook 07 has none
            read_csv(files.detection_csv)
            if files.detection_csv.is_file()
            else pd.DataFrame(columns=with_grid(DETECTION_COLUMNS, spec))
        )
        source, missing = "files", []
    else:
        raise InputError(
            shown(files.runs_csv),
            "not found, and no run of the study has complete results",
            f"run the study first: `python -m lib.study run {shown(spec.path)}` (or `make study STUDY={spec.name}`)",
        )
    grid = list(spec.grid)
    summary, contrasts = summary_table(runs, grid), contrast_table(runs, spec.contrasts, grid)
    detection_contrasts = detector_contrast_table(detection, grid)
    figures = {
        "thresholds": threshold_figure(runs, grid),
        "sweeps": sweep_figure(sweeps, grid),
        "pairs": pairs_figure(runs, grid),
        "forest": forest_figure(contrasts),
    }
    result = StudySummary(
        spec, runs, sweeps, summary, contrasts, detection, detection_contrasts, figures, missing, source, kept
    )
    if write and source == "runs":
        result.written = _write(files, spec, result)
    return result


def _with_kept(
    spec: StudySpec, files: StudyFiles, kept: Sequence[str], tables: tuple[pd.DataFrame, ...]
) -> tuple[pd.DataFrame, ...]:
    """``runs``, ``sweeps`` and ``detection`` of the complete runs, with the committed rows of the datasets in
    ``kept`` (those of another part of the study, and those with no complete run here), in the study file's
    order of datasets: summarizing one part never drops another's rows."""
    if not kept:
        return tables
    order = {d: i for i, d in enumerate(spec.datasets)}
    merged = []
    for table, path in zip(tables, (files.runs_csv, files.sweeps_csv, files.detection_csv), strict=True):
        committed = read_csv(path) if path.is_file() else table.iloc[:0]
        rows = committed[committed["dataset"].isin(kept)]
        if len(rows):
            table = pd.concat([table, rows[table.columns]], ignore_index=True)
        merged.append(table.sort_values("dataset", key=lambda d: d.map(order), kind="stable", ignore_index=True))
    return tuple(merged)


def _write(files: StudyFiles, spec: StudySpec, result: StudySummary) -> list[Path]:
    texts = {
        files.runs_csv: _csv(result.runs),
        files.sweeps_csv: _csv(result.sweeps),
        files.summary_csv: _csv(result.summary),
        files.summary_md: summary_markdown(spec, result.summary, result.runs),
        files.contrasts_csv: _csv(result.contrasts),
        files.contrasts_md: contrasts_markdown(result.contrasts),
    }
    if len(result.detection):  # a study whose runs predate notebook 07 has no detectors: no empty files
        texts |= {
            files.detection_csv: _csv(result.detection),
            files.detection_contrasts_csv: _csv(result.detection_contrasts),
            files.detection_contrasts_md: contrasts_markdown(
                result.detection_contrasts, DETECTION_METRICS, "detectors"
            ),
        }
    contents = {path: text.encode("utf-8") for path, text in texts.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, figure in result.figures.items():
            contents[files.figure(name)] = plots.save_figure(figure, Path(tmp) / f"{name}.png").read_bytes()
    written = []
    for path, data in contents.items():
        if not path.is_file() or path.read_bytes() != data:
            write_bytes(path, data)
            written.append(path)
    return written


def _csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n")
