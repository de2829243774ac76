# cfcl: `make reproduce` runs the paper end to end (default profile: cpu), `make test` runs the tests.
# Executed notebooks are targets under runs/<profile>[-<variant>]/notebooks/, so `make -j2` and reruns
# redo only what changed; every stage's run is keyed by its settings (cfcl/runs.py), so a notebook that
# reruns verifies and reuses the runs it finds. `make help` lists the targets.
#
# Variants: `make reproduce PROFILE=smoke VARIANT=oracle SET="pretrain.cf_source=oracle"` runs the whole
# pipeline with the overrides, reusing every upstream run they do not touch, and writes its figures to
# figures/smoke-oracle/. VARIANT names the overrides; one without the other is an error.
# ONLY="none dvd_cl" restricts a run to those methods (pre-training, fine-tuning, Tables 1 and 2): the
# real-data smoke run and the ablations' arms use it.
PROFILE ?= cpu
VARIANT ?=
SET ?=
ONLY ?=
# CLAIMS=long: notebook 06 decides the long-pre-training contrasts (cfcl.claims.LONG_CLAIMS), not the paper's.
CLAIMS ?= paper
# Two cores: two notebooks side by side with one thread each beat one notebook with two threads.
JOBS ?= 2
export OMP_NUM_THREADS ?= 1
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

ifneq ($(strip $(VARIANT)),)
ifeq ($(strip $(SET)),)
$(error VARIANT=$(VARIANT) needs SET="key=value ..." (the overrides it names))
endif
endif
ifneq ($(strip $(SET)),)
ifeq ($(strip $(VARIANT)),)
$(error SET="$(SET)" needs VARIANT=<name> (figures go to figures/$(PROFILE)-<name>/))
endif
endif

# VENV: the Python environment the targets use (.venv by default; a conda environment: VENV="$CONDA_PREFIX",
# see environment.yml).
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LABEL := $(PROFILE)$(if $(strip $(VARIANT)),-$(strip $(VARIANT)))
NB := runs/$(LABEL)/notebooks
# cfcl.jupyter is the papermill command line on kernels that talk over private Unix sockets, not TCP ports
# that two notebooks started at once can race for (CI once lost a smoke ablation to "Address already in use").
PAPERMILL := $(PY) -m cfcl.jupyter --kernel python3 --progress-bar
# The method lists come from the registry (cfcl/methods.py is plain Python: no environment needed).
ALL_METHODS := $(shell python3 -m cfcl.methods finetune)
ifneq ($(filter-out $(ALL_METHODS),$(ONLY)),)
$(error ONLY="$(ONLY)": unknown method(s) $(filter-out $(ALL_METHODS),$(ONLY)); choose among $(ALL_METHODS))
endif
only = $(if $(strip $(ONLY)),$(filter $(ONLY),$(1)),$(1))
METHODS := $(call only,$(shell python3 -m cfcl.methods pretrain))
PROPOSED := $(call only,$(shell python3 -m cfcl.methods proposed))
CF_METHODS := $(call only,$(shell python3 -m cfcl.methods counterfactual))
PLAIN_METHODS := $(filter-out $(CF_METHODS),$(METHODS))
FT_METHODS := $(call only,$(ALL_METHODS))
SRC := $(shell find cfcl -name '*.py' 2>/dev/null)
# The overrides a label was last run with: a changed SET for the same VARIANT reruns its notebooks; a
# changed ONLY reruns the tables (05, 06).
SETTINGS := $(NB)/.settings
ONLY_FILE := $(NB)/.only

.PHONY: help install reproduce ablations test lint unit unit-fast nbval realdata-smoke lab bench bench-gpu profile-step data hvae pretrain finetune \
        clean-runs FORCE

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_%\/.-]+:.*## / { printf "  %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

install: $(INSTALLED) ## Create .venv and install the project (editable, dev tools, a kernel) at constraints.txt's versions

