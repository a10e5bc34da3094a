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

from ml.evaluation import save_feature_importance_plot
from ml.evaluation.final import FinalEvaluation, evaluate_final_model
from ml.families.xgboost.model import feature_importance, predict_proba, train_xgb
from ml.families.xgboost.pyfunc import log_model as log_final_model
from ml.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    GateConfig,
    pr_auc,
    predict_frame,
    promote,
)
from ml.splits import SplitData
from ml.tracking import LoggedModel, git_commit

pytestmark = pytest.mark.usefixtures("single_thread_xgboost")

PARAMS = {"strategy": "none", "target_ratio": 0.5, "max_depth": 3, "eta": 0.3}


def train(data: SplitData, y_train: np.ndarray, seed: int = 0) -> xgb.Booster:
    return train_xgb(
        {"max_depth": 3, "eta": 0.3, "subsample": 0.7, "colsample_bytree": 0.8, "seed": seed},
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
    evaluation = final_evaluation(booster, data)
    if not in_run:
        return log_final_model(booster, data, evaluation, PARAMS)
    with mlflow.start_run(run_name="final") as run:
        logged = log_final_model(booster, data, evaluation, PARAMS, plot_paths=plot_paths)
    assert logged.run_id == run.info.run_id
    return logged


def final_evaluation(booster: xgb.Booster, data: SplitData) -> FinalEvaluation:
    return evaluate_final_model(
        data, "xgboost", lambda X: predict_proba(booster, X), n_resamples=100
    )


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
    expected_pr_auc = pr_auc(
        split_data.y_promotion, predict_proba(good_booster, split_data.X_promotion)
    )
    metrics = run.data.metrics
    # Calibration is monotone: the ranking, and so the PR-AUC, of the raw scores is kept.
    assert metrics["promotion_pr_auc"] == pytest.approx(expected_pr_auc)
    assert metrics["promotion_xgboost_pr_auc"] == metrics["promotion_pr_auc"]
    assert (
        metrics["promotion_pr_auc_ci_low"] < expected_pr_auc < metrics["promotion_pr_auc_ci_high"]
    )
    assert metrics["promotion_base_rate_pr_auc"] < metrics["promotion_pr_auc"]
    assert metrics["promotion_pr_auc_minus_base_rate_ci_low"] > 0
    assert "validation_xgboost_pr_auc" in metrics and "promotion_ece_raw" in metrics
    assert metrics["promotion_mean_score"] == pytest.approx(
        metrics["promotion_buyer_rate"], abs=0.03
    )
    assert run.data.params["strategy"] == "none"
    tags = run.data.tags
    assert tags["split_promotion_cutoffs"] == split_data.split.describe()["promotion_cutoffs"]
    assert tags["rows_promotion_rows"] == str(len(split_data.y_promotion))
    assert tags["git_commit"] == git_commit() != ""
    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    assert {"model_card.md", "comparison_table.csv", "comparison_table.md"} <= artifacts
    assert {"segments.md", "calibration.json"} <= artifacts
    assert "comparison_table.json" in artifacts  # mlflow.log_table worked
    assert [a.path for a in client.list_artifacts(logged.run_id, "plots/xgboost")] == [
        "plots/xgboost/importance.png"
    ]
    card = mlflow.artifacts.load_text(f"runs:/{logged.run_id}/model_card.md")
    assert split_data.split.promotion_cutoffs[0].isoformat() in card and "base_rate" in card
    assert "within 3 days after a cutoff" in card
    assert "## Roles of time" in card and "only the promotion gate" in card
    assert "expected calibration error" in card and "winner's curse" in card
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(f"runs:/{logged.run_id}/comparison_table.csv")
    )
    assert set(table["model"]) == {"xgboost", "logistic_regression", "base_rate"}
    assert {"pr_auc_low", "pr_auc_high", "difference_low", "difference_high"} <= set(table)

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


def users(data: SplitData) -> np.ndarray:
    return data.keys_promotion["user_id"].to_numpy()


def test_promotion_keeps_a_better_champion_and_moves_to_a_better_challenger(
    split_data: SplitData,
    good_booster: xgb.Booster,
    bad_booster: xgb.Booster,
    mlflow_store: Path,
) -> None:
    client = MlflowClient()
    X, y = split_data.X_promotion, split_data.y_promotion
    good_score = pr_auc(y, predict_proba(good_booster, X))
    bad_score = pr_auc(y, predict_proba(bad_booster, X))
    assert good_score > bad_score + 0.1

    first = log(bad_booster, split_data).version
    decision = promote(client, first, X, y, users(split_data))
    assert decision.promoted and decision.champion_version is None
    assert aliases(client) == {CHAMPION: first, CHALLENGER: first}

    better = log(good_booster, split_data).version
    decision = promote(client, better, X, y, users(split_data), window="2025-09-13..14")
    assert decision.promoted
    assert (decision.champion_version, decision.champion_pr_auc) == (
        first,
        pytest.approx(bad_score),
    )
    assert decision.challenger_pr_auc == pytest.approx(good_score)
    assert decision.difference.estimate == pytest.approx(good_score - bad_score)
    assert decision.difference.lower_bound > 0.05
    assert "gain shown: promoted" in decision.reason and "beats" not in decision.reason
    assert aliases(client) == {CHAMPION: better, CHALLENGER: better}
    tags = client.get_model_version(MODEL_NAME, better).tags
    assert tags["promotion_decision"] == "promoted"
    assert tags["compared_with_version"] == first
    assert float(tags["champion_promotion_pr_auc"]) == pytest.approx(bad_score, abs=1e-6)
    assert float(tags["challenger_promotion_pr_auc"]) == pytest.approx(good_score, abs=1e-6)
    low, high = float(tags["pr_auc_difference_low"]), float(tags["pr_auc_difference_high"])
    assert low < good_score - bad_score < high
    assert float(tags["pr_auc_difference_lower_bound"]) > low
    assert tags["promotion_window"] == "2025-09-13..14"
    assert tags["promotion_buyers"] == str(int(y.sum()))
    assert tags["promotion_users"] == str(len(set(users(split_data))))
    assert (tags["gate_min_gain"], tags["gate_confidence"]) == ("0", "0.95")

    # A later window: the champion must be re-scored on it, not judged by its logged metric.
    X_later, y_later = split_data.X_validation, split_data.y_validation
    good_later = pr_auc(y_later, predict_proba(good_booster, X_later))
    assert good_later != pytest.approx(good_score)
    worse = log(bad_booster, split_data).version
    decision = promote(client, worse, X_later, y_later, np.arange(len(y_later)))
    assert not decision.promoted
    assert decision.champion_pr_auc == pytest.approx(good_later)
    assert aliases(client) == {CHAMPION: better, CHALLENGER: worse}
    tags = client.get_model_version(MODEL_NAME, worse).tags
    assert tags["promotion_decision"] == "kept_champion"
    assert tags["compared_with_version"] == better


