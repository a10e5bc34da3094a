"""Where the project keeps its state.

Every location has an embedded default under the gitignored `.local/` folder of the repository and
an environment variable to override it. Values are read when a function is called, never at
import time, so tests and the Dagster UI can point the same code at other folders.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"


def _path_from_env(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser().resolve() if value else default


def local_dir() -> Path:
    """Root of the embedded runtime state (PROPENSITY_HOME, default `.local/`)."""
    return _path_from_env("PROPENSITY_HOME", PROJECT_ROOT / ".local")


def warehouse_path() -> Path:
    """The DuckDB warehouse file (PROPENSITY_WAREHOUSE, default `.local/warehouse.duckdb`)."""
    return _path_from_env("PROPENSITY_WAREHOUSE", local_dir() / "warehouse.duckdb")


def landing_dir() -> Path:
    """Folder where event files arrive (PROPENSITY_LANDING_DIR, default `.local/landing/`)."""
    return _path_from_env("PROPENSITY_LANDING_DIR", local_dir() / "landing")


def dagster_home() -> Path:
    """The Dagster instance folder (DAGSTER_HOME, default `.local/dagster/`)."""
    return _path_from_env("DAGSTER_HOME", local_dir() / "dagster")


def mlflow_tracking_uri() -> str:
    """MLflow tracking store (MLFLOW_TRACKING_URI, default sqlite:///.local/mlflow.db)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local_dir() / 'mlflow.db'}"


def mlflow_artifacts_dir() -> Path:
    """Where new MLflow experiments keep artifacts (PROPENSITY_MLFLOW_ARTIFACTS, default
    `.local/mlartifacts/`)."""
    return _path_from_env("PROPENSITY_MLFLOW_ARTIFACTS", local_dir() / "mlartifacts")


def optuna_storage() -> str:
    """Optuna storage: a journal file path, or an RDB URL such as postgresql://... for several
    machines (PROPENSITY_OPTUNA_STORAGE, default `.local/optuna.journal`)."""
    return os.environ.get("PROPENSITY_OPTUNA_STORAGE") or str(local_dir() / "optuna.journal")


def training_dir() -> Path:
    """Intermediate training data such as the resampled training split (PROPENSITY_TRAINING_DIR,
    default `.local/training/`)."""
    return _path_from_env("PROPENSITY_TRAINING_DIR", local_dir() / "training")


def encoder_path() -> Path:
    """The pretrained behaviour encoder that purchase-model trials fine-tune (one file,
    replaced by each pretraining run; `ml.families.torch_seq.pretrain`)."""
    return training_dir() / "behaviour_encoder.pt"
