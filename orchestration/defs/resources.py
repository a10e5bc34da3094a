"""Resources: the environment-specific parts (paths come from ml.settings and its variables)."""

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.project import dbt_project


def dbt_executable() -> str:
    """The dbt installed beside this Python (the project's .venv), so PATH need not list it."""
    beside_python = Path(sys.executable).parent / "dbt"
    return str(beside_python) if beside_python.exists() else shutil.which("dbt") or "dbt"


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())}
