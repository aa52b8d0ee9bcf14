# Two commands do everything: `make run` and `make test`. Both create the virtualenv and install
# on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint format check-python bench clean

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ingestor needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'

$(STAMP): pyproject.toml | check-python
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m ingestor_site.stack run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m ingestor_site.stack exec -- $(PY) -m pytest $(PYTEST_ARGS)

# The fast lane: lint and every test that needs no live server subprocess (about a minute).
test-fast: lint
	$(PY) -m ingestor_site.stack exec -- $(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# Regenerates BENCHMARKS.md (own embedded PostgreSQL/Redis, the load generator and wrk; ~10 min).
bench: install
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) .data staticfiles .pytest_cache .mypy_cache .ruff_cache test-output
