"""Resources: the environment-specific parts (paths come from ml.settings and its variables)."""

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.project import dbt_project

# DuckDB allows one process to open the warehouse for writing, and a read-only opener fails while
# another process writes. Every asset or check that opens the warehouse runs in this pool, whose
# limit is 1 (set in the instance's dagster.yaml), so the multiprocess executor never hits a lock.
WAREHOUSE_POOL = "duckdb_warehouse"


def dbt_executable() -> str:
    """The dbt installed beside this Python (the project's .venv), so PATH need not list it."""
    beside_python = Path(sys.executable).parent / "dbt"
    return str(beside_python) if beside_python.exists() else shutil.which("dbt") or "dbt"


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())}