# rfc3987-syntax (pulled in by jupyter-events' jsonschema[format-nongpl]) builds ~35 Lark parsers whenever
# jsonschema is imported: about 3 CPU s in every papermill, nbval and jupyter process, a tenth of the smoke
# pipeline's CPU (benchmarks/results/startup.md; jsonschema issue #1428). Nothing here validates the IRI formats it serves, so the install removes
# it (jsonschema then skips those two formats; `pip check` stays clean).
$(INSTALLED): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip uninstall --quiet --yes rfc3987-syntax
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "cfcl (.venv)" >/dev/null
	$(PY) -m cfcl.chromap --warm
	touch $@

$(SETTINGS): FORCE
	@mkdir -p $(@D)
	@echo '$(SET)' | cmp -s - $@ || echo '$(SET)' > $@
$(ONLY_FILE): FORCE
	@mkdir -p $(@D)
	@echo '$(ONLY)' | cmp -s - $@ || echo '$(ONLY)' > $@

# --- the paper, notebook by notebook (papermill; a failing notebook stops the run and names the cell) ---
# Each notebook's wall time goes to $(NB)/.times/ (the stage timing table, figures/<label>/timings.csv).
define papermill
	@mkdir -p $(@D)/.times
	@start=$$(date +%s.%N); \
	$(PAPERMILL) $(1) $(@D)/.running-$(@F) -p profile $(PROFILE) -p variant "$(VARIANT)" -p overrides "$(SET)" $(2) || \
	  { mv $(@D)/.running-$(@F) $(@D)/failed-$(@F); echo "see $(@D)/failed-$(@F)"; exit 1; }; \
	echo "$(@F) $$start $$(date +%s.%N) $(OMP_NUM_THREADS) $(JOBS)" > $(@D)/.times/$(@F).txt
	mv $(@D)/.running-$(@F) $@
endef

$(NB)/00_data.ipynb: notebooks/00_data.ipynb $(SRC) $(SETTINGS) | $(INSTALLED)
	$(call papermill,$<,)
$(NB)/01_train_hvae.ipynb: notebooks/01_train_hvae.ipynb $(NB)/00_data.ipynb
	$(call papermill,$<,)
# The judge (notebook 02's measuring stick, cfcl.counterfactual.predictors) needs only the data: it trains beside the HVAE,
# off the path to the counterfactuals; notebook 02 verifies and reads it.
$(NB)/02_judge.done: $(NB)/00_data.ipynb
	@mkdir -p $(@D)/.times
	@start=$$(date +%s.%N); \
	$(PY) -m cfcl.counterfactual.predictors --profile $(PROFILE) --variant "$(VARIANT)" --role judge --set $(SET) && \
	echo "02_judge $$start $$(date +%s.%N) $(OMP_NUM_THREADS) $(JOBS)" > $(@D)/.times/$(@F).txt
	touch $@
$(NB)/02_counterfactuals.ipynb: notebooks/02_counterfactuals.ipynb $(NB)/01_train_hvae.ipynb $(NB)/02_judge.done
	$(call papermill,$<,)
# Pre-training with counterfactual views needs the HVAE's counterfactuals unless they come from elsewhere
# (oracle, identity); the other methods start from the data, beside the HVAE (two jobs keep both cores busy).
CF_UPSTREAM := $(if $(filter pretrain.cf_source=oracle pretrain.cf_source=identity,$(SET)),$(NB)/00_data.ipynb,$(NB)/02_counterfactuals.ipynb)
$(CF_METHODS:%=$(NB)/03_pretrain-%.ipynb): $(NB)/03_pretrain-%.ipynb: notebooks/03_pretrain.ipynb $(CF_UPSTREAM)
	$(call papermill,$<,-p method $*)
$(PLAIN_METHODS:%=$(NB)/03_pretrain-%.ipynb): $(NB)/03_pretrain-%.ipynb: notebooks/03_pretrain.ipynb $(NB)/00_data.ipynb
	$(call papermill,$<,-p method $*)
$(NB)/04_finetune-none.ipynb: notebooks/04_finetune.ipynb $(NB)/00_data.ipynb
	$(call papermill,$<,-p method none)
