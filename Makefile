# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dagster-dbt calls the `dbt` executable: the environment's bin/ must be on PATH.
export PATH := $(BIN):$(PATH)
export DAGSTER_HOME ?= $(CURDIR)/.local/dagster

INSTALLED := $(VENV)/.installed
# Where a local torch CPU wheel is kept (these machines: /opt/wheels); uv only looks there if told.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)/*.whl),--find-links $(WHEELS))
MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := $(shell find dbt_project -path dbt_project/target -prune -o -type f \( -name '*.sql' -o -name '*.yml' -o -name '*.csv' \) -print)

.PHONY: run test lint format validate manifest ui bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.8
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(FIND_LINKS) -e ".[dev]"
	touch $@

# dbt's manifest is prepared here, never committed and never parsed at import.
$(MANIFEST): $(INSTALLED) $(DBT_SOURCES)
	cd dbt_project && dbt parse --quiet --profiles-dir .

manifest: $(MANIFEST)

run: $(MANIFEST)
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.run

test: $(MANIFEST) lint
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

validate: $(MANIFEST)
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	dagster definitions validate -w workspace.yaml

ui: $(MANIFEST)
	$(BIN)/python -m orchestration.ui

bench: $(MANIFEST)
	$(BIN)/python bench/feature_build.py

clean:
	rm -rf .local dbt_project/target dbt_project/logs
