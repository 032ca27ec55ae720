# `make run`: set up .venv (once) and run the default chain; `make test`: same set-up, then the test suite.
# `make test-fast`: the tests that need no Prefect server (specs, losses, models, engine), for every change;
# `make test-all`: also the tests marked slow (servers, schedules, Dask, signals, VGG19 at 224x224).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-all setup clean

setup: $(STAMP)

# pip's own byte-compiling runs on one core; compileall on every core does the same about twice as fast (the
# .pyc files matter here: with PYTHONDONTWRITEBYTECODE set, each `kdchain` process would compile its imports anew)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kdchain run configs/digits-chain.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not flow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf mlruns/* .pytest_cache
