"""The dbt project as Dagster sees it.

The manifest is prepared at build or test time (`make manifest`, or `dbt parse`), never at import
and never committed.
"""

from dagster_dbt import DbtProject

from ml.settings import DBT_PROJECT_DIR

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
