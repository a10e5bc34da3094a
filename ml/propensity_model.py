"""The registered model: an MLflow pyfunc around a saved XGBoost booster.

The contract every model family registered as `purchase-propensity` keeps, so scoring and
promotion never need to know which family is champion:

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

from collections.abc import Sequence
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb

from ml.evaluation.calibration import Calibrator
from ml.xgb import contributions, predict_proba

BOOSTER_ARTIFACT = "booster"


def select_features(model_input: pd.DataFrame, feature_columns: Sequence[str]) -> pd.DataFrame:
    """Exactly the model's feature columns, in training order, as float64.

    Extra columns (keys, labels) are ignored; a missing feature is an error, because silently
    scoring it as "missing" would give wrong probabilities without anyone noticing.
    """
    missing = [column for column in feature_columns if column not in model_input.columns]
    if missing:
        raise ValueError(
            f"The input lacks {len(missing)} feature column(s) the model was trained on: {missing}"
        )
    return model_input[list(feature_columns)].astype(np.float64)


def calibrate(raw_scores: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """The calibrated probabilities of a family's raw scores (unchanged without calibration)."""
    return (
        raw_scores if calibration is None else Calibrator.from_dict(calibration).apply(raw_scores)
    )


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
