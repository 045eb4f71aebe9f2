"""Multi-seed studies: full pipeline runs on Dask, aggregated into intervals and paired verdicts.

A study is a file, ``studies/<name>.yaml`` (datasets, seeds, the notebook parameters every run shares, an
optional grid of parameters, extra contrasts, demo recipe overrides). ``python -m lib.study run
studies/<name>.yaml`` runs the five notebooks of each (dataset, seed[, grid point]) into
``results/studies/<name>/runs/`` on a local Dask cluster or any running one, then writes the aggregates beside
them.

=========================  ====================================================================
module                     what it holds
=========================  ====================================================================
``lib.study.spec``         the study file: read, checked, its runs and their notebook parameters
``lib.study.runner``       one job on a worker: a run's notebooks in one kernel, threads pinned
``lib.study.engine``       the Dask side: cluster, what is out of date, fan-out, progress, report
``lib.study.stats``        the bootstrap interval every table and figure uses; exact Wilcoxon test; Holm
``lib.study.contrasts``    paired differences between models of the same runs, and their verdicts
``lib.study.aggregate``    runs.csv, sweeps.csv, summary.csv/.md, contrasts.csv/.md; ``summarize``
``lib.study.figures``      against the threshold; every run's sweep; seeds as pairs; the contrasts
``lib.study.reading``      the reading in words: the paired verdicts
``lib.study.__main__``     the command line
=========================  ====================================================================

Importing ``lib.study`` loads the study file reader only; the other modules load when used.
"""

from __future__ import annotations

from lib.study.spec import Run, StudySpec, load_spec, spec_path, study_root

__all__ = ["Run", "StudySpec", "load_spec", "spec_path", "study_root"]
