"""The registered next-category model: an MLflow pyfunc around a saved PyTorch state dict.

As the sequence family's pyfunc (`ml.families.torch_seq.pyfunc`): the state dict (loaded with
`weights_only=True`) and a JSON config are the artifacts, the network is rebuilt on the CPU when
loaded, and the input is the frame of `SplitData.model_input` / `load_scoring_frame` (the
feature columns plus the sequence columns). `predict` returns the top `top_k` categories per
row with their probabilities (columns category_idx_1.., probability_1..); `probabilities`
gives every category's.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from ml.evaluation.ranking import DEFAULT_K, top_categories
from ml.families.torch_seq.inputs import FeatureScaler
from ml.families.torch_seq.net import SeqParams
from ml.families.torch_seq.pyfunc import sequence_signature
from ml.next_category.evaluation import CATEGORY_MODEL_NAME, CategoryEvaluation
from ml.next_category.model import NextCategoryNet, TrainedCategoryModel, predict_category_proba
from ml.splits import SplitData
from ml.tracking import (
    MODEL_REQUIREMENTS,
    LoggedModel,
    active_or_new_run,
    lineage_tags,
    model_code_paths,
    pinned,
)

STATE_DICT_ARTIFACT = "state_dict"
CONFIG_ARTIFACT = "model_config"
FAMILY = "torch-seq-category"


def save_artifacts(trained: TrainedCategoryModel, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    state_path, config_path = folder / "state_dict.pt", folder / "model_config.json"
    torch.save({k: v.detach().cpu() for k, v in trained.net.state_dict().items()}, state_path)
    config = {
        "params": trained.params.to_dict(),
        "scaler": trained.scaler.to_dict(),
        "feature_columns": list(trained.feature_columns),
        "n_categories": trained.n_categories,
        "best_epoch": trained.best_epoch,
        "best_validation_ndcg": trained.best_validation_ndcg,
        "trained_on": trained.device,
    }
    config_path.write_text(json.dumps(config, indent=2))
    return {STATE_DICT_ARTIFACT: str(state_path), CONFIG_ARTIFACT: str(config_path)}


def load_trained(state_path: str | Path, config_path: str | Path) -> TrainedCategoryModel:
    config = json.loads(Path(config_path).read_text())
    params = SeqParams.from_dict(config["params"])
    scaler = FeatureScaler.from_dict(config["scaler"])
    net = NextCategoryNet(scaler.n_outputs, params, int(config["n_categories"]))
    net.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    net.eval()
    return TrainedCategoryModel(
        net=net,
        scaler=scaler,
        params=params,
        feature_columns=list(config["feature_columns"]),
        n_categories=int(config["n_categories"]),
        best_epoch=int(config["best_epoch"]),
        best_validation_ndcg=float(config["best_validation_ndcg"]),
        history=[],
        device="cpu",
        seconds=0.0,
    )


def top_k_frame(probabilities: np.ndarray, k: int) -> pd.DataFrame:
    """category_idx_1..k and probability_1..k per row, the most likely first."""
    k = min(k, max(probabilities.shape[1] - 1, 0))
    top = top_categories(probabilities, k)
    chosen = np.take_along_axis(probabilities, top, axis=1)
    columns: dict[str, np.ndarray] = {}
    for rank in range(k):
        columns[f"category_idx_{rank + 1}"] = top[:, rank].astype(np.int64)
        columns[f"probability_{rank + 1}"] = chosen[:, rank]
    return pd.DataFrame(columns)


class NextCategoryModel(mlflow.pyfunc.PythonModel):
    """PyTorch next-category model (artifacts: state dict + JSON config)."""

    family = FAMILY

    def __init__(self, top_k: int = DEFAULT_K, batch_size: int = 2048) -> None:
        self.top_k, self.batch_size = top_k, batch_size
        self.trained: TrainedCategoryModel | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.trained = load_trained(
            context.artifacts[STATE_DICT_ARTIFACT], context.artifacts[CONFIG_ARTIFACT]
        )

    def probabilities(self, model_input: pd.DataFrame) -> np.ndarray:
        """(rows, categories): the chance of touching each category in the label window,
        given that the shopper comes back."""
        if self.trained is None:
            raise RuntimeError("No network loaded: load the model with mlflow.pyfunc.load_model")
        return predict_category_proba(self.trained, model_input, self.batch_size)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return top_k_frame(self.probabilities(model_input), self.top_k)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "trained": None}


def category_signature(model_input: pd.DataFrame, top: pd.DataFrame) -> ModelSignature:
    inputs = sequence_signature(model_input, np.zeros(len(model_input))).inputs
    outputs = Schema(
        [
            ColSpec(DataType.long if name.startswith("category") else DataType.double, name)
            for name in top.columns
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_category_model(
    trained: TrainedCategoryModel,
    data: SplitData,
    evaluation: CategoryEvaluation,
    params: Mapping[str, Any],
    plot_paths: Sequence[Path] = (),
    model_name: str = CATEGORY_MODEL_NAME,
) -> LoggedModel:
    """Logs params, the training curve, every method's metrics with intervals, the comparison
    table and the model to the active run (or a new one), and registers a new version of
    `model_name` with the tag family=torch-seq-category."""
    sample = data.model_input("train").head(200)
    python_model = NextCategoryModel()
    python_model.trained = trained
    signature = category_signature(sample, python_model.predict(None, sample))
    with active_or_new_run("next-category-final") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(
            {
                **trained.params.to_dict(),
                "n_categories": trained.n_categories,
                "train_rows_used": trained.train_rows,
                "best_epoch": trained.best_epoch,
                "trained_on": trained.device,
                **params,
            }
        )
        for entry in trained.history:
            step = int(entry["epoch"])
            mlflow.log_metric("train_loss", entry["train_loss"], step=step)
            mlflow.log_metric("validation_ndcg_at_10", entry["validation_ndcg_at_10"], step=step)
        mlflow.log_metrics(evaluation.flat_metrics())
        mlflow.set_tags({**lineage_tags(data), "family": FAMILY})
        mlflow.log_text(evaluation.markdown(), "comparison_table.md")
        for path in plot_paths:
            mlflow.log_artifact(str(path), artifact_path="plots")
        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=NextCategoryModel(),
            artifacts=save_artifacts(trained, Path(tmp) / "torch"),
            signature=signature,
            input_example=sample.head(5),
            registered_model_name=model_name,
            pip_requirements=pinned((*MODEL_REQUIREMENTS, "torch")),
            code_paths=model_code_paths(Path(tmp)),
        )
        version = str(model_info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_model_version_tag(model_name, version, "family", FAMILY)
        client.update_model_version(model_name, version, description=evaluation.markdown())
        return LoggedModel(run.info.run_id, f"models:/{model_name}/{version}", version)


def category_probabilities(version: str, model_input: pd.DataFrame) -> np.ndarray:
    """(rows, categories) probabilities of a registered version of `next-category`."""
    model = mlflow.pyfunc.load_model(f"models:/{CATEGORY_MODEL_NAME}/{version}")
    return model.unwrap_python_model().probabilities(model_input)
