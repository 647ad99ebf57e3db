# Neuron Atlas — the two commands of the README:
#   make demo   set up, ingest the shipped demo cohort into an embedded PostgreSQL, open the UI
#   make test   set up, then run the whole test suite against a real PostgreSQL
# Both create/reuse .venv and install the pinned dependencies (torch pinned: see README).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test setup browser bench clean-demo help

help:
	@echo "make demo   ingest the shipped demo cohort, then open the atlas UI"
	@echo "make test   run the test suite (installs everything it needs)"
	@echo "make bench  run the CPU benchmarks and record results in bench/results/"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,syntax]"
	@touch $(STAMP)

# Debian's chromium drives the real-browser UI tests. Elsewhere they skip with the reason when it
# is missing; in CI (CI=true) a browser that cannot be installed fails here, and those tests fail.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 || case "$${CI:-}" in \
	    [Tt]rue|TRUE|1|yes) echo "CI=true and chromium could not be installed (needs root and apt-get): the browser tests must run in CI" >&2; exit 1;; \
	    *) echo "chromium not installed (needs root and apt-get): the browser tests will be skipped";; \
	  esac; }

demo: $(STAMP)
	$(BIN)/atlas demo
	$(BIN)/atlas ui

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean-demo:
	-$(BIN)/atlas db stop
	rm -rf .atlas
