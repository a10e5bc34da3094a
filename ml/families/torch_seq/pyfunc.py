"""The registered sequence model: an MLflow pyfunc around a saved PyTorch state dict.

It keeps the contract of every family's pyfunc (`ml.families.xgboost.pyfunc`: predict(context,
DataFrame) -> 1-D probabilities, extra columns ignored, a missing input column is an error),
with `family = "torch-seq"`. Its
input is the frame of `SplitData.model_input` / `load_scoring_frame`: the feature columns plus
`ml.dataset.SEQUENCE_COLUMNS`.

What is saved: the network's `state_dict` (a tensor file, loaded with `weights_only=True`) and a
JSON config with the parameters, the fitted feature scaler and the feature columns. The
nn.Module itself is never pickled: `load_context` rebuilds it from the config, on the CPU
(`map_location`), so scoring works on a machine without a GPU whatever the model trained on.
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
from mlflow.types.schema import Array

from ml.dataset import SEQUENCE_COLUMNS
from ml.evaluation.calibration import calibrate
from ml.evaluation.final import FinalEvaluation
from ml.families.torch_seq.explain import (
    describe_events,
    event_attributions,
    feature_contributions,
)
from ml.families.torch_seq.inputs import FeatureScaler
from ml.families.torch_seq.names import ENCODER_REGISTRY_TAG, REGISTRY_TAG
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet
from ml.families.torch_seq.pretrain import sequence_tensors
from ml.families.torch_seq.train import TrainedSequenceModel, predict_proba
from ml.registry import MODEL_NAME
from ml.splits import SplitData
from ml.tracking import (
    MODEL_REQUIREMENTS,
    LoggedModel,
    feature_signature,
    log_model_with_evidence,
    model_code_paths,
    pinned,
)

STATE_DICT_ARTIFACT = "state_dict"
CONFIG_ARTIFACT = "model_config"
STATE_DICT_FILE = "state_dict.pt"
CONFIG_FILE = "model_config.json"


def save_artifacts(trained: TrainedSequenceModel, folder: Path) -> dict[str, str]:
    """Writes the state dict (CPU tensors) and the JSON config into `folder`; returns the
    artifacts mapping for `mlflow.pyfunc.log_model`."""
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_DICT_FILE
    config_path = folder / CONFIG_FILE
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

    family = REGISTRY_TAG

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

    def event_reasons(self, model_input: pd.DataFrame, names: dict[int, str]) -> list[str]:
        """Per row, the (up to) three past events that raised its score most, as a shop
        manager reads them (integrated gradients; `names`: category index -> name)."""
        if self.trained is None:
            raise RuntimeError("No network loaded: load the model with mlflow.pyfunc.load_model")
        attributions = event_attributions(self.trained, model_input)
        sequences = model_input[list(SEQUENCE_COLUMNS)]
        return [
            "; ".join(describe_events(sequences.iloc[row], values, names))
            for row, values in enumerate(attributions)
        ]

    def __getstate__(self) -> dict[str, Any]:
        """Never pickles the network, even when called after load_context."""
        return {**self.__dict__, "trained": None}


def log_model(
    trained: TrainedSequenceModel,
    data: SplitData,
    evaluation: FinalEvaluation,
    params: Mapping[str, Any],
    plot_paths: Sequence[Path] = (),
    tags: Mapping[str, str] | None = None,
    registered_model_name: str = MODEL_NAME,
    run_name: str = "torch-seq-final",
) -> LoggedModel:
    """Logs a trained sequence model with the same evidence as every family
    (`ml.tracking.log_model_with_evidence`: metrics, plots, comparison table, model card,
    lineage, signature, input example) and registers it with the tag family=torch-seq.

    The logged parameters are the model's SeqParams, its loss weighting (strategy
    "class_weight" when positives weigh more, positive_weight), best epoch and training
    device, updated by `params` (e.g. the study's name). Signature and input example come from
    `data.model_input("train")`: the feature columns and the four sequence columns as arrays
    (see `sequence_signature`).
    """
    logged_params = {
        **trained.params.to_dict(),
        # As in ml.resampling: a positive weight is the class_weight strategy.
        "strategy": "class_weight" if trained.positive_weight > 1 else "none",
        "positive_weight": round(trained.positive_weight, 6),
        "best_epoch": trained.best_epoch,
        "trained_on": trained.device,
        **params,
    }
    sample = data.model_input("train").head(200)
    return log_model_with_evidence(
        family=SequencePropensityModel.family,
        python_model=SequencePropensityModel(
            trained.feature_columns, calibration=evaluation.calibrator.to_dict()
        ),
        save_artifacts=lambda work: save_artifacts(trained, work / "torch"),
        signature=sequence_signature(sample, predict_proba(trained, sample)),
        input_example=sample.head(5),
        requirements=pinned((*MODEL_REQUIREMENTS, "torch")),
        data=data,
        evaluation=evaluation,
        params=logged_params,
        plot_paths=plot_paths,
        tags=tags,
        registered_model_name=registered_model_name,
        run_name=run_name,
    )


def sequence_signature(model_input: pd.DataFrame, probabilities: np.ndarray) -> ModelSignature:
    """`feature_signature` of the feature columns, then the SEQUENCE_COLUMNS as array columns.

    Given explicitly: MLflow 3.17 infers Array types only from int64/int32/float cells and fails
    on the warehouse's uint8 event codes. Its schema enforcement then converts every cell to the
    declared type, which costs tens of microseconds per row at predict time (measured: 40-90 us
    per row with 25-event sequences).
    """
    features = [column for column in model_input.columns if column not in SEQUENCE_COLUMNS]
    signature = feature_signature(model_input[features], probabilities)
    inputs = Schema([*signature.inputs.inputs, *sequence_specs()])
    return ModelSignature(inputs=inputs, outputs=signature.outputs)


ENCODER_MODEL_NAME = "behaviour-encoder"
ENCODER_ARTIFACT = "encoder"


class BehaviourEncoderModel(mlflow.pyfunc.PythonModel):
    """The pretrained event encoder as a model of its own: `predict` gives each row's shopper
    embedding (the GRU's state after the newest event; zeros without events), columns
    embedding_0.. . Input: the SEQUENCE_COLUMNS (other columns are ignored)."""

    family = ENCODER_REGISTRY_TAG

    def __init__(self, batch_size: int = 2048) -> None:
        self.batch_size = batch_size
        self.net: SequencePropensityNet | None = None
        self.params: SeqParams | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        saved = torch.load(
            context.artifacts[ENCODER_ARTIFACT], map_location="cpu", weights_only=True
        )
        self.params = SeqParams(encoder="gru", **saved["architecture"])
        self.net = SequencePropensityNet(1, self.params)
        self.net.load_state_dict(saved["state"], strict=False)
        self.net.eval()

    @torch.inference_mode()
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if self.net is None or self.params is None:
            raise RuntimeError("No encoder loaded: load the model with mlflow.pyfunc.load_model")
        tensors = sequence_tensors(model_input, self.params)
        parts = []
        for start in range(0, len(tensors), self.batch_size):
            stop = start + self.batch_size
            lengths = tensors.lengths[start:stop]
            states = self.net.gru_states(
                self.net.event_inputs(
                    tensors.event_types[start:stop],
                    tensors.categories[start:stop],
                    tensors.continuous[start:stop],
                )
            )
            last = states[torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]
            parts.append((last * (lengths > 0).unsqueeze(1)).numpy())
        embeddings = np.concatenate(parts) if parts else np.zeros((0, self.params.hidden_size))
        return pd.DataFrame(
            embeddings, columns=[f"embedding_{i}" for i in range(embeddings.shape[1])]
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "net": None}


def log_encoder(
    encoder_file: Path,
    summary: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    sample: pd.DataFrame,
    tags: Mapping[str, str],
) -> str:
    """Logs the pretraining run (its settings, the curves per epoch) into the active run and
    registers the encoder as a new version of `behaviour-encoder`; returns the version."""
    mlflow.log_params(dict(summary))
    for entry in history:
        step = int(entry["epoch"])
        for name, value in entry.items():
            if name != "epoch":
                mlflow.log_metric(name, value, step=step)
    mlflow.set_tags({**tags, "family": BehaviourEncoderModel.family})
    python_model = BehaviourEncoderModel()
    loader = mlflow.pyfunc.PythonModelContext(
        artifacts={ENCODER_ARTIFACT: str(encoder_file)}, model_config={}
    )
    python_model.load_context(loader)
    example = sample[list(SEQUENCE_COLUMNS)].head(5)
    signature = ModelSignature(
        inputs=Schema(sequence_specs()),
        outputs=Schema(
            [ColSpec(DataType.double, name) for name in python_model.predict(None, example).columns]
        ),
    )
    with tempfile.TemporaryDirectory() as work:
        info = mlflow.pyfunc.log_model(
            name="encoder",
            python_model=BehaviourEncoderModel(),
            artifacts={ENCODER_ARTIFACT: str(encoder_file)},
            signature=signature,
            input_example=example,
            registered_model_name=ENCODER_MODEL_NAME,
            pip_requirements=pinned((*MODEL_REQUIREMENTS, "torch")),
            code_paths=model_code_paths(Path(work)),
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_model_version_tag(
        ENCODER_MODEL_NAME, version, "family", BehaviourEncoderModel.family
    )
    return version


def sequence_specs() -> list[ColSpec]:
    """The SEQUENCE_COLUMNS as array columns of a signature."""
    specs = [
        ColSpec(Array(DataType.long), "event_type_codes"),
        ColSpec(Array(DataType.long), "category_indexes"),
        ColSpec(Array(DataType.double), "prices"),
        ColSpec(Array(DataType.double), "seconds_before_cutoff"),
    ]
    assert [spec.name for spec in specs] == list(SEQUENCE_COLUMNS)
    return specs
