# Two commands for a newcomer:  `make run LIBRARY=~/Pictures`  and  `make test`.
# Each creates .venv (if needed) and installs everything it needs into it.
PYTHON ?= python3
VENV   ?= .venv
LIBRARY ?= $(HOME)/Pictures
ARGS   ?=
BIN     = $(VENV)/bin

.PHONY: run test test-all lint bench venv clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "simd needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv is missing; installing Debian's python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi && \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/simd serve "$(LIBRARY)" $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check simd tests

bench: $(VENV)/.installed-test
	$(BIN)/python tests/bench/bench_decode.py
	$(BIN)/python tests/bench/bench_embed.py
	$(BIN)/python tests/bench/bench_query.py
	$(BIN)/python tests/bench/bench_reconcile.py
	$(BIN)/python tests/bench/bench_freshness.py

clean:
	rm -rf $(VENV) build *.egg-info
