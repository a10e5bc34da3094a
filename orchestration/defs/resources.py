"""Resources: the environment-specific parts (paths come from ml.settings and its variables)."""

import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.project import dbt_project


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {"dbt": DbtCliResource(project_dir=dbt_project)}
