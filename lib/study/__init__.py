"""Multi-seed studies: full pipeline runs on Dask, aggregated into intervals and paired verdicts.

A study is a file, ``studies/<name>.yaml`` (datasets, seeds, the notebook parameters every run shares, an
optional grid of parameters, extra contrasts, demo recipe overrides). ``python -m lib.study run
studies/<name>.yaml`` runs the step notebooks of each (dataset, seed[, grid point]) into
``results/studies/<name>/runs/`` on a local Dask cluster or any running one, then writes the aggregates beside
them.

Its modules are listed in the project's module map, ``lib/__init__.py``.
"""
