# Rebuild every figure and table of the pruning defense from the parameterized notebooks.
#
#   make all                      the five notebooks on both offline demos (BadNets and pruning-aware attack),
#                                 then one summary table across them (results/demo-summary.md)
#   make all DATASET=csaw-lab3    the same on one dataset, here the real CSAW-HackML-2020 lab 3 (downloads it)
#   make csaw-all                 the four CSAW-HackML-2020 competition BadNets, then results/csaw-summary.md
#   make test                     the whole test suite
#   make bench                    the sweep benchmark on the real CSAW weights
#
# Executed notebooks go to results/<dataset>/notebooks/, figures to results/<dataset>/figures/.
# Each step reruns when its notebook, the library or an earlier step changed.

# `make all` without DATASET runs both demos; with DATASET=<name>, that dataset only.
ifeq ($(origin DATASET),undefined)
ALL_DATASETS := demo demo-pruning-aware
SUMMARY      := results/demo-summary
else
ALL_DATASETS := $(DATASET)
SUMMARY      :=
endif
COMPETITION := csaw-sunglasses csaw-anonymous-1 csaw-anonymous-2 csaw-multi-trigger
DATASET    ?= demo
THRESHOLDS ?= 2, 4, 10
PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
PY         := $(VENV)/bin/python
RESULTS    := results/$(DATASET)
NBOUT      := $(RESULTS)/notebooks
LIB        := $(wildcard lib/*.py)
RUN        := $(PY) -m lib.run_notebook

.PHONY: all pipeline csaw-all data activations sweep goodnet fine-pruning setup test bench strip-notebooks clean-results
.DELETE_ON_ERROR:

all: $(VENV)/.installed
	@for d in $(ALL_DATASETS); do $(MAKE) --no-print-directory pipeline DATASET=$$d || exit 1; done
	$(if $(SUMMARY),$(PY) -m lib.summary --out $(SUMMARY) $(ALL_DATASETS))

csaw-all: $(VENV)/.installed
	@for d in $(COMPETITION); do $(MAKE) --no-print-directory pipeline DATASET=$$d || exit 1; done
	$(PY) -m lib.summary --out results/csaw-summary $(COMPETITION)

pipeline: fine-pruning

# --- environment: .venv from the pinned requirements, created on first use --------------------
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

# --- the pipeline -------------------------------------------------------------------------------
data: $(NBOUT)/01_data.ipynb
activations: $(NBOUT)/02_activations.ipynb
sweep: $(NBOUT)/03_pruning_sweep.ipynb
goodnet: $(NBOUT)/04_goodnet.ipynb
fine-pruning: $(NBOUT)/05_fine_pruning.ipynb

$(NBOUT)/01_data.ipynb: notebooks/01_data.ipynb $(LIB) $(VENV)/.installed
	$(RUN) $< $@ -p dataset=$(DATASET)

$(NBOUT)/02_activations.ipynb: notebooks/02_activations.ipynb $(NBOUT)/01_data.ipynb
	$(RUN) $< $@ -p dataset=$(DATASET)

$(NBOUT)/03_pruning_sweep.ipynb: notebooks/03_pruning_sweep.ipynb $(NBOUT)/02_activations.ipynb
	$(RUN) $< $@ -p dataset=$(DATASET) -p "thresholds=[$(THRESHOLDS)]"

$(NBOUT)/04_goodnet.ipynb: notebooks/04_goodnet.ipynb $(NBOUT)/03_pruning_sweep.ipynb
	$(RUN) $< $@ -p dataset=$(DATASET)

$(NBOUT)/05_fine_pruning.ipynb: notebooks/05_fine_pruning.ipynb $(NBOUT)/04_goodnet.ipynb
	$(RUN) $< $@ -p dataset=$(DATASET)

# --- checks -------------------------------------------------------------------------------------
test: $(VENV)/.installed
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) benchmarks/sweep.py

strip-notebooks: $(VENV)/.installed
	$(PY) -m nbstripout --drop-empty-cells --keep-id notebooks/*.ipynb

clean-results:
	rm -rf $(NBOUT) $(RESULTS)/models
