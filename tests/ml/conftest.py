"""Fixtures for the model tests: a small synthetic split and a real MLflow store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.splits import SplitData
from ml.synthetic_split import make_split_data


@pytest.fixture(scope="session")
def split_data() -> SplitData:
    return make_split_data()


@pytest.fixture(scope="session")
def sequence_split_data() -> SplitData:
    """`make_split_data` with event sequences, for the sequence-model tests."""
    return make_split_data(with_sequences=True)


@pytest.fixture(scope="module")
def single_thread_torch() -> Iterator[None]:
    """One torch thread for a test module, restored afterwards. On these tiny batches a second
    thread gains nothing, and when other processes share the 2 cores, OpenMP threads waiting
    for a descheduled partner made a training step about 25x slower (measured)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real sqlite tracking store and artifact folder in tmp_path, active for one test."""
    # Imported here so the other tests in this folder do not pay for importing MLflow.
    import mlflow

    from ml.tracking import configure_mlflow

    previous_uri = mlflow.get_tracking_uri()
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID and mlflow.set_tracking_uri exports
    # MLFLOW_TRACKING_URI; monkeypatch restores both afterwards, so no later test or server
    # started by one inherits this store (or, after the restore below, ./mlflow.db).
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_mlflow(
        f"sqlite:///{tmp_path / 'mlflow.db'}", "purchase-propensity", tmp_path / "mlartifacts"
    )
    yield tmp_path
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous_uri)


@pytest.fixture(scope="module")
def single_thread_xgboost() -> Iterator[None]:
    """One XGBoost thread for a test module: on these tiny frames it is as fast as several, and
    it does not slow down severalfold when other processes share the CPU (OpenMP threads wait
    for each other). XGBoost's global config is per thread; Optuna here runs trials inline."""
    import xgboost as xgb

    with xgb.config_context(nthread=1):
        yield