$(NB)/04_finetune-%.ipynb: notebooks/04_finetune.ipynb $(NB)/03_pretrain-%.ipynb
	$(call papermill,$<,-p method $*)
$(NB)/05_latent_space.ipynb: notebooks/05_latent_space.ipynb $(PROPOSED:%=$(NB)/03_pretrain-%.ipynb) \
                             $(patsubst %,$(NB)/03_pretrain-%.ipynb,$(call only,vader)) $(ONLY_FILE)
	$(call papermill,$<,-p methods "$(ONLY)")
$(NB)/06_results.ipynb: notebooks/06_results.ipynb $(FT_METHODS:%=$(NB)/04_finetune-%.ipynb) $(ONLY_FILE)
	$(call papermill,$<,-p methods "$(ONLY)" -p claims $(CLAIMS))
# Notebook 07 reads every arm's fine-tuned models (made by `make ablations`); it reruns whenever asked.
$(NB)/07_ablations.ipynb: notebooks/07_ablations.ipynb FORCE | $(INSTALLED)
	$(call papermill,$<,-p ablations "$(ABLATIONS)")

data: $(NB)/00_data.ipynb ## Make the data and its figures (notebook 00)
hvae: $(NB)/02_counterfactuals.ipynb ## Train the HVAE, generate and score counterfactuals (01, 02)
pretrain: $(METHODS:%=$(NB)/03_pretrain-%.ipynb) ## Pre-train all eight methods (03)
finetune: $(FT_METHODS:%=$(NB)/04_finetune-%.ipynb) ## Fine-tune all nine rows, every fold (finetune.folds) (04)

# With SET="pretrain.seeds=R" the pre-training replicates beyond the profile's own (cfcl/replicates.py) are
# pre-trained and fine-tuned first, each as a variant <VARIANT>-pr<k>; notebook 06 averages over all of them.
reproduce: | $(INSTALLED) ## Run notebooks 00-06 (PROFILE=cpu|smoke|paper, VARIANT=name SET="k=v ...", ONLY="methods", JOBS=2)
	rm -rf $(NB)/.times
	plan=$$($(PY) -m cfcl.replicates plan $(PROFILE) -- $(SET) $(if $(VARIANT),variant=$(VARIANT)) $(ONLY:%=only=%)) && \
	  mkdir -p $(NB) && { [ -z "$$plan" ] || printf '%s\n' "$$plan"; } > $(NB)/.replicates
	while IFS='|' read -r v s o; do \
	  $(MAKE) -j$(JOBS) finetune PROFILE=$(PROFILE) VARIANT="$$v" SET="$$s" ONLY="$$o" || exit 1; \
	done < $(NB)/.replicates
	$(MAKE) -j$(JOBS) $(if $(PROPOSED),$(NB)/05_latent_space.ipynb) $(NB)/06_results.ipynb
	$(PY) -m cfcl.outputs timings $(NB) $(LABEL)
	@echo "done: figures/$(LABEL)/ and $(NB)/"

# --- ablations only a phantom allows (cfcl/ablations.py): each arm is a variant restricted to the methods it
# compares (their fine-tuned models, nothing else), then notebook 07 decides the contrasts. ---
ABLATIONS ?=
ablations: | $(INSTALLED) ## The ablations (ABLATIONS="dose labels ..."; all by default), then notebook 07
	plan=$$($(PY) -m cfcl.ablations plan $(PROFILE) $(ABLATIONS) -- $(SET) $(if $(VARIANT),variant=$(VARIANT))) && \
	  mkdir -p $(NB) && { [ -z "$$plan" ] || printf '%s\n' "$$plan"; } > $(NB)/.ablations
	while IFS='|' read -r v s o; do \
	  $(MAKE) -j$(JOBS) finetune PROFILE=$(PROFILE) VARIANT="$$v" SET="$$s" ONLY="$$o" || exit 1; \
	done < $(NB)/.ablations
	$(MAKE) $(NB)/07_ablations.ipynb

