"""The registered sequence model: an MLflow pyfunc around a saved PyTorch state dict.

It keeps the contract of `ml.propensity_model` (predict(context, DataFrame) -> 1-D probabilities,
extra columns ignored, a missing input column is an error), with `family = "torch-seq"`. Its
input is the frame of `SplitData.model_input` / `load_scoring_frame`: the feature columns plus
`ml.dataset.SEQUENCE_COLUMNS`.

What is saved: the network's `state_dict` (a tensor file, loaded with `weights_only=True`) and a
JSON config with the parameters, the fitted feature scaler and the feature columns. The
nn.Module itself is never pickled: `load_context` rebuilds it from the config, on the CPU
(`map_location`), so scoring works on a machine without a GPU whatever the model trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from ml.propensity_model import calibrate
from ml.seq_model import (
    FeatureScaler,
    SeqParams,
    SequencePropensityNet,
    TrainedSequenceModel,
    feature_contributions,
    predict_proba,
)

STATE_DICT_ARTIFACT = "state_dict"
CONFIG_ARTIFACT = "model_config"


def save_artifacts(trained: TrainedSequenceModel, folder: Path) -> dict[str, str]:
    """Writes the state dict (CPU tensors) and the JSON config into `folder`; returns the
    artifacts mapping for `mlflow.pyfunc.log_model`."""
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "state_dict.pt"
    config_path = folder / "model_config.json"
    state = {key: value.detach().cpu() for key, value in trained.net.state_dict().items()}
    torch.save(state, state_path)
    config = {
        "params": trained.params.to_dict(),
        "scaler": trained.scaler.to_dict(),
        "feature_columns": list(trained.feature_columns),
        "best_epoch": trained.best_epoch,
        "best_validation_pr_auc": trained.best_validation_pr_auc,
        "positive_weight": trained.positive_weight,
        "trained_on": trained.device,
    }
    config_path.write_text(json.dumps(config, indent=2))
    return {STATE_DICT_ARTIFACT: str(state_path), CONFIG_ARTIFACT: str(config_path)}


def load_trained(state_path: str | Path, config_path: str | Path) -> TrainedSequenceModel:
    """Rebuilds a TrainedSequenceModel on the CPU from the two artifact files."""
    config = json.loads(Path(config_path).read_text())
    params = SeqParams.from_dict(config["params"])
    scaler = FeatureScaler.from_dict(config["scaler"])
    net = SequencePropensityNet(scaler.n_outputs, params)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return TrainedSequenceModel(
        net=net,
        scaler=scaler,
        params=params,
        feature_columns=list(config["feature_columns"]),
        best_epoch=int(config["best_epoch"]),
        best_validation_pr_auc=float(config["best_validation_pr_auc"]),
        history=[],
        device="cpu",
        seconds=0.0,
        positive_weight=float(config["positive_weight"]),
    )


class SequencePropensityModel(mlflow.pyfunc.PythonModel):
    """PyTorch sequence purchase-propensity model (artifacts: state dict + JSON config)."""

    family = "torch-seq"

    def __init__(
        self,
        feature_columns: Sequence[str],
        batch_size: int = 2048,
        calibration: dict[str, Any] | None = None,
    ) -> None:
        # Only plain values here: this object is pickled with the model, the network is not.
        self.feature_columns = list(feature_columns)
        self.batch_size = batch_size
        # Calibrator.to_dict(); None scores raw (uncalibrated) probabilities.
        self.calibration = calibration
        self.trained: TrainedSequenceModel | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Rebuilds the network on the CPU from the logged state dict and config."""
        self.trained = load_trained(
            context.artifacts[STATE_DICT_ARTIFACT], context.artifacts[CONFIG_ARTIFACT]
        )

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Calibrated purchase probabilities, one per row of `model_input` (features +
        sequences)."""
        if self.trained is None:
            raise RuntimeError("No network loaded: load the model with mlflow.pyfunc.load_model")
        raw = predict_proba(self.trained, model_input, batch_size=self.batch_size)
        return calibrate(raw, getattr(self, "calibration", None))

    def contributions(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """Per static feature and row, the logit change when the feature is set to its training
        average (occlusion): the drivers named on the intervention list."""
        if self.trained is None:
            raise RuntimeError("No network loaded: load the model with mlflow.pyfunc.load_model")
        return feature_contributions(self.trained, model_input, batch_size=self.batch_size)

    def __getstate__(self) -> dict[str, Any]:
        """Never pickles the network, even when called after load_context."""
        return {**self.__dict__, "trained": None}
