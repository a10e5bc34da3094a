"""Fixtures for the model tests: a small synthetic split and a real MLflow store per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.splits import SplitData, TimeSplit

FEATURES = ["carts_7d", "views_7d", "hours_since_last_cart", "purchases_lookback", "noise_a"]


def synthetic_rows(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Float64 features with NaN (never carted) and labels that depend on them (~10% buyers)."""
    carts = rng.poisson(0.6, n).astype(float)
    views = carts * 3 + rng.poisson(4, n)
    hours = np.where(carts > 0, rng.exponential(48, n), np.nan)
    purchases = rng.poisson(0.3, n).astype(float)
    noise = rng.normal(size=n)
    recency = np.where(np.isnan(hours), 0.0, np.exp(-np.nan_to_num(hours) / 48))
    logit = -3.2 + 0.9 * carts + 1.2 * recency + 0.6 * purchases
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    X = pd.DataFrame(
        {
            "carts_7d": carts,
            "views_7d": views.astype(float),
            "hours_since_last_cart": hours,
            "purchases_lookback": purchases,
            "noise_a": noise,
        }
    )
    return X, y


def make_split_data(seed: int = 0, n_train: int = 2000, n_eval: int = 800) -> SplitData:
    """SplitData shaped like `ml.splits.split_by_time` returns, without a warehouse."""
    rng = np.random.default_rng(seed)
    X_train, y_train = synthetic_rows(n_train, rng)
    X_validation, y_validation = synthetic_rows(n_eval, rng)
    X_test, y_test = synthetic_rows(n_eval, rng)
    start = datetime(2025, 9, 1)
    split = TimeSplit(
        train_cutoffs=tuple(start + timedelta(days=d) for d in range(5)),
        validation_cutoff=start + timedelta(days=9),
        test_cutoff=start + timedelta(days=13),
        horizon=timedelta(days=3),
    )
    keys_test = pd.DataFrame({"user_id": np.arange(n_eval), "cutoff_time": split.test_cutoff})
    return SplitData(
        X_train=X_train,
        y_train=y_train,
        X_validation=X_validation,
        y_validation=y_validation,
        X_test=X_test,
        y_test=y_test,
        keys_test=keys_test,
        feature_columns=list(FEATURES),
        split=split,
    )


@pytest.fixture(scope="session")
def split_data() -> SplitData:
    return make_split_data()


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real sqlite tracking store and artifact folder in tmp_path, active for one test."""
    # Imported here so the other tests in this folder do not pay for importing MLflow.
    import mlflow

    from ml.tracking import configure_mlflow

    previous_uri = mlflow.get_tracking_uri()
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; monkeypatch restores it afterwards.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
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
