"""Logging, registering and promoting models on a real MLflow sqlite store in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from mlflow import MlflowClient

from ml.baselines import base_rate_scores
from ml.evaluation import evaluate, save_feature_importance_plot
from ml.registry import CHALLENGER, CHAMPION, MODEL_NAME, pr_auc, promote
from ml.splits import SplitData
from ml.tracking import LoggedModel, git_commit, log_final_model
from ml.xgb import feature_importance, predict_proba, train_xgb

pytestmark = pytest.mark.usefixtures("single_thread_xgboost")

PARAMS = {"strategy": "none", "target_ratio": 0.5, "max_depth": 3, "eta": 0.3}


def train(data: SplitData, y_train: np.ndarray) -> xgb.Booster:
    return train_xgb(
        {"max_depth": 3, "eta": 0.3},
        data.X_train,
        y_train,
        data.X_validation,
        data.y_validation,
        device="cpu",
        num_boost_round=60,
        early_stopping_rounds=10,
    )


@pytest.fixture(scope="module")
def good_booster(split_data: SplitData, single_thread_xgboost: None) -> xgb.Booster:
    return train(split_data, split_data.y_train)


@pytest.fixture(scope="module")
def bad_booster(split_data: SplitData, single_thread_xgboost: None) -> xgb.Booster:
    """Trained on shuffled labels: it has learned nothing, so it must lose any comparison."""
    shuffled = np.random.default_rng(1).permutation(split_data.y_train)
    return train(split_data, shuffled)


def log(
    booster: xgb.Booster, data: SplitData, plot_paths: tuple[Path, ...] = (), in_run: bool = True
) -> LoggedModel:
    """Logs like the training asset does: inside an open run (or, in_run=False, in its own)."""
    scores = predict_proba(booster, data.X_test)
    metrics = {
        "xgboost": evaluate(data.y_test, scores, threshold=0.2),
        "base_rate": evaluate(
            data.y_test, base_rate_scores(data.y_train, len(data.y_test)), threshold=0.2
        ),
    }
    if not in_run:
        return log_final_model(booster, data, metrics, PARAMS, threshold=0.2)
    with mlflow.start_run(run_name="final") as run:
        logged = log_final_model(
            booster, data, metrics, PARAMS, plot_paths=plot_paths, threshold=0.2
        )
    assert logged.run_id == run.info.run_id
    return logged


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(MODEL_NAME).aliases.items()}


def test_final_run_holds_metrics_lineage_card_plots_signature_and_example(
    split_data: SplitData, good_booster: xgb.Booster, mlflow_store: Path
) -> None:
    plot = save_feature_importance_plot(
        feature_importance(good_booster), mlflow_store / "xgboost" / "importance.png", "gain"
    )
    logged = log(good_booster, split_data, plot_paths=(plot,))

    client = MlflowClient()
    run = client.get_run(logged.run_id)
    expected_pr_auc = pr_auc(split_data.y_test, predict_proba(good_booster, split_data.X_test))
    assert run.data.metrics["test_xgboost_pr_auc"] == pytest.approx(expected_pr_auc)
    assert run.data.metrics["test_base_rate_pr_auc"] < run.data.metrics["test_xgboost_pr_auc"]
    assert run.data.params["strategy"] == "none"
    tags = run.data.tags
    assert tags["split_test_cutoff"] == split_data.split.test_cutoff.isoformat()
    assert tags["rows_test_rows"] == str(len(split_data.y_test))
    assert tags["git_commit"] == git_commit() != ""
    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    assert {"model_card.md", "comparison_table.csv", "comparison_table.md"} <= artifacts
    assert "comparison_table.json" in artifacts  # mlflow.log_table worked
    assert [a.path for a in client.list_artifacts(logged.run_id, "plots/xgboost")] == [
        "plots/xgboost/importance.png"
    ]
    card = mlflow.artifacts.load_text(f"runs:/{logged.run_id}/model_card.md")
    assert split_data.split.test_cutoff.isoformat() in card and "base_rate" in card
    assert "within 3 days after a cutoff" in card
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"runs:/{logged.run_id}/comparison_table.csv")
    )
    assert list(table["model"]) == ["xgboost", "base_rate"]

    version = client.get_model_version(MODEL_NAME, logged.version)
    assert version.tags["family"] == "xgboost"
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature.inputs.input_names() == split_data.feature_columns
    assert info.saved_input_example_info is not None
    example_path = Path(
        mlflow.artifacts.download_artifacts(
            f"{logged.model_uri}/{info.saved_input_example_info['artifact_path']}"
        )
    )
    example = json.loads(example_path.read_text())
    assert example["columns"] == split_data.feature_columns and len(example["data"]) == 5


def test_promotion_keeps_a_better_champion_and_moves_to_a_better_challenger(
    split_data: SplitData,
    good_booster: xgb.Booster,
    bad_booster: xgb.Booster,
    mlflow_store: Path,
) -> None:
    client = MlflowClient()
    X, y = split_data.X_test, split_data.y_test
    good_score = pr_auc(y, predict_proba(good_booster, X))
    bad_score = pr_auc(y, predict_proba(bad_booster, X))
    assert good_score > bad_score + 0.1

    first = log(bad_booster, split_data).version
    decision = promote(client, first, X, y)
    assert decision.promoted and decision.champion_version is None
    assert aliases(client) == {CHAMPION: first, CHALLENGER: first}

    better = log(good_booster, split_data).version
    decision = promote(client, better, X, y, test_window="2025-09-14")
    assert decision.promoted
    assert (decision.champion_version, decision.champion_pr_auc) == (
        first,
        pytest.approx(bad_score),
    )
    assert decision.challenger_pr_auc == pytest.approx(good_score)
    assert aliases(client) == {CHAMPION: better, CHALLENGER: better}
    tags = client.get_model_version(MODEL_NAME, better).tags
    assert tags["promotion_decision"] == "promoted"
    assert tags["compared_with_version"] == first
    assert float(tags["champion_test_pr_auc"]) == pytest.approx(bad_score, abs=1e-6)
    assert float(tags["challenger_test_pr_auc"]) == pytest.approx(good_score, abs=1e-6)
    assert tags["promotion_test_window"] == "2025-09-14"

    # A later window: the champion must be re-scored on it, not judged by its logged metric.
    X_later, y_later = split_data.X_validation, split_data.y_validation
    good_later = pr_auc(y_later, predict_proba(good_booster, X_later))
    assert good_later != pytest.approx(good_score)
    worse = log(bad_booster, split_data).version
    decision = promote(client, worse, X_later, y_later)
    assert not decision.promoted
    assert decision.champion_pr_auc == pytest.approx(good_later)
    assert aliases(client) == {CHAMPION: better, CHALLENGER: worse}
    tags = client.get_model_version(MODEL_NAME, worse).tags
    assert tags["promotion_decision"] == "kept_champion"
    assert tags["compared_with_version"] == better


def test_a_failure_while_scoring_moves_no_alias(
    split_data: SplitData, good_booster: xgb.Booster, mlflow_store: Path
) -> None:
    client = MlflowClient()
    first = log(good_booster, split_data).version
    promote(client, first, split_data.X_test, split_data.y_test)
    second = log(good_booster, split_data).version

    calls = []

    def fails_on_the_champion(y_true: np.ndarray, scores: np.ndarray) -> float:
        calls.append(len(scores))
        if len(calls) == 2:
            raise RuntimeError("scoring the champion failed")
        return pr_auc(y_true, scores)

    with pytest.raises(RuntimeError, match="champion failed"):
        promote(client, second, split_data.X_test, split_data.y_test, fails_on_the_champion)
    assert aliases(client) == {CHAMPION: first, CHALLENGER: first}
    assert "promotion_decision" not in client.get_model_version(MODEL_NAME, second).tags


def test_champion_loads_from_the_registry_and_scores_with_contributions(
    split_data: SplitData, good_booster: xgb.Booster, mlflow_store: Path
) -> None:
    logged = log(good_booster, split_data, in_run=False)
    assert mlflow.active_run() is None
    assert MlflowClient().get_run(logged.run_id).info.status == "FINISHED"
    version = logged.version
    promote(MlflowClient(), version, split_data.X_test, split_data.y_test)

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    X = split_data.X_test.head(30)
    with_keys = X.assign(user_id=np.arange(30), cutoff_time=split_data.split.test_cutoff)
    scores = np.asarray(model.predict(with_keys))
    assert scores.shape == (30,)
    np.testing.assert_allclose(scores, predict_proba(good_booster, X), rtol=1e-6)

    python_model = model.unwrap_python_model()
    assert python_model.family == "xgboost"
    drivers = python_model.contributions(X.iloc[5:10])
    assert list(drivers.columns) == split_data.feature_columns
    assert list(drivers.index) == list(range(5, 10))
    with pytest.raises(Exception, match="carts_7d"):
        model.predict(X.drop(columns=["carts_7d"]))
