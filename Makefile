# `make run`: set up .venv (once) and run the default chain; `make test`: same set-up, then the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kdchain run configs/digits-chain.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)  # also the tests marked slow (the example at 224x224, two-rank training, a Dask sweep): ~4 CPU minutes more
	$(BIN)/python -m pytest -q

clean:
	rm -rf mlruns/* .pytest_cache
