"""The registered XGBoost model: an MLflow pyfunc around a saved booster.

The contract every model family registered as `purchase-propensity` keeps (see
`ml.families.base`), so scoring and promotion never need to know which family is champion:

- `predict(context, model_input)` takes a DataFrame holding (at least) the model's feature
  columns and returns a 1-D float array of purchase probabilities, one per row: the family's raw
  score passed through the calibration fitted on the validation cutoffs
  (`ml.evaluation.calibration`), kept in the model as plain numbers;
- `family` names the family ("xgboost"; a PyTorch sequence model can be another PythonModel
  with its own `family`);
- `contributions(model_input)`, where the family can explain itself, returns one column per
  feature (no bias column) with the same index as the input, larger meaning "pushed the score up".

A logged model is loaded with `mlflow.pyfunc.load_model(uri)`; `.unwrap_python_model()` gives
this object back for `contributions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb

from ml.dataset import select_features
from ml.evaluation.calibration import calibrate
from ml.evaluation.final import FinalEvaluation
from ml.families.xgboost.model import contributions, predict_proba
from ml.registry import MODEL_NAME
from ml.splits import SplitData
from ml.tracking import (
    MODEL_REQUIREMENTS,
    LoggedModel,
    feature_signature,
    log_model_with_evidence,
    pinned,
)

BOOSTER_ARTIFACT = "booster"


class PropensityModel(mlflow.pyfunc.PythonModel):
    """XGBoost purchase-propensity model; the booster file is the artifact named "booster"."""

    family = "xgboost"

    def __init__(
        self, feature_columns: Sequence[str], calibration: dict[str, Any] | None = None
    ) -> None:
        self.feature_columns = list(feature_columns)
        # Calibrator.to_dict(); None scores raw (uncalibrated) probabilities.
        self.calibration = calibration
        self.booster: xgb.Booster | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Loads the booster MLflow saved with the model (JSON or UBJSON file)."""
        booster = xgb.Booster()
        booster.load_model(context.artifacts[BOOSTER_ARTIFACT])
        # Score on the CPU wherever the model was trained: scoring batches are small, and a
        # booster trained on a GPU would otherwise warn on every machine without one.
        booster.set_param({"device": "cpu"})
        self.booster = booster

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Calibrated purchase probabilities, one per row of `model_input`."""
        raw = predict_proba(
            self._loaded_booster(), select_features(model_input, self.feature_columns)
        )
        return calibrate(raw, getattr(self, "calibration", None))

    def contributions(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """SHAP value per feature and row (log-odds), without XGBoost's bias column."""
        values = contributions(
            self._loaded_booster(), select_features(model_input, self.feature_columns)
        )
        return pd.DataFrame(values[:, :-1], columns=self.feature_columns, index=model_input.index)

    def _loaded_booster(self) -> xgb.Booster:
        if self.booster is None:
            raise RuntimeError("No booster loaded: load the model with mlflow.pyfunc.load_model")
        return self.booster


def log_model(
    booster: xgb.Booster,
    data: SplitData,
    evaluation: FinalEvaluation,
    params: Mapping[str, Any],
    plot_paths: Sequence[Path] = (),
    tags: Mapping[str, str] | None = None,
    registered_model_name: str = MODEL_NAME,
    run_name: str = "xgboost-final",
) -> LoggedModel:
    """Logs the final XGBoost model and its evidence into the active run (or a new one), and
    registers it as a new version of `registered_model_name` with the tag family=xgboost.

    `evaluation` (`ml.evaluation.final.evaluate_final_model`) holds the calibration, which goes
    into the pyfunc, and the figures (see `evaluation_metrics`). Each plot is logged as
    `plots/<its folder name>/<file name>`.
    """

    def save_booster(work: Path) -> dict[str, str]:
        booster_path = work / "booster.ubj"
        booster.save_model(str(booster_path))
        return {BOOSTER_ARTIFACT: str(booster_path)}

    sample = data.X_train.head(200)
    return log_model_with_evidence(
        family=PropensityModel.family,
        python_model=PropensityModel(
            data.feature_columns, calibration=evaluation.calibrator.to_dict()
        ),
        save_artifacts=save_booster,
        signature=feature_signature(sample, predict_proba(booster, sample)),
        input_example=data.X_train.head(5),
        requirements=pinned(MODEL_REQUIREMENTS),
        data=data,
        evaluation=evaluation,
        params=params,
        plot_paths=plot_paths,
        tags=tags,
        registered_model_name=registered_model_name,
        run_name=run_name,
    )
