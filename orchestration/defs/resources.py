"""Resources: the environment-specific parts (paths come from ml.settings and its variables)."""

import shutil
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource

from ml.splits import DEFAULT_PROMOTION_CUTOFFS, DEFAULT_VALIDATION_CUTOFFS
from orchestration.project import dbt_project

# DuckDB allows one process to open the warehouse for writing, and a read-only opener fails while
# another process writes. Every asset or check that opens the warehouse runs in this pool, whose
# limit is 1 (set in the instance's dagster.yaml), so the multiprocess executor never hits a lock.
WAREHOUSE_POOL = "duckdb_warehouse"
# Studies and final models train on the machine's cores (and its GPU); two at once on the same
# cores slow each other down more than they gain (measured on 2 cores: both studies side by side
# 287 s, one after the other 180 s). The instance's default limit of 1 makes them take turns;
# where the sequence model trains on a GPU, `dagster instance concurrency set training_compute 2`
# lets the families' branches overlap.
TRAINING_POOL = "training_compute"


def dbt_executable() -> str:
    """The dbt installed beside this Python (the project's .venv), so PATH need not list it."""
    beside_python = Path(sys.executable).parent / "dbt"
    return str(beside_python) if beside_python.exists() else shutil.which("dbt") or "dbt"


class TimeRolesResource(dg.ConfigurableResource):
    """Which cutoffs play which role (ml.splits.choose_time_split), shared by every training
    asset of a run so that the study, the final models and the gate see the same windows.

    max_train_cutoffs: 0 trains on every train cutoff; N on the latest N (neighbouring daily
    cutoffs hold nearly the same rows, so a cap costs little and bounds the training time).
    """

    n_validation_cutoffs: int = DEFAULT_VALIDATION_CUTOFFS
    n_promotion_cutoffs: int = DEFAULT_PROMOTION_CUTOFFS
    max_train_cutoffs: int = 0


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
        "time_roles": TimeRolesResource(),
    }
