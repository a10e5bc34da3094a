"""Fixtures for the orchestration tests: every piece of project state in a temporary folder."""

from collections.abc import Iterator
from multiprocessing import forkserver
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


def stop_forkserver() -> None:
    """Step processes of the multiprocess executor fork from Python's forkserver, which keeps
    the environment it started with; stopping it makes the next run start one with this
    test's environment (a later test's steps would otherwise write to an earlier test's home)."""
    forkserver._forkserver._stop()


@pytest.fixture
def project_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PROPENSITY_HOME in tmp_path; step processes of a multiprocess run inherit it."""
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "local"))
    for variable in STATE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    stop_forkserver()
    yield tmp_path / "local"
    stop_forkserver()