def test_a_refit_with_another_seed_is_kept_out(
    split_data: SplitData, good_booster: xgb.Booster, mlflow_store: Path
) -> None:
    """The A/A case: the champion's own parameters refitted with another seed differ from it
    only by chance, so whichever way the point difference falls, the gate keeps the champion."""
    client = MlflowClient()
    X, y = split_data.X_promotion, split_data.y_promotion
    champion = log(good_booster, split_data).version
    promote(client, champion, X, y, users(split_data))
    for seed in (1, 2, 3):
        refit = train(split_data, split_data.y_train, seed=seed)
        assert not np.allclose(predict_proba(refit, X), predict_proba(good_booster, X))
        challenger = log(refit, split_data).version
        decision = promote(client, challenger, X, y, users(split_data))
        assert not decision.promoted, decision.reason
        assert decision.difference.low < decision.difference.estimate < decision.difference.high
        assert decision.difference.lower_bound <= 0
        assert "gain not shown: champion kept" in decision.reason
    assert aliases(client)[CHAMPION] == champion


def test_a_minimum_gain_keeps_a_small_real_gain_out(
    split_data: SplitData,
    good_booster: xgb.Booster,
    bad_booster: xgb.Booster,
    mlflow_store: Path,
) -> None:
    client = MlflowClient()
    X, y = split_data.X_promotion, split_data.y_promotion
    first = log(bad_booster, split_data).version
    promote(client, first, X, y, users(split_data))
    better = log(good_booster, split_data).version
    decision = promote(client, better, X, y, users(split_data), gate=GateConfig(min_gain=0.9))
    assert not decision.promoted and decision.difference.lower_bound > 0
    assert aliases(client)[CHAMPION] == first


def test_a_failure_while_scoring_moves_no_alias(
    split_data: SplitData, good_booster: xgb.Booster, mlflow_store: Path
) -> None:
    client = MlflowClient()
    first = log(good_booster, split_data).version
    promote(client, first, split_data.X_promotion, split_data.y_promotion, users(split_data))
    second = log(good_booster, split_data).version

    def fails_on_the_champion(version: str, X: pd.DataFrame) -> np.ndarray:
        if version == first:
            raise RuntimeError("scoring the champion failed")
        return predict_proba(good_booster, X)

    with pytest.raises(RuntimeError, match="champion failed"):
        promote(
            client,
            second,
            split_data.X_promotion,
            split_data.y_promotion,
            users(split_data),
            scorer=fails_on_the_champion,
        )
    assert aliases(client) == {CHAMPION: first, CHALLENGER: first}
    assert "promotion_decision" not in client.get_model_version(MODEL_NAME, second).tags


def test_champion_loads_from_the_registry_and_scores_with_contributions(
    split_data: SplitData, good_booster: xgb.Booster, mlflow_store: Path
) -> None:
    logged = log(good_booster, split_data, in_run=False)
    assert mlflow.active_run() is None
    assert MlflowClient().get_run(logged.run_id).info.status == "FINISHED"
    version = logged.version
    promote(
        MlflowClient(), version, split_data.X_promotion, split_data.y_promotion, users(split_data)
    )

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    X = split_data.X_promotion.head(30)
    with_keys = X.assign(user_id=np.arange(30), cutoff_time=split_data.split.promotion_cutoffs[0])
    scores = np.asarray(model.predict(with_keys))
    assert scores.shape == (30,)
    raw = predict_proba(good_booster, X)
    calibrator = final_evaluation(good_booster, split_data).calibrator
    np.testing.assert_allclose(scores, calibrator.apply(raw), rtol=1e-6)
    assert not np.allclose(scores, raw)  # the registered model serves calibrated scores
    np.testing.assert_array_equal(predict_frame(model, with_keys), scores)

    python_model = model.unwrap_python_model()
    assert python_model.family == "xgboost"
    drivers = python_model.contributions(X.iloc[5:10])
    assert list(drivers.columns) == split_data.feature_columns
    assert list(drivers.index) == list(range(5, 10))
    with pytest.raises(Exception, match="carts_7d"):
        model.predict(X.drop(columns=["carts_7d"]))
