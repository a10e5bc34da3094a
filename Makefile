# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dagster-dbt calls the `dbt` executable: the environment's bin/ must be on PATH.
export PATH := $(BIN):$(PATH)
export DAGSTER_HOME ?= $(CURDIR)/.local/dagster
# Pseudonyms are keyed with PROPENSITY_PSEUDONYM_SALT (ml/data/pseudonyms.py). The demo shop
# and the tests run in development mode, with a public salt that protects nothing; `make run`
# says so in its summary. For a real shop: export PROPENSITY_PSEUDONYM_SALT from your secret
# store and run with DEVELOPMENT=0, so that a missing salt stops the build.
DEVELOPMENT ?= 1
export PROPENSITY_DEVELOPMENT := $(DEVELOPMENT)

INSTALLED := $(VENV)/.installed
# Where a local torch CPU wheel is kept (these machines: /opt/wheels); uv only looks there if told.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)/*.whl),--find-links $(WHEELS))
MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := $(shell find dbt_project -path dbt_project/target -prune -o -type f \( -name '*.sql' -o -name '*.yml' -o -name '*.csv' \) -print)

.PHONY: serve run nightly test lint format validate manifest ui bench clean

# --compile-bytecode: every step, test and dbt process imports mlflow, torch and dagster; with
# PYTHONDONTWRITEBYTECODE set (as on these machines) nothing else would ever cache their bytecode
# and each import would compile them again (import mlflow: 11.5 s -> 4.4 s).
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.8
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(FIND_LINKS) -e ".[dev]"
	touch $@

# dbt's manifest is prepared here, never committed and never parsed at import.
$(MANIFEST): $(INSTALLED) $(DBT_SOURCES)
	cd dbt_project && dbt parse --quiet --profiles-dir .

manifest: $(MANIFEST)

# DAGSTER_HOME gets a dagster.yaml with the warehouse pool limit (orchestration/instance.py).
run: $(MANIFEST)
	$(BIN)/python -m orchestration.instance
	$(BIN)/python -m orchestration.run

# One simulated night after `make run`: the next day of the demo shop, then nightly_retraining
# (what the 02:00 schedule runs). N_TRIALS=5 makes the night's study smaller.
nightly: $(MANIFEST)
	$(BIN)/python -m orchestration.instance
	$(BIN)/python -m orchestration.nightly $(if $(N_TRIALS),--n-trials $(N_TRIALS))

# The tests' temporary folders (DuckDB files, SQLite stores, Dagster's event log, MLflow's and
# Optuna's files) go to memory where /dev/shm has 4 GB free: their many small synced writes
# take about twice as long on this disk (bench/event_log_writes.py), a whole test about 10 %
# longer (docs/testing.md). TEST_TMPDIR= keeps them in the default.
TEST_TMPDIR ?= $(shell df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 && $$4 > 4000000 {print "/dev/shm"}')

# Two test processes, each taking whole files (module fixtures are built once), the files
# with slow tests first: one pipeline test leaves a core idle most of the time.
TEST_WORKERS ?= 2

test: $(MANIFEST) lint
	$(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

validate: $(MANIFEST)
	$(BIN)/python -m orchestration.instance
	dagster definitions validate -w workspace.yaml

# Dagster on :3000 and MLflow on :5000 (DAGSTER_PORT, MLFLOW_PORT); `make ui OPTUNA_DASHBOARD=1`
# also serves the Optuna dashboard on :8080 (OPTUNA_DASHBOARD_PORT). Ctrl-C stops them all.
ui: $(MANIFEST)
	$(BIN)/python -m orchestration.ui $(if $(filter 1 true yes,$(OPTUNA_DASHBOARD)),--optuna-dashboard)

# The scoring service on http://127.0.0.1:8000 (SERVE_PORT), over what `make run` left: the
# champion in MLflow and the snapshot the run published. OpenAPI docs at /docs.
serve: $(MANIFEST)
	$(BIN)/propensity serve --port $(or $(SERVE_PORT),8000)

bench: $(MANIFEST)
	$(BIN)/python bench/feature_build.py

clean:
	rm -rf .local dbt_project/target dbt_project/logs