# --- tests ---
# Two pytest workers (pytest-xdist) with one thread each, as for the notebooks: the tests are single-threaded
# and independent (each has its own runs folder; each worker builds its own data cache).
TEST_WORKERS ?= 2
unit: | $(INSTALLED) ## Unit tests only (the 15 slowest are listed: where the test time goes)
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --durations=15

unit-fast: | $(INSTALLED) ## The fast unit tests (the inner loop)
	$(PY) -m pytest tests -q -m "not slow" -n $(TEST_WORKERS)

# nbval executes every notebook as it is (smoke defaults) and checks it runs clean; the smoke pipeline is
# made first by `make reproduce PROFILE=smoke` (and one ablation, the cheapest: two pre-trainings and two
# fine-tunings), so each notebook verifies and reuses its runs. The notebooks run on TEST_WORKERS pytest-xdist
# workers, one notebook per worker (--dist loadfile: a notebook's cells share one kernel).
NBVAL_ABLATIONS ?= labels
nbval: | $(INSTALLED) ## Run every notebook as is (smoke defaults) under nbval
	$(MAKE) reproduce PROFILE=smoke VARIANT= SET= ONLY=
	$(MAKE) ablations PROFILE=smoke VARIANT= SET= ONLY= ABLATIONS="$(NBVAL_ABLATIONS)"
	$(PY) -m pytest --nbval-lax --nbval-kernel-startup-timeout 300 --nbval-sanitize-with .ci/nbval_sanitize.cfg -p no:cacheprovider notebooks -q -n $(TEST_WORKERS) --dist loadfile

# The real-data route (docs/real_data.md) on a fixture written in the exact real formats. Two rows suffice
# there: what differs from the phantom is the data (readers, silver RLE masks, gold folder), and S-MVD-CL reads
# all of it (counterfactuals of real images, silver labels, gold fine-tuning) beside None; every other method
# runs on the same arrays in the smoke pipeline above.
REAL_DIR ?= $(or $(TMPDIR),/tmp)/cfcl-realdata-fixture
REAL_ONLY ?= none s_mvd_cl
# The fixture writer replaces REAL_DIR only when it is empty or holds an earlier fixture (its fixture.json);
# any other folder is refused with a one-line message and left as it is. The settings line it prints is
# passed on in a shell variable: no file is written beside REAL_DIR.
realdata-smoke: | $(INSTALLED) ## The whole smoke pipeline on real-format files (figures/smoke-real/)
	settings="$$($(PY) -m cfcl.data.fixture --out "$(REAL_DIR)" --force)"; \
	$(MAKE) reproduce PROFILE=smoke VARIANT=real ONLY="$(REAL_ONLY)" SET="$$settings"

lint: | $(INSTALLED) ## Lint the package, the tests and the notebooks (ruff, configured in pyproject.toml)
	$(VENV)/bin/ruff check cfcl tests notebooks

test: lint unit nbval realdata-smoke ## Lint, unit tests, every notebook under nbval, the real-data route (what CI runs)

bench: | $(INSTALLED) ## Benchmarks on CPU (ratios, written to benchmarks/results/)
	$(PY) benchmarks/bench_losses.py
	$(PY) benchmarks/bench_network.py
	$(PY) benchmarks/bench_pretrain.py
	$(PY) benchmarks/bench_startup.py

bench-gpu: | $(INSTALLED) ## The paper profile on one GPU: images/s per method, peak memory, share of bf16 peak
	$(PY) benchmarks/bench_gpu.py

profile-step: | $(INSTALLED) ## Where one pre-training and one fine-tuning step spend their time (torch.profiler)
	$(PY) benchmarks/profile_step.py --profile $(PROFILE)

# Jupyter refuses to run as root without --allow-root; containers often run as root, where this is safe.
lab: | $(INSTALLED) ## Open JupyterLab on the notebooks with the project's kernel
	$(VENV)/bin/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean-runs: ## Delete executed notebooks and runs of PROFILE (keeps the data cache)
	rm -rf runs/$(PROFILE) runs/$(PROFILE)-*

FORCE:
