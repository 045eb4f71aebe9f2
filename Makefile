# Rebuild every figure and table of the pruning defense from the parameterized notebooks.
#
#   make all                      the eight step notebooks on both offline demos, then results/demo-summary.md
#   make all DATASET=csaw-lab3    the same on one dataset, here the real CSAW-HackML-2020 lab 3 (downloads it)
#   make csaw-all                 the four CSAW-HackML-2020 competition BadNets, then results/csaw-summary.md
#   make verify                   rerun the default pipeline from scratch elsewhere and compare with the committed results
#   make study STUDY=demo-seeds   a multi-seed study (studies/<name>.yaml) on a local Dask cluster
#   make study STUDY=demo-seeds DATASETS=demo   only some of its datasets; the others' committed rows are kept
#   make demo-rebuild DATASET=demo  train a new demo BadNet on this machine and publish it (data/published/)
#   make test / make test-fast    the whole test suite / the unit tests only; make lint: ruff
#   make bench                    the sweep benchmark on the real CSAW weights
#
# A step runs only when its results are out of date: its notebook, lib/, its parameters or its input files
# changed, or one of its outputs is missing or was changed (lib.runs.provenance keeps the record in run.json).
# Parameters: THRESHOLDS="2, 4, 10", CHECK_REFERENCE=False, DATA_DIR=..., RESULTS_DIR=... (one DATASET only).

PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
PY         := $(VENV)/bin/python
THRESHOLDS ?= 2, 4, 10

# `make all` without DATASET runs both demos; with DATASET=<name>, that dataset only.
ifeq ($(origin DATASET),undefined)
ALL_DATASETS = $(shell $(PYTHON) -m lib.data.catalog demos)
SUMMARY      = $(PY) -m lib.report.summary --out demo-summary $(ALL_DATASETS)
DATASET      := demo
else
ALL_DATASETS := $(DATASET)
SUMMARY      := $(PY) -m lib.report.summary --where $(DATASET)
UNKNOWN      := $(shell $(PYTHON) -m lib.data.catalog check $(DATASET) 2>&1)
ifneq ($(UNKNOWN),)
$(error $(UNKNOWN))
endif
endif

# The parameters every notebook gets, and the step notebooks.
PARAMS = -p dataset=$(DATASET) $(if $(DATA_DIR),-p data_dir=$(DATA_DIR)) $(if $(RESULTS_DIR),-p results_dir=$(RESULTS_DIR))
RUN    = $(PY) -m lib.runs.notebook
# One run at a time per dataset: the whole chain of steps holds the dataset's folders.
LOCKED = $(PY) -m lib.runs.locks --dataset $(1) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(RESULTS_DIR),--results-dir $(RESULTS_DIR)) --

.PHONY: all pipeline csaw-all data activations sweep goodnet fine-pruning clp strip anp demo-rebuild verify study \
        setup test test-fast lint bench strip-notebooks clean-results

all: setup
	@for d in $(ALL_DATASETS); do $(call LOCKED,$$d) $(MAKE) --no-print-directory pipeline DATASET=$$d || exit 1; done
	@$(SUMMARY)

csaw-all: setup
	@for d in $$($(PYTHON) -m lib.data.catalog competition); do \
		$(call LOCKED,$$d) $(MAKE) --no-print-directory pipeline DATASET=$$d || exit 1; done
	@$(PY) -m lib.report.summary --out csaw-summary $$($(PYTHON) -m lib.data.catalog competition)

pipeline: anp

# --- the steps, each after the one before -------------------------------------------------------------
data: setup
	@$(RUN) notebooks/01_data.ipynb $(PARAMS) $(if $(CHECK_REFERENCE),-p check_reference=$(CHECK_REFERENCE))

activations: data
	@$(RUN) notebooks/02_activations.ipynb $(PARAMS)

sweep: activations
	@$(RUN) notebooks/03_pruning_sweep.ipynb $(PARAMS) -p "thresholds=[$(THRESHOLDS)]"

goodnet: sweep
	@$(RUN) notebooks/04_goodnet.ipynb $(PARAMS)

fine-pruning: goodnet
	@$(RUN) notebooks/05_fine_pruning.ipynb $(PARAMS)

clp: fine-pruning
	@$(RUN) notebooks/06_clp.ipynb $(PARAMS) -p "thresholds=[$(THRESHOLDS)]"

strip: clp
	@$(RUN) notebooks/07_strip.ipynb $(PARAMS)

anp: strip
	@$(RUN) notebooks/08_anp.ipynb $(PARAMS) -p "thresholds=[$(THRESHOLDS)]"

# Train a new demo BadNet on this machine and publish it (data/published/, checksums/): the committed
# results then no longer apply until `make all` regenerates them and they are committed with it.
demo-rebuild: setup
	@$(PY) -m lib.demo.published $(DATASET)

# --- reproducibility and studies ------------------------------------------------------------------------
verify: setup
	@$(PY) -m lib.verify $(if $(IN_PLACE),--in-place)

study: setup
	@$(PY) -m lib.study run studies/$(STUDY).yaml $(if $(WORKERS),--workers $(WORKERS)) $(if $(DATASETS),--datasets $(DATASETS))

# --- environment: .venv from the pinned versions of constraints.txt, created on first use -----------------------------
setup: $(VENV)/.installed
$(VENV)/.installed: constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) from constraints.txt (log: $(VENV)/install.log)"
	@( $(PY) -m pip install --upgrade pip && $(PY) -m pip install -c constraints.txt -e ".[cpu,dev]" ) > $(VENV)/install.log 2>&1 || (tail -20 $(VENV)/install.log; exit 1)
	@touch $@

# --- checks -------------------------------------------------------------------------------------------
test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest -m "not slow" tests

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: setup
	$(PY) benchmarks/sweep.py

strip-notebooks: setup
	$(PY) -m nbstripout --drop-empty-cells --keep-id notebooks/*.ipynb

# The executed notebooks and models of one dataset (DATASET is checked against the catalog above).
clean-results:
	rm -rf results/$(DATASET)/notebooks results/$(DATASET)/models results/$(DATASET)/run.json
