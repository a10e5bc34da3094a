"""Fixtures for the orchestration tests: every piece of project state in a temporary folder."""

from pathlib import Path

import pytest

STATE_VARIABLES = (
    "PROPENSITY_WAREHOUSE",
    "PROPENSITY_LANDING_DIR",
    "PROPENSITY_MLFLOW_ARTIFACTS",
    "PROPENSITY_OPTUNA_STORAGE",
    "PROPENSITY_TRAINING_DIR",
    "MLFLOW_TRACKING_URI",
    "PROPENSITY_SCHEDULE_TIMEZONE",
    "PROPENSITY_AUTOMATION",
)


@pytest.fixture
def project_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PROPENSITY_HOME in tmp_path; step processes of a multiprocess run inherit it."""
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "local"))
    for variable in STATE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "local"
