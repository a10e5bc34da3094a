"""The baselines: a constant base rate, a fixed recency-frequency heuristic and logistic
regression, and that the last two really rank buyers better than the base rate on a warehouse
built by dbt from synthetic traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from ml.baselines import (
    HEURISTIC_COLUMNS,
    base_rate_scores,
    fit_logistic_regression,
    recency_frequency_scores,
)
from ml.dataset import load_cutoffs, load_labeled_features
from ml.evaluation import evaluate
from ml.splits import SplitData, choose_time_split, split_by_time
from tests.ml.test_dataset import build_small_warehouse


@pytest.fixture(scope="module")
def warehouse_split(tmp_path_factory: pytest.TempPathFactory) -> SplitData:
    warehouse: Path = build_small_warehouse(tmp_path_factory)
    return split_by_time(
        load_labeled_features(warehouse),
        # 14 days with a 3-day horizon: room for two validation and two promotion cutoffs.
        choose_time_split(load_cutoffs(warehouse), n_validation=2, n_promotion=2),
    )


def shoppers(**columns: list[float]) -> pd.DataFrame:
    """Rows with the heuristic's columns; unset columns are 0 events, last seen long ago."""
    n = len(next(iter(columns.values())))
    frame = pd.DataFrame(
        {
            "hours_since_last_cart": [np.nan] * n,
            "hours_since_last_event": [1e6] * n,
            "carts_7d": [0.0] * n,
            "events_7d": [0.0] * n,
            "sessions_lookback": [0.0] * n,
            "unrelated": [123.0] * n,
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def test_base_rate_is_the_training_share_of_buyers() -> None:
    scores = base_rate_scores(np.array([0, 0, 0, 1]), 6)
    assert scores.tolist() == [0.25] * 6


def test_heuristic_by_hand() -> None:
    X = shoppers(
        hours_since_last_cart=[48.0, np.nan],
        hours_since_last_event=[72.0, 0.0],
        carts_7d=[2.0, 0.0],
        events_7d=[20.0, 0.0],
        sessions_lookback=[5.0, 0.0],
    )
    # Row 0: every term at its half-life or half-saturation: 0.5 * (sum of weights) = 0.5.
    # Row 1: never carted (0), seen just now (weight 0.20 * 1), nothing else.
    assert recency_frequency_scores(X) == pytest.approx([0.5, 0.2])


def test_heuristic_grows_with_recency_and_frequency() -> None:
    later_carts = recency_frequency_scores(shoppers(hours_since_last_cart=[np.nan, 500, 50, 5]))
    assert np.all(np.diff(later_carts) > 0)
    more_events = recency_frequency_scores(shoppers(events_7d=[0, 1, 10, 100, 1e9]))
    assert np.all(np.diff(more_events) > 0)
    busiest = shoppers(
        hours_since_last_cart=[0.0],
        hours_since_last_event=[0.0],
        carts_7d=[1e9],
        events_7d=[1e9],
        sessions_lookback=[1e9],
    )
    assert 0.99 < recency_frequency_scores(busiest)[0] <= 1.0
    assert recency_frequency_scores(shoppers(carts_7d=[0.0]))[0] >= 0.0

    with pytest.raises(KeyError, match="carts_7d"):
        recency_frequency_scores(shoppers(carts_7d=[1.0]).drop(columns="carts_7d"))
    assert set(HEURISTIC_COLUMNS) <= set(shoppers(carts_7d=[1.0]).columns)


def test_logistic_regression_handles_nan_and_sample_weights() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.uniform(size=n) < 0.1).astype(int)
    X = pd.DataFrame({"signal": rng.normal(size=n) + 2 * y, "noise": rng.normal(size=n)})
    X.loc[rng.uniform(size=n) < 0.3, "noise"] = np.nan

    model = fit_logistic_regression(X, y, seed=0)
    weighted = fit_logistic_regression(X, y, seed=0, sample_weight=np.where(y == 1, 9.0, 1.0))

    assert isinstance(model, Pipeline)
    scores = model.predict_proba(X)[:, 1]
    assert scores.shape == (n,) and np.all((scores > 0) & (scores < 1))
    assert scores[y == 1].mean() > scores[y == 0].mean()
    # Weighting the positives up raises the predicted probabilities.
    assert weighted.predict_proba(X)[:, 1].mean() > scores.mean() + 0.1


def test_heuristic_and_logistic_regression_beat_the_base_rate(warehouse_split: SplitData) -> None:
    y_promotion = warehouse_split.y_promotion
    assert y_promotion.sum() >= 10  # enough buyers for PR-AUC to mean something
    base = evaluate(
        y_promotion, base_rate_scores(warehouse_split.y_train, len(y_promotion)), threshold=0.5
    )
    heuristic = evaluate(
        y_promotion, recency_frequency_scores(warehouse_split.X_promotion), threshold=0.5
    )
    model = fit_logistic_regression(warehouse_split.X_train, warehouse_split.y_train)
    logistic = evaluate(
        y_promotion, model.predict_proba(warehouse_split.X_promotion)[:, 1], threshold=0.5
    )

    # A constant score ranks nobody first: its PR-AUC is the share of buyers.
    assert base["pr_auc"] == pytest.approx(y_promotion.mean())
    assert heuristic["pr_auc"] > 2 * base["pr_auc"]
    assert logistic["pr_auc"] > 2 * base["pr_auc"]
    assert heuristic["roc_auc"] > 0.6 and logistic["roc_auc"] > 0.6
    # Its probabilities are worth more than the base rate too (the raw-scaled model's were not).
    assert logistic["log_loss"] < base["log_loss"]
