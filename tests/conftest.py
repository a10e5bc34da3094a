"""Shared test helpers: a real dbt CLI against real DuckDB files in temporary folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from ml.data.pseudonyms import DEVELOPMENT_VARIABLE
from ml.settings import DBT_PROJECT_DIR, PROJECT_ROOT

BIN_DIR = Path(sys.executable).parent
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"


def pytest_configure(config: pytest.Config) -> None:
    """The Dagster definitions need dbt's manifest; prepare it once, as `make manifest` does."""
    os.environ["PATH"] = f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    # Test data is synthetic or public: development mode's public pseudonym salt is enough.
    # Tests of the salt itself set or remove it (tests/test_privacy.py).
    os.environ.setdefault(DEVELOPMENT_VARIABLE, "1")
    if not (DBT_PROJECT_DIR / "target" / "manifest.json").exists():
        subprocess.run(
            ["dbt", "parse", "--quiet", "--profiles-dir", "."], cwd=DBT_PROJECT_DIR, check=True
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with tests marked `slow(minutes)` first, the longest first (the others in their
    order): under `make test`'s two processes, which take whole files, the long files start
    early instead of leaving one process working alone at the end."""
    minutes: dict[Path, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            minutes[item.path] = minutes.get(item.path, 0.0) + marker.args[0]
    items.sort(key=lambda item: -minutes.get(item.path, 0.0))


def run_dbt(
    warehouse: Path,
    command: str = "build",
    dbt_vars: dict | None = None,
    select: str = "",
    check: bool = True,
    env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess:
    """Runs the real dbt CLI on `warehouse`, with its own target and log folders beside it so
    runs never collide. `env` sets (or, with None, removes) environment variables for this run;
    with check=False a failure is returned instead of failing the test."""
    args = [
        "dbt",
        command,
        "--profiles-dir",
        ".",
        "--target-path",
        str(warehouse.parent / "target"),
        "--log-path",
        str(warehouse.parent / "logs"),
    ]
    if dbt_vars:
        args += ["--vars", json.dumps(dbt_vars)]
    if select:
        args += ["--select", select]
    environment = {**os.environ, "PROPENSITY_WAREHOUSE": str(warehouse)}
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    result = subprocess.run(
        args, cwd=DBT_PROJECT_DIR, env=environment, capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, f"dbt {command} failed:\n{result.stdout[-4000:]}"
    return result


@contextmanager
def keyed_warehouse(warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory connection with `pseudonym()` registered and `warehouse` attached
    read-only as `wh`: tests map raw ids (they may read the raw layer) to the marts' keys."""
    from ml.data.dbt_plugin import register_pseudonym

    with duckdb.connect() as con:
        register_pseudonym(con)
        con.execute("attach ? as wh (read_only)", [str(warehouse)])
        yield con


def query(warehouse: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.sql(sql).fetchall()


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.exists():
        pytest.skip(f"the team's sample datasets are not at {SHARED_DATASETS}")
    return SHARED_DATASETS
