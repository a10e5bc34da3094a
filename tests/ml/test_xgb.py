"""XGBoost helpers: early stopping, best-iteration predictions, SHAP additivity, importance."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost
from sklearn.metrics import average_precision_score

from ml.dataset import select_features
from ml.families.xgboost.model import (
    contributions,
    feature_importance,
    predict_proba,
    to_dmatrix,
    train_xgb,
    xgb_device,
)
from ml.splits import SplitData

pytestmark = pytest.mark.usefixtures("single_thread_xgboost")

PARAMS = {"max_depth": 3, "eta": 0.3}


@pytest.fixture(scope="module")
def booster(split_data: SplitData, single_thread_xgboost: None):
    return train_xgb(
        PARAMS,
        split_data.X_train,
        split_data.y_train,
        split_data.X_validation,
        split_data.y_validation,
        device="cpu",
        num_boost_round=400,
        early_stopping_rounds=10,
    )


def test_device_is_cpu_or_cuda_and_cached() -> None:
    assert xgb_device() in ("cpu", "cuda")
    assert xgb_device() is xgb_device()  # cached: the probe runs once per process


def test_device_is_cpu_when_cuda_training_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpu(*args, **kwargs):
        raise xgboost.core.XGBoostError("no CUDA device")

    xgb_device.cache_clear()
    monkeypatch.setattr(xgboost, "train", no_gpu)
    try:
        assert xgb_device() == "cpu"
    finally:
        xgb_device.cache_clear()


def test_early_stopping_keeps_more_trees_than_it_predicts_with(booster, split_data) -> None:
    best = booster.best_iteration
    assert best < 390
    assert booster.num_boosted_rounds() == best + 1 + 10
    assert booster.feature_names == split_data.feature_columns

    scores = predict_proba(booster, split_data.X_validation)
    all_trees = booster.predict(to_dmatrix(split_data.X_validation))
    assert scores.shape == (len(split_data.y_validation),)
    assert not np.allclose(scores, all_trees)
    assert average_precision_score(split_data.y_validation, scores) > 2 * split_data.y_train.mean()


def test_training_is_reproducible(booster, split_data) -> None:
    again = train_xgb(
        {**PARAMS, "subsample": 0.8},
        split_data.X_train,
        split_data.y_train,
        split_data.X_validation,
        split_data.y_validation,
        device="cpu",
        num_boost_round=50,
        early_stopping_rounds=10,
    )
    twice = train_xgb(
        {**PARAMS, "subsample": 0.8},
        split_data.X_train,
        split_data.y_train,
        split_data.X_validation,
        split_data.y_validation,
        device="cpu",
        num_boost_round=50,
        early_stopping_rounds=10,
    )
    X = split_data.X_promotion
    np.testing.assert_array_equal(predict_proba(again, X), predict_proba(twice, X))


def test_contributions_add_up_to_the_log_odds(booster, split_data) -> None:
    X = split_data.X_promotion.head(50)
    values = contributions(booster, X)
    assert values.shape == (50, len(split_data.feature_columns) + 1)
    probabilities = predict_proba(booster, X)
    log_odds = np.log(probabilities / (1 - probabilities))
    np.testing.assert_allclose(values.sum(axis=1), log_odds, atol=1e-4)


def test_feature_importance_names_every_feature_and_ranks_signal_over_noise(booster) -> None:
    importance = feature_importance(booster)
    assert set(importance) == set(booster.feature_names)
    assert importance["carts_7d"] > importance["noise_a"]


def test_missing_feature_column_is_a_clear_error(split_data) -> None:
    with pytest.raises(ValueError, match="carts_7d"):
        select_features(
            split_data.X_promotion.drop(columns=["carts_7d"]), split_data.feature_columns
        )
    reordered = split_data.X_promotion[split_data.feature_columns[::-1]].assign(user_id=1)
    assert list(select_features(reordered, split_data.feature_columns).columns) == (
        split_data.feature_columns
    )
