# Two commands do everything: `make run` and `make test`. Both create the virtualenv and install
# on first use (and again when pyproject.toml changes): `make run` what running needs (the app and
# its embedded servers), `make test` the development tools on top.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
PYTEST_ARGS ?=
# Everything make starts is a local run: settings accept the development SECRET_KEY.
export INGESTOR_LOCAL ?= true

.PHONY: install install-test run test test-fast lint format check-python bench clean

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ingestor needs Python >= 3.11; set PYTHON=python3.11 (or newer)")'

$(PY): | check-python
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check ".[local]"
	@touch $@

$(TEST_STAMP): pyproject.toml $(RUN_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check ".[local,dev]"
	@touch $@

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

run: install
	$(PY) -m ingestor_site.stack run

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

format: install-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m ingestor_site.stack exec -- $(PY) -m pytest $(PYTEST_ARGS)

# The fast lane: lint and every test that needs no live server subprocess (about a minute).
test-fast: lint
	$(PY) -m ingestor_site.stack exec -- $(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# Regenerates BENCHMARKS.md (own embedded PostgreSQL/Redis, the load generator, wrk and py-spy; ~25 min).
bench: install-test
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) .data staticfiles .pytest_cache .mypy_cache .ruff_cache test-output
