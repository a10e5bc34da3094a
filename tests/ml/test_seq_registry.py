"""Logging, registering, loading and promoting the sequence model beside XGBoost, on a real
MLflow sqlite store in tmp_path, on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import xgboost as xgb
from mlflow import MlflowClient
from mlflow.types.schema import Array

from ml.dataset import SEQUENCE_COLUMNS
from ml.evaluation.final import FinalEvaluation, evaluate_final_model
from ml.families.torch_seq.net import SeqParams
from ml.families.torch_seq.pyfunc import log_model as log_sequence_model
from ml.families.torch_seq.train import TrainedSequenceModel, predict_proba, train_sequence_model
from ml.families.xgboost.model import predict_proba as xgb_predict_proba
from ml.families.xgboost.model import train_xgb
from ml.families.xgboost.pyfunc import log_model as log_final_model
from ml.registry import CHALLENGER, CHAMPION, MODEL_NAME, pr_auc, predict_frame, promote
from ml.splits import SplitData
from ml.tracking import LoggedModel

pytestmark = pytest.mark.usefixtures("single_thread_torch", "single_thread_xgboost")

CPU = torch.device("cpu")
PARAMS = SeqParams(
    hidden_size=16,
    embedding_dim=8,
    batch_size=256,
    max_length=30,
    category_buckets=64,
    max_epochs=8,
    patience=2,
    learning_rate=1e-2,
)


@pytest.fixture(scope="module")
def good_seq(sequence_split_data: SplitData, single_thread_torch: None) -> TrainedSequenceModel:
    return train_sequence_model(sequence_split_data, PARAMS, device=CPU)


@pytest.fixture(scope="module")
def bad_seq(sequence_split_data: SplitData, single_thread_torch: None) -> TrainedSequenceModel:
    """Trained on shuffled labels: it has learned nothing and must lose any comparison."""
    shuffled = np.random.default_rng(1).permutation(sequence_split_data.y_train)
    data = replace(sequence_split_data, y_train=shuffled)
    return train_sequence_model(data, replace(PARAMS, max_epochs=1), device=CPU)


@pytest.fixture(scope="module")
def booster(sequence_split_data: SplitData, single_thread_xgboost: None) -> xgb.Booster:
    data = sequence_split_data
    return train_xgb(
        {"max_depth": 3, "eta": 0.3},
        data.X_train,
        data.y_train,
        data.X_validation,
        data.y_validation,
        device="cpu",
        num_boost_round=60,
        early_stopping_rounds=10,
    )


def seq_scores(model: TrainedSequenceModel, data: SplitData) -> np.ndarray:
    return predict_proba(model, data.model_input("promotion"))


def seq_evaluation(model: TrainedSequenceModel, data: SplitData) -> FinalEvaluation:
    return evaluate_final_model(
        data, "torch_seq", lambda X: predict_proba(model, X), n_resamples=100
    )


def log_seq(model: TrainedSequenceModel, data: SplitData) -> LoggedModel:
    """Logs like a training asset would: in an open run, with the baselines beside it."""
    evaluation = seq_evaluation(model, data)
    with mlflow.start_run(run_name="torch-seq-final"):
        return log_sequence_model(model, data, evaluation, {"optuna_study": "seq-study"})


def log_xgb(booster: xgb.Booster, data: SplitData) -> LoggedModel:
    evaluation = evaluate_final_model(
        data,
        "xgboost",
        lambda X: xgb_predict_proba(booster, X[data.feature_columns]),
        n_resamples=100,
    )
    params = {"strategy": "none", "max_depth": 3}
    return log_final_model(booster, data, evaluation, params)


def users(data: SplitData) -> np.ndarray:
    return data.keys_promotion["user_id"].to_numpy()


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def test_a_registered_sequence_model_loads_from_the_registry_and_scores(
    sequence_split_data: SplitData, good_seq: TrainedSequenceModel, mlflow_store: Path
) -> None:
    data = sequence_split_data
    logged = log_seq(good_seq, data)

    client = MlflowClient()
    run = client.get_run(logged.run_id)
    expected = seq_scores(good_seq, data)
    assert run.data.metrics["promotion_pr_auc"] == pytest.approx(
        pr_auc(data.y_promotion, expected), rel=1e-4
    )
    params = run.data.params
    assert (params["encoder"], params["strategy"], params["optuna_study"]) == (
        "gru",
        "class_weight",
        "seq-study",
    )
    assert run.data.tags["family"] == "torch-seq"
    assert run.data.tags["rows_promotion_rows"] == str(len(data.y_promotion))
    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    assert {"model_card.md", "comparison_table.csv", "comparison_table.md"} <= artifacts
    card = mlflow.artifacts.load_text(f"runs:/{logged.run_id}/model_card.md")
    assert "(torch-seq)" in card and "class_weight" in card

    version = client.get_model_version(MODEL_NAME, logged.version)
    assert version.tags["family"] == "torch-seq"
    info = mlflow.models.get_model_info(logged.model_uri)
    inputs = {spec.name: spec.type for spec in info.signature.inputs.inputs}
    assert list(inputs) == [*data.feature_columns, *SEQUENCE_COLUMNS]
    assert all(isinstance(inputs[column], Array) for column in SEQUENCE_COLUMNS)
    model_dir = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    example = json.loads((model_dir / info.saved_input_example_info["artifact_path"]).read_text())
    assert example["columns"] == [*data.feature_columns, *SEQUENCE_COLUMNS]
    assert len(example["data"]) == 5
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    # The network travels as a state dict; the pickled PythonModel holds no tensors.
    assert {p.name for p in (model_dir / "artifacts").rglob("*")} >= {
        "state_dict.pt",
        "model_config.json",
    }
    assert (model_dir / "python_model.pkl").stat().st_size < 5_000

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{logged.version}")
    python_model = model.unwrap_python_model()
    assert python_model.family == "torch-seq"
    assert next(python_model.trained.net.parameters()).device == CPU
    test_input = data.model_input("promotion").assign(user_id=np.arange(len(data.y_promotion)))
    scores = np.asarray(model.predict(test_input))
    assert scores.shape == (len(data.y_promotion),)
    calibrated = seq_evaluation(good_seq, data).calibrator.apply(expected)
    np.testing.assert_allclose(scores, calibrated, rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="prices"):
        model.predict(test_input.drop(columns=["prices"]))
    # The project's scoring path skips MLflow's per-cell conversion, not its result or errors.
    np.testing.assert_array_equal(predict_frame(model, test_input), scores)
    with pytest.raises(Exception, match="prices"):
        predict_frame(model, test_input.drop(columns=["prices"]))


def test_promotion_works_across_the_two_families(
    sequence_split_data: SplitData,
    good_seq: TrainedSequenceModel,
    bad_seq: TrainedSequenceModel,
    booster: xgb.Booster,
    mlflow_store: Path,
) -> None:
    data = sequence_split_data
    client = MlflowClient()
    X, y = data.model_input("promotion"), data.y_promotion
    good_seq_score = pr_auc(y, seq_scores(good_seq, data))
    bad_seq_score = pr_auc(y, seq_scores(bad_seq, data))
    xgb_score = pr_auc(y, xgb_predict_proba(booster, data.X_promotion))
    # Only the order of events tells buyers apart well (see synthetic_sequences).
    assert bad_seq_score + 0.05 < xgb_score < good_seq_score - 0.2

    first = log_seq(bad_seq, data).version
    assert promote(client, first, X, y, users(data)).promoted

    # An XGBoost challenger against a torch-seq champion: both scored on the same frame.
    second = log_xgb(booster, data).version
    decision = promote(client, second, X, y, users(data))
    assert decision.promoted and decision.champion_version == first
    assert decision.challenger_pr_auc == pytest.approx(xgb_score)
    # The champion is scored as registered: calibrated. For a model that learned nothing the
    # calibration's slope is near zero and neighbouring scores become equal, which moves its
    # PR-AUC away from the raw scores' one.
    served_bad = seq_evaluation(bad_seq, data).calibrator.apply(seq_scores(bad_seq, data))
    assert decision.champion_pr_auc == pytest.approx(pr_auc(y, served_bad), rel=1e-6)
    assert aliases(client) == {CHAMPION: second, CHALLENGER: second}

    # A torch-seq challenger against an XGBoost champion.
    third = log_seq(good_seq, data).version
    decision = promote(client, third, X, y, users(data))
    assert decision.promoted and decision.champion_version == second
    assert decision.challenger_pr_auc == pytest.approx(good_seq_score, rel=1e-4)
    assert aliases(client) == {CHAMPION: third, CHALLENGER: third}

    # And an XGBoost challenger that loses to the torch-seq champion.
    fourth = log_xgb(booster, data).version
    decision = promote(client, fourth, X, y, users(data))
    assert not decision.promoted
    assert aliases(client) == {CHAMPION: third, CHALLENGER: fourth}
    assert client.get_model_version(MODEL_NAME, fourth).tags["promotion_decision"] == (
        "kept_champion"
    )

    # Scoring loads whichever family is champion and feeds it the same frame.
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    assert champion.unwrap_python_model().family == "torch-seq"
    calibrated = seq_evaluation(good_seq, data).calibrator.apply(seq_scores(good_seq, data))
    np.testing.assert_allclose(champion.predict(X), calibrated, rtol=1e-5)


def test_contributions_are_logit_changes_when_a_feature_is_set_to_its_training_average(
    sequence_split_data: SplitData, good_seq: TrainedSequenceModel, mlflow_store: Path
) -> None:
    data = sequence_split_data
    logged = log_seq(good_seq, data)
    python_model = mlflow.pyfunc.load_model(logged.model_uri).unwrap_python_model()
    rows = data.model_input("promotion").head(40)

    contributions = python_model.contributions(rows)

    assert list(contributions.columns) == data.feature_columns
    assert contributions.index.equals(rows.index)
    assert np.abs(contributions.to_numpy()).max() > 1e-3  # the static features matter
    # Setting a complete (never NaN) feature by hand to the value the scaler maps to 0 must
    # move the logit by exactly minus its contribution.
    scaler = python_model.trained.scaler
    column = next(c for c in scaler.columns if c not in scaler.missing_columns)
    center = scaler.center[scaler.columns.index(column)]
    average = np.sign(center) * np.expm1(abs(center))  # inverse of sign(x) * log1p(|x|)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    # The network's own logit: the served score adds the calibration's monotone map on top.
    before = logit(predict_proba(python_model.trained, rows))
    after = logit(predict_proba(python_model.trained, rows.assign(**{column: average})))
    np.testing.assert_allclose(before - after, contributions[column], atol=1e-4)
