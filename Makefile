# Two entry points for a fresh machine:
#   make demo   create .venv, install what the demo needs (torch==2.13.0 first), run the demo
#   make test   create or update .venv with the dev extras, run the whole suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP_DEMO := $(VENV)/.demo-installed
STAMP_TEST := $(VENV)/.test-installed
# the optional C accelerators (setup.py): rebuilt when their sources change; `make test` insists
# that they build (VAUBAN_TRACE_REQUIRE_NATIVE=1), `make demo` falls back to pure Python without
# a compiler
NATIVE_SRC := setup.py $(wildcard src/vauban_trace/*/_c*.c src/vauban_trace/*/_c*/*.c src/vauban_trace/*/_c*/*.h)

.PHONY: demo test install-demo install-test lint typecheck bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP_DEMO): pyproject.toml $(NATIVE_SRC) | $(BIN)/python
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[torch]'
	touch $@

$(STAMP_TEST): pyproject.toml $(NATIVE_SRC) $(STAMP_DEMO)
	VAUBAN_TRACE_REQUIRE_NATIVE=1 $(PIP) install --quiet -e '.[torch,mlx,dev]'
	touch $@

install-demo: $(STAMP_DEMO)
install-test: $(STAMP_TEST)

demo: $(STAMP_DEMO)
	$(BIN)/vauban-trace demo

test: $(STAMP_TEST)
	VAUBAN_TRACE_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q

lint: $(STAMP_TEST)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP_TEST)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .vauban .pytest_cache
