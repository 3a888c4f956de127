# Two commands for a fresh machine: `make train` and `make test` (each sets everything up first).
PYTHON ?= python3
VENV ?= .venv
# This machine has no internet: take torch's CPU build from local disk. On a GPU machine use e.g.
# `make train TORCH_SPEC="torch>=2.11"` to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# A local mirror of the raw data and tokenizer (<mirror>/tinyshakespeare/input.txt, <mirror>/gpt2/gpt2.tiktoken);
# without one, data is downloaded.
export NANODIST_DATA_MIRROR ?= $(wildcard $(abspath ../shared/data))
PY := $(VENV)/bin/python

.PHONY: setup train test soak
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# Trains the default (4-layer GPT on shakespeare_char, one CPU process) and prints a sample.
train: setup
	$(PY) launch.py

# Two tests at a time (the SLURM ones one after another: they share the cluster); many tests mostly wait.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup

# The multi-process tests (SLURM ones included when a cluster is up), 20 rounds in a row: gloo
# teardown must never abort a run. Three tests at a time (the SLURM ones one after another, they
# share the cluster): 10-12 minutes a round on 2 cores.
SOAK_ROUNDS ?= 20
soak: setup
	for i in $$(seq $(SOAK_ROUNDS)); do \
	  echo "soak round $$i/$(SOAK_ROUNDS) started $$(date -u +%FT%TZ)"; \
	  $(PY) -m pytest -q -x -m multiprocess -n 3 --dist loadgroup -p no:cacheprovider || exit 1; \
	done; echo "soak: $(SOAK_ROUNDS) rounds in a row passed $$(date -u +%FT%TZ)"
