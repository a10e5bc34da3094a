"""Gradient boosting (XGBoost) on the point-in-time user features.

model.py trains and explains a booster, search.py holds the search space (resampling strategy
included) and the one fit trials and the final model share, pyfunc.py the registered model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import xgboost as xgb
from sklearn.metrics import average_precision_score

from ml.evaluation.final import FinalEvaluation
from ml.evaluation.plots import save_feature_importance_plot, save_shap_summary_plot
from ml.families.base import PARAMS_ATTR, ModelFamily, StepCallback, TrainedModel
from ml.families.xgboost import model, pyfunc, search
from ml.splits import SplitData

BOOSTER_FILE = "booster.ubj"
SHAP_SAMPLE_ROWS = 5000


class XGBoostFamily(ModelFamily):
    name = "xgboost"
    registry_tag = pyfunc.PropensityModel.family
    asset_prefix = "xgb"
    study_name = "purchase-propensity-xgb"
    step_name = "round"
    uses_sequences = False
    search_settings = search.XGBoostSearch
    default_n_trials = 15
    pruner_startup_trials = 5
    pruner_warmup_steps = 10
    rdb_report_every = 10

    def device(self) -> str:
        return model.xgb_device()

    def suggest(self, trial: optuna.Trial, settings: search.XGBoostSearch) -> dict[str, Any]:
        return search.suggest_params(trial, settings)

    def fit(
        self,
        data: SplitData,
        params: Mapping[str, Any],
        seed: int = 0,
        on_step: StepCallback | None = None,
    ) -> TrainedModel:
        callbacks = [model.StepReporter(on_step)] if on_step is not None else []
        booster, summary = search.fit_with_params(data, params, callbacks=callbacks, seed=seed)
        scores = model.predict_proba(booster, data.X_validation)
        value = float(average_precision_score(data.y_validation, scores))
        best_round = int(booster.best_iteration)
        return TrainedModel(booster, value, best_round, {**summary, "best_round": best_round})

    def predict(self, booster: xgb.Booster, model_input: pd.DataFrame) -> np.ndarray:
        return model.predict_proba(booster, model_input[booster.feature_names])

    def explain(self, booster: xgb.Booster, data: SplitData, folder: Path) -> list[Path]:
        """Gain per feature, and SHAP values of a seeded sample of SHAP_SAMPLE_ROWS promotion
        rows (a summary plot of every row costs seconds and shows no more)."""
        rows = data.X_promotion
        sample = rows.sample(n=min(SHAP_SAMPLE_ROWS, len(rows)), random_state=0)
        return [
            save_feature_importance_plot(
                model.feature_importance(booster), folder / "feature_importance.png", "Gain"
            ),
            save_shap_summary_plot(
                model.contributions(booster, sample), sample, folder / "shap_summary.png"
            ),
        ]

    def log(
        self,
        fitted: TrainedModel,
        data: SplitData,
        evaluation: FinalEvaluation,
        params: Mapping[str, Any],
        plot_paths: list[Path],
    ) -> Any:
        return pyfunc.log_model(fitted.model, data, evaluation, params, plot_paths=plot_paths)

    def save(self, booster: xgb.Booster, folder: Path) -> None:
        booster.save_model(str(folder / BOOSTER_FILE))

    def load(self, folder: Path) -> xgb.Booster:
        booster = xgb.Booster()
        booster.load_model(str(folder / BOOSTER_FILE))
        return booster

    def describe_trial(self, trial: optuna.trial.FrozenTrial) -> str:
        return str(trial.params.get(search.STRATEGY_KEY))

    def params_of(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """Trials stored before parameters were kept as a user attribute hold only the
        searched ones; the defaults fill in the rest."""
        return search.complete_params(trial.user_attrs.get(PARAMS_ATTR, trial.params))


FAMILY = XGBoostFamily()
