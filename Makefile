# Rebuild every figure and table of the pruning defense from the parameterized notebooks.
#
#   make all                      the four notebooks on the offline demo scenario (default)
#   make all DATASET=csaw-lab3    the same on the real CSAW-HackML-2020 lab 3 (downloads the data)
#   make test                     the whole test suite
#   make bench                    the sweep benchmark on the real CSAW weights
#
# Executed notebooks go to results/<dataset>/notebooks/, figures to results/<dataset>/figures/.
# Each step reruns when its notebook, the library or an earlier step changed.

DATASET    ?= demo
THRESHOLDS ?= 2, 4, 10
PYTHON     ?= $(shell command -v python3.11 || command -v python3)
VENV       ?= .venv
PY         := $(VENV)/bin/python
RESULTS    := results/$(DATASET)
NBOUT      := $(RESULTS)/notebooks
LIB        := $(wildcard lib/*.py)
RUN        := $(PY) -m lib.run_notebook

.PHONY: all data activations sweep goodnet setup test bench strip-notebooks clean-results
.DELETE_ON_ERROR:

all: goodnet

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

$(NBOUT)/01_data.ipynb: notebooks/01_data.ipynb $(LIB) $(VENV)/.installed
	$(RUN) $< $@ -p dataset=$(DATASET)

$(NBOUT)/02_activations.ipynb: notebooks/02_activations.ipynb $(NBOUT)/01_data.ipynb
	$(RUN) $< $@ -p dataset=$(DATASET)

$(NBOUT)/03_pruning_sweep.ipynb: notebooks/03_pruning_sweep.ipynb $(NBOUT)/02_activations.ipynb
	$(RUN) $< $@ -p dataset=$(DATASET) -p "thresholds=[$(THRESHOLDS)]"

$(NBOUT)/04_goodnet.ipynb: notebooks/04_goodnet.ipynb $(NBOUT)/03_pruning_sweep.ipynb
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
