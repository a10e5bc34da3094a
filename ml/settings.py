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


def mlflow_artifact_location() -> str | None:
    """The artifact location a new experiment is created with: PROPENSITY_MLFLOW_ARTIFACTS when
    set; None (the server's own artifact root, which every machine reaches through it) when
    MLFLOW_TRACKING_URI is an MLflow server; else `mlflow_artifacts_dir()`."""
    if os.environ.get("PROPENSITY_MLFLOW_ARTIFACTS"):
        return str(mlflow_artifacts_dir())
    if mlflow_tracking_uri().startswith(("http://", "https://")):
        return None
    return str(mlflow_artifacts_dir())


def optuna_storage() -> str:
    """Optuna storage: a journal file path, or an RDB URL such as postgresql://... for several
    machines (PROPENSITY_OPTUNA_STORAGE, default `.local/optuna.journal`)."""
    return os.environ.get("PROPENSITY_OPTUNA_STORAGE") or str(local_dir() / "optuna.journal")


def optuna_heartbeat_seconds() -> int:
    """Seconds between a running trial's heartbeats in an RDB storage
    (PROPENSITY_OPTUNA_HEARTBEAT_SECONDS, default 60); a trial silent for three of them is
    failed and queued again."""
    value = os.environ.get("PROPENSITY_OPTUNA_HEARTBEAT_SECONDS") or "60"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"PROPENSITY_OPTUNA_HEARTBEAT_SECONDS must be a number >= 1: {value}")
    return int(value)


def without_password(url: str) -> str:
    """`url` with its password masked, for logs and metadata: a storage URL such as
    postgresql://user:secret@host/db names a secret that must not land on disk."""
    scheme, separator, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not separator or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}"


def training_dir() -> Path:
    """Intermediate training data such as the resampled training split (PROPENSITY_TRAINING_DIR,
    default `.local/training/`)."""
    return _path_from_env("PROPENSITY_TRAINING_DIR", local_dir() / "training")


def encoder_path() -> Path:
    """The pretrained behaviour encoder that purchase-model trials fine-tune (one file,
    replaced by each pretraining run; `ml.families.torch_seq.pretrain`)."""
    return training_dir() / "behaviour_encoder.pt"
