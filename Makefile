# cfcl: `make reproduce` runs the paper end to end (default profile: cpu), `make test` runs the tests.
# Executed notebooks are targets under runs/$(PROFILE)/notebooks/, so `make -j2` and reruns redo only
# what changed. `make help` lists the targets.
PROFILE ?= cpu
# Two cores: two notebooks side by side with one thread each beat one notebook with two threads.
JOBS ?= 2
export OMP_NUM_THREADS ?= 1
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NB := runs/$(PROFILE)/notebooks
PAPERMILL := $(PY) -m papermill --kernel python3 --progress-bar
METHODS := simclr vader dvd_cl mvd_cl chexmask ssdcl s_dvd_cl s_mvd_cl
PROPOSED := dvd_cl mvd_cl s_dvd_cl s_mvd_cl
FT_METHODS := none $(METHODS)
SRC := $(shell find cfcl -name '*.py' 2>/dev/null)

.PHONY: help install reproduce test unit nbval lab bench data hvae pretrain finetune clean-runs

help: ## List the targets
	@grep -hE '^[a-zA-Z_%/.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

install: $(INSTALLED) ## Create .venv and install the project (editable) with its dev tools and a kernel

$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "cfcl (.venv)" >/dev/null
	touch $@

# --- the paper, notebook by notebook (papermill; a failing notebook stops the run and names the cell) ---
define papermill
	@mkdir -p $(@D)
	$(PAPERMILL) $(1) $(@D)/.running-$(@F) -p profile $(PROFILE) $(2) || \
	  { mv $(@D)/.running-$(@F) $(@D)/failed-$(@F); echo "see $(@D)/failed-$(@F)"; exit 1; }
	mv $(@D)/.running-$(@F) $@
endef

$(NB)/00_data.ipynb: notebooks/00_data.ipynb $(SRC) | $(INSTALLED)
	$(call papermill,$<,)
$(NB)/01_train_hvae.ipynb: notebooks/01_train_hvae.ipynb $(NB)/00_data.ipynb
	$(call papermill,$<,)
$(NB)/02_counterfactuals.ipynb: notebooks/02_counterfactuals.ipynb $(NB)/01_train_hvae.ipynb
	$(call papermill,$<,)
$(NB)/03_pretrain-%.ipynb: notebooks/03_pretrain.ipynb $(NB)/02_counterfactuals.ipynb
	$(call papermill,$<,-p method $*)
$(NB)/04_finetune-none.ipynb: notebooks/04_finetune.ipynb $(NB)/00_data.ipynb
	$(call papermill,$<,-p method none)
$(NB)/04_finetune-%.ipynb: notebooks/04_finetune.ipynb $(NB)/03_pretrain-%.ipynb
	$(call papermill,$<,-p method $*)
$(NB)/05_latent_space.ipynb: notebooks/05_latent_space.ipynb $(PROPOSED:%=$(NB)/03_pretrain-%.ipynb)
	$(call papermill,$<,)
$(NB)/06_results.ipynb: notebooks/06_results.ipynb $(FT_METHODS:%=$(NB)/04_finetune-%.ipynb)
	$(call papermill,$<,)

data: $(NB)/00_data.ipynb ## Generate the data and its figures (notebook 00)
hvae: $(NB)/02_counterfactuals.ipynb ## Train the HVAE, generate and score counterfactuals (01, 02)
pretrain: $(METHODS:%=$(NB)/03_pretrain-%.ipynb) ## Pre-train all eight methods (03)
finetune: $(FT_METHODS:%=$(NB)/04_finetune-%.ipynb) ## Fine-tune all nine rows, 5 folds each (04)

reproduce: | $(INSTALLED) ## Run notebooks 00-06 (PROFILE=cpu|smoke|paper, JOBS=2); figures/<profile>/
	$(MAKE) -j$(JOBS) $(NB)/05_latent_space.ipynb $(NB)/06_results.ipynb
	@echo "done: figures/$(PROFILE)/ and $(NB)/"

# --- tests ---
unit: | $(INSTALLED) ## Unit tests only
	$(PY) -m pytest tests -q

nbval: | $(INSTALLED) ## Run every notebook as is (smoke defaults) under nbval
	$(PY) -m pytest --nbval-lax --nbval-sanitize-with .ci/nbval_sanitize.cfg -p no:cacheprovider notebooks -q

test: unit nbval ## Unit tests, then nbval over the notebooks (what CI runs)

bench: | $(INSTALLED) ## Benchmarks (ratios, written to benchmarks/results/)
	$(PY) benchmarks/bench_losses.py
	$(PY) benchmarks/bench_pretrain.py

lab: | $(INSTALLED) ## Open JupyterLab on the notebooks with the project's kernel
	$(VENV)/bin/jupyter lab notebooks

clean-runs: ## Delete executed notebooks and checkpoints of PROFILE (keeps the data cache)
	rm -rf runs/$(PROFILE)
