# Two commands for a newcomer:  `make run LIBRARY=~/Pictures`  and  `make test`.
# Each creates .venv (if needed) and installs everything it needs into it.
# For a system service: `sudo make install` (a venv of its own in $(PREFIX)/venv, see README).
PYTHON ?= python3
VENV   ?= .venv
LIBRARY ?= $(HOME)/Pictures
ARGS   ?=
BIN     = $(VENV)/bin

# `make install`: a self-contained copy in $(PREFIX)/venv (systemd/simd@.service runs
# /opt/simd/venv/bin/simd). INSTALL_ARGS go to pip (the tests use --no-deps).
PREFIX ?= /opt/simd
INSTALL_ARGS ?=
IVENV   = $(PREFIX)/venv
# The interpreter behind $(PYTHON), should it be a venv's (an activated .venv): the install's venv
# is made from it, so that not even its pyvenv.cfg names this checkout.
BASEPY  = $(shell $(PYTHON) -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
# A venv belongs to one interpreter: one made by another (a Python upgrade, another PYTHON) is remade.
PYID    = import sys; print(sys.base_prefix, sys.version_info[:2])
# The service user runs the venv's Python: warn if its interpreter or stdlib is not open to others
# (e.g. a pyenv Python under /root).
PYOPEN  = import os, sys; from pathlib import Path; \
  closed = [str(p) for f in (os.path.realpath(sys.executable), os.path.dirname(os.__file__)) \
            for p in (Path(f), *Path(f).parents) if not os.stat(p).st_mode & 0o001]; \
  closed and print("warning: other users (such as the service user) cannot reach " + closed[0] + \
                   "; make install again with PYTHON=/usr/bin/python3")

.PHONY: run test test-reliability test-all lint bench venv clean install uninstall

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

# The slow reliability tests (kill -9 of simd serve, twenty times mid-index; a burst of files
# while 20 clients query); CI runs them too.
test-reliability: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow tests/test_crash_serve.py tests/test_burst_clients.py $(ARGS)

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)

# Lint gates every change (.ci/run runs it before the tests): rules, formatting, types.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check simd tests
	$(BIN)/ruff format --check simd tests
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	$(BIN)/python tests/bench/bench_decode.py
	$(BIN)/python tests/bench/bench_embed.py
	$(BIN)/python tests/bench/bench_query.py
	$(BIN)/python tests/bench/bench_reconcile.py
	$(BIN)/python tests/bench/bench_freshness.py

clean:
	rm -rf $(VENV) build *.egg-info

# Re-running it upgrades: simd is rebuilt from this tree and reinstalled, dependencies are updated
# only as far as pyproject.toml requires. Nothing is written into this tree (the wheel is built from
# a copy), and nothing installed refers back to it (no editable install, no direct_url.json).
install:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path other than / (got '$(PREFIX)')"; exit 2;; esac
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "simd needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	@if [ -e $(IVENV) ] && [ "$$($(IVENV)/bin/python -c '$(PYID)' 2>/dev/null)" != "$$($(BASEPY) -c '$(PYID)')" ]; then \
	  if [ -f $(IVENV)/bin/simd ]; then echo "$(IVENV) was made by another Python: making it anew"; rm -rf $(IVENV); \
	  else echo "$(IVENV) exists and is not a venv of $(PYTHON): remove it or choose another PREFIX"; exit 1; fi; fi
	@umask 022; [ -x $(IVENV)/bin/python ] || { mkdir -p $(PREFIX) && \
	  { $(BASEPY) -m venv $(IVENV) 2>/dev/null || { \
	    echo "python3 -m venv is missing; installing Debian's python3-venv"; \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi && \
	    rm -rf $(IVENV) && $(BASEPY) -m venv $(IVENV); }; } && \
	  $(IVENV)/bin/python -m pip install -q --upgrade pip; }
	@set -e; umask 022; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; mkdir "$$tmp/src"; \
	  tar --exclude=__pycache__ -cf - pyproject.toml README.md simd | tar -xf - -C "$$tmp/src"; \
	  $(IVENV)/bin/pip wheel -q --no-deps --wheel-dir "$$tmp/dist" "$$tmp/src"; \
	  whl=$$(echo "$$tmp"/dist/simd-*.whl); ver=$${whl##*/simd-}; ver=$${ver%%-*}; \
	  echo "installing simd $$ver and its dependencies into $(IVENV) (the first time: minutes, ~1.8 GB)"; \
	  $(IVENV)/bin/pip install -q $(INSTALL_ARGS) "$$whl"; \
	  $(IVENV)/bin/pip install -q $(INSTALL_ARGS) --force-reinstall --no-deps --no-index \
	    --find-links "$$tmp/dist" "simd==$$ver"
	@$(IVENV)/bin/python -c '$(PYOPEN)'
	@echo "installed: $$($(IVENV)/bin/simd --version) in $(IVENV)/bin/simd"

uninstall:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path other than / (got '$(PREFIX)')"; exit 2;; esac
	@if [ -f $(IVENV)/pyvenv.cfg ] && [ -f $(IVENV)/bin/simd ]; then rm -rf $(IVENV) && echo "removed $(IVENV)"; \
	  elif [ -e $(IVENV) ]; then echo "$(IVENV) holds no simd venv: left alone (remove it by hand)"; \
	  else echo "nothing to remove: no $(IVENV)"; fi
	@rmdir $(PREFIX) 2>/dev/null || true
