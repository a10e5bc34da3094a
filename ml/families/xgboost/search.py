"""XGBoost's search space: the training-set resampling strategy, its target ratio and the
booster's parameters; and the one fit every trial and the final model go through."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import xgboost as xgb

from ml.families.xgboost.model import train_xgb
from ml.resampling import STRATEGIES, resample_training
from ml.splits import SplitData

# Keys of a parameter set that are not XGBoost parameters: how the train role is resampled
# and the round budget (fixed per study).
STRATEGY_KEY = "strategy"
TARGET_RATIO_KEY = "target_ratio"
ROUNDS_KEY = "num_boost_round"
EARLY_STOPPING_KEY = "early_stopping_rounds"
NOT_BOOSTER_PARAMS = (STRATEGY_KEY, TARGET_RATIO_KEY, ROUNDS_KEY, EARLY_STOPPING_KEY)
# Used for strategy "none", which has no ratio to tune.
DEFAULT_TARGET_RATIO = 0.5
DEFAULT_ROUNDS = 1000
DEFAULT_EARLY_STOPPING = 50


@dataclass
class XGBoostSearch:
    """The search settings of an XGBoost study: which resampling strategies it may try, and
    the fixed round budget (early-stopped on validation PR-AUC) of every trial."""

    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    num_boost_round: int = DEFAULT_ROUNDS
    early_stopping_rounds: int = DEFAULT_EARLY_STOPPING


def suggest_params(trial: optuna.Trial, search: XGBoostSearch) -> dict[str, Any]:
    """The search space: the resampling strategy, its target ratio and XGBoost parameters."""
    strategy = trial.suggest_categorical(STRATEGY_KEY, list(search.strategies))
    if strategy == "none":
        target_ratio = DEFAULT_TARGET_RATIO
    else:
        target_ratio = trial.suggest_float(TARGET_RATIO_KEY, 0.1, 1.0)
    return {
        STRATEGY_KEY: strategy,
        TARGET_RATIO_KEY: target_ratio,
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "eta": trial.suggest_float("eta", 0.02, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 20.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "lambda": trial.suggest_float("lambda", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 1e-3, 10.0, log=True),
        ROUNDS_KEY: search.num_boost_round,
        EARLY_STOPPING_KEY: search.early_stopping_rounds,
    }


def complete_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with the defaults filled in (a "none" strategy's ratio, the round budget), so a
    trial stored by an older version still fits."""
    return {
        TARGET_RATIO_KEY: DEFAULT_TARGET_RATIO,
        ROUNDS_KEY: DEFAULT_ROUNDS,
        EARLY_STOPPING_KEY: DEFAULT_EARLY_STOPPING,
        **params,
    }


def fit_with_params(
    data: SplitData,
    params: Mapping[str, Any],
    callbacks: list[xgb.callback.TrainingCallback] | None = None,
    device: str | None = None,
    seed: int = 0,
) -> tuple[xgb.Booster, dict[str, Any]]:
    """Resamples the train role as `params` say and trains XGBoost on it, early-stopped on the
    validation role. Reads nothing else. Returns the booster and what the resampling did.

    Same parameters and seed give the same booster, so the final model is the best trial's.
    """
    params = complete_params(params)
    resampled = resample_training(
        data.X_train,
        data.y_train,
        params[STRATEGY_KEY],
        target_ratio=params[TARGET_RATIO_KEY],
        seed=seed,
    )
    booster = train_xgb(
        {**{k: v for k, v in params.items() if k not in NOT_BOOSTER_PARAMS}, "seed": seed},
        resampled.X,
        resampled.y,
        data.X_validation,
        data.y_validation,
        sample_weight=resampled.sample_weight,
        callbacks=callbacks or [],
        device=device,
        num_boost_round=int(params[ROUNDS_KEY]),
        early_stopping_rounds=int(params[EARLY_STOPPING_KEY]),
    )
    summary = {
        "strategy": params[STRATEGY_KEY],
        "target_ratio": float(params[TARGET_RATIO_KEY]),
        "train_negatives_before": resampled.counts_before.get(0, 0),
        "train_positives_before": resampled.counts_before.get(1, 0),
        "train_negatives_after": resampled.counts_after.get(0, 0),
        "train_positives_after": resampled.counts_after.get(1, 0),
    }
    return booster, summary
