"""Multi-seed studies: a grid of full pipeline runs on Dask, aggregated into means with confidence intervals.

A study is a file, ``studies/<name>.yaml`` (datasets, seeds, the notebook parameters every run shares, demo
recipe overrides). ``python -m lib.study run studies/<name>.yaml`` runs the five notebooks of each (dataset,
seed) pair into ``results/studies/<name>/runs/<dataset>-seed<k>/`` on a local Dask cluster or any running one,
then writes the aggregates beside them.

=========================  ====================================================================
module                     what it holds
=========================  ====================================================================
``lib.study.spec``         the study file: read, checked, its runs and their notebook parameters
``lib.study.runner``       one job on a worker: a run's notebooks in one kernel, threads pinned
``lib.study.engine``       the Dask side: cluster, what is out of date, fan-out, progress, report
``lib.study.stats``        the t-interval every table and figure uses
``lib.study.aggregate``    runs.csv, sweeps.csv, summary.csv/.md; ``summarize`` (notebook 06)
``lib.study.figures``      accuracy and ASR against the threshold; the sweeps of every run
``lib.study.reading``      the reading in words: which intervals overlap
``lib.study.__main__``     the command line
=========================  ====================================================================

Importing ``lib.study`` loads the study file reader only; the other modules load when used.
"""

from __future__ import annotations

from lib.study.spec import Run, StudySpec, load_spec, spec_path, study_root

__all__ = ["Run", "StudySpec", "load_spec", "spec_path", "study_root"]
