# `make run`: set up .venv (once) and run the default chain; `make test`: same set-up, then the test suite.
# `make test-fast`: the tests that need no Prefect server (specs, losses, models, engine), for every change;
# `make test-all`: also the tests marked slow (servers, schedules, Dask, signals, VGG19 at 224x224).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-all setup clean

setup: $(STAMP)

# Byte-code is written as modules are first imported, not for all 21,000 installed modules up front (pip's
# default, about 90 s on 2 cores); a shell that sets PYTHONDONTWRITEBYTECODE would otherwise compile torch, MLflow
# and Prefect anew in every `kdchain` process (30 s instead of 14 s of imports on a 2-core machine).
unexport PYTHONDONTWRITEBYTECODE

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kdchain run configs/digits-chain.yaml

# one pytest worker per core (at most 4), each test file on one worker: its module fixtures are built once
PYTEST := $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not flow"

test-all: $(STAMP)
	$(PYTEST)

clean:
	rm -rf mlruns/* .pytest_cache
