"""XGBoost training on the native API: one place that turns feature frames into a booster, so
tuning trials and the final model are trained the same way.

Feature frames are float64 pandas DataFrames with NaN for missing values; XGBoost treats NaN as
missing natively, so no imputation happens here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

VALIDATION_NAME = "validation"
EVAL_METRIC = "aucpr"
# The key the pruning callback watches: "<evaluation set name>-<metric>".
VALIDATION_METRIC_KEY = f"{VALIDATION_NAME}-{EVAL_METRIC}"

BASE_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": EVAL_METRIC,
    "tree_method": "hist",
    "seed": 0,
    "verbosity": 1,
}


@cache
def xgb_device() -> str:
    """Returns "cuda" when XGBoost can train on a CUDA GPU here, "cpu" otherwise.

    Asks XGBoost itself with a tiny training run rather than torch, so it works where torch is
    absent. Without a GPU XGBoost would silently fall back to the CPU with a warning; the check
    makes it fail instead and also reads back the device the booster actually used.
    """
    try:
        data = xgb.DMatrix(np.array([[0.0], [1.0], [0.0], [1.0]]), label=np.array([0, 1, 0, 1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            booster = xgb.train(
                {"device": "cuda", "tree_method": "hist", "fail_on_invalid_gpu_id": True},
                data,
                num_boost_round=1,
            )
        used = json.loads(booster.save_config())["learner"]["generic_param"]["device"]
    except Exception:  # any failure means "no usable GPU"
        return "cpu"
    return "cuda" if used.startswith("cuda") else "cpu"


class StepReporter(xgb.callback.TrainingCallback):
    """Hands the validation PR-AUC after every boosting round to `on_step(round, value)`
    (the study runner's pruning and deadline check, which may raise to stop training)."""

    def __init__(self, on_step: Callable[[int, float], None]) -> None:
        super().__init__()
        self.on_step = on_step

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.on_step(epoch, float(evals_log[VALIDATION_NAME][EVAL_METRIC][-1]))
        return False


def to_dmatrix(
    X: pd.DataFrame, y: np.ndarray | None = None, sample_weight: np.ndarray | None = None
) -> xgb.DMatrix:
    """A DMatrix that keeps the column names, so the booster knows its features by name."""
    return xgb.DMatrix(
        X.to_numpy(dtype=np.float64),
        label=None if y is None else np.asarray(y),
        weight=sample_weight,
        feature_names=[str(column) for column in X.columns],
        missing=np.nan,
    )


def train_xgb(
    params: Mapping[str, Any],
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_validation: pd.DataFrame,
    y_validation: np.ndarray,
    sample_weight: np.ndarray | None = None,
    callbacks: Sequence[xgb.callback.TrainingCallback] = (),
    device: str | None = None,
    num_boost_round: int = 1000,
    early_stopping_rounds: int = 50,
) -> xgb.Booster:
    """Trains a binary classifier, early-stopped on validation PR-AUC ("validation-aucpr").

    `params` are XGBoost parameters (e.g. max_depth, eta) laid over the fixed base (objective,
    metric, hist trees, seed 0 unless given). `device` defaults to `xgb_device()`.
    """
    full_params = {**BASE_PARAMS, **params, "device": device or xgb_device()}
    train = to_dmatrix(X_train, y_train, sample_weight)
    validation = to_dmatrix(X_validation, y_validation)
    return xgb.train(
        full_params,
        train,
        num_boost_round=num_boost_round,
        evals=[(validation, VALIDATION_NAME)],
        early_stopping_rounds=early_stopping_rounds,
        callbacks=list(callbacks),
        verbose_eval=False,
    )


def _best_range(booster: xgb.Booster) -> tuple[int, int]:
    """Trees up to the best early-stopping iteration (all trees when there was no early stop)."""
    return (0, booster.best_iteration + 1) if "best_iteration" in booster.attributes() else (0, 0)


def predict_proba(booster: xgb.Booster, X: pd.DataFrame) -> np.ndarray:
    """Purchase probabilities, using the trees up to the best validation iteration."""
    return booster.predict(to_dmatrix(X), iteration_range=_best_range(booster))


def contributions(booster: xgb.Booster, X: pd.DataFrame) -> np.ndarray:
    """SHAP values in log-odds, shape (rows, features + 1); the last column is the bias."""
    return booster.predict(to_dmatrix(X), pred_contribs=True, iteration_range=_best_range(booster))


def feature_importance(booster: xgb.Booster) -> dict[str, float]:
    """Average gain per feature; features the trees never split on are reported as 0."""
    gains = booster.get_score(importance_type="gain")
    names = booster.feature_names or list(gains)
    return {name: float(gains.get(name, 0.0)) for name in names}
