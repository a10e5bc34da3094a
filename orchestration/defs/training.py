"""Training: two model families, each tuned by Optuna, fitted, evaluated against baselines on
the untouched test window and registered in MLflow; then one promotion gate for both.

- XGBoost on the static features: xgb_study -> resampled_train -> xgb_model
- a PyTorch sequence model on each shopper's recent events and the static features:
  seq_study -> seq_model
- champion: every new version, of either family, is compared with the current champion on the
  same test window.

Assets are thin: the work lives in ml/. Models travel through the MLflow registry and study state
through Optuna storage; nothing here passes a model through an IO manager. Every asset that opens
the warehouse (read-only here) runs in the warehouse pool, so it never meets a writer's lock.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import optuna
import pandas as pd

from ml import settings
from ml.baselines import base_rate_scores, fit_logistic_regression, recency_frequency_scores
from ml.dataset import LABEL_COLUMN, load_cutoffs, load_labeled_features
from ml.evaluation import (
    choose_threshold,
    comparison_table,
    evaluate,
    save_evaluation_plots,
    save_feature_importance_plot,
    save_shap_summary_plot,
)
from ml.registry import MODEL_NAME, PromotionDecision, promote
from ml.resampling import STRATEGIES, resample_training
from ml.seq_model import predict_proba as seq_predict_proba
from ml.seq_model import torch_device, train_sequence_model
from ml.seq_tuning import SeqTuningConfig, load_best_seq_params, tune_sequence_model
from ml.splits import SplitData, choose_time_split, split_by_time
from ml.tracking import DEFAULT_EXPERIMENT, configure_mlflow, log_final_model, log_sequence_model
from ml.tuning import (
    DEFAULT_TARGET_RATIO,
    STRATEGY_KEY,
    TARGET_RATIO_KEY,
    TuningConfig,
    TuningResult,
    load_best_params,
    tune_xgb,
)
from ml.xgb import contributions, feature_importance, predict_proba, train_xgb, xgb_device
from orchestration.defs.resources import WAREHOUSE_POOL

FEATURE_MARTS = [
    dg.AssetKey(["marts", "user_features"]),
    dg.AssetKey(["marts", "labels"]),
    dg.AssetKey(["marts", "cutoffs"]),
]
SEQUENCE_MARTS = [*FEATURE_MARTS, dg.AssetKey(["marts", "user_sequences"])]
STUDY_NAME = "purchase-propensity-xgb"
SEQ_STUDY_NAME = "purchase-propensity-torch-seq"
SAMPLE_WEIGHT_COLUMN = "sample_weight"


class StudyConfig(dg.Config):
    """Tuning budget. The demo default is small; raise n_trials and timeout_s for a real search."""

    n_trials: int = 15
    timeout_s: int = 600
    seed: int = 42
    pruning: bool = True
    strategies: list[str] = list(STRATEGIES)
    study_name: str = STUDY_NAME


class ResamplingConfig(dg.Config):
    """An empty strategy or a zero ratio means: take it from the study's best trial."""

    strategy: str = ""
    target_ratio: float = 0.0
    study_name: str = STUDY_NAME
    seed: int = 0


class FinalModelConfig(dg.Config):
    study_name: str = STUDY_NAME
    top_k_fraction: float = 0.1


class SeqStudyConfig(dg.Config):
    """Sequence model tuning budget; each trial trains up to max_epochs with early stopping.

    The demo default fits a CPU: max_train_rows caps the training rows (every buyer is kept,
    non-buyers are sampled); 0 trains on the whole train split, as a GPU can afford.
    """

    n_trials: int = 4
    timeout_s: int = 600
    seed: int = 42
    pruning: bool = True
    max_epochs: int = 6
    max_train_rows: int = 40_000
    study_name: str = SEQ_STUDY_NAME


class SeqModelConfig(dg.Config):
    study_name: str = SEQ_STUDY_NAME
    top_k_fraction: float = 0.1


def load_split(with_sequences: bool = False) -> SplitData:
    warehouse = settings.warehouse_path()
    return split_by_time(
        load_labeled_features(warehouse, with_sequences=with_sequences),
        choose_time_split(load_cutoffs(warehouse)),
    )


def start_mlflow() -> str:
    return configure_mlflow(
        settings.mlflow_tracking_uri(), DEFAULT_EXPERIMENT, str(settings.mlflow_artifacts_dir())
    )


def resampled_train_path() -> Path:
    return settings.training_dir() / "train_resampled.parquet"


def split_metadata(data: SplitData) -> dict[str, str | int]:
    return {
        **{f"split_{key}": value for key, value in data.split.describe().items()},
        **data.row_counts(),
    }


def run_study(
    data: SplitData, study_name: str, device: str, tune: Callable[[], TuningResult]
) -> dg.MaterializeResult:
    """Runs `tune` inside the study's parent MLflow run (trials nest under it) and reports
    the study as asset metadata; both families' study assets share it."""
    with mlflow.start_run(run_name=f"study-{study_name}") as parent:
        mlflow.set_tags({f"split_{k}": v for k, v in data.split.describe().items()})
        result = tune()
        mlflow.log_metric("best_validation_pr_auc", result.best_value)
    return dg.MaterializeResult(
        metadata={
            "best_validation_pr_auc": result.best_value,
            "best_params": dg.MetadataValue.json(result.best_params),
            "trials_total": result.n_trials_total,
            "trials_this_run": result.n_trials_this_run,
            "trials_pruned": result.n_pruned,
            "device": device,
            "optuna_storage": settings.optuna_storage(),
            "mlflow_parent_run_id": parent.info.run_id,
            **split_metadata(data),
        }
    )


@dg.asset(
    key=["training", "xgb_study"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=FEATURE_MARTS,
    description="Optuna study over XGBoost and resampling strategies (validation PR-AUC).",
)
def xgb_study(context: dg.AssetExecutionContext, config: StudyConfig) -> dg.MaterializeResult:
    data = load_split()
    start_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune_xgb logs one line per trial
    tuning = TuningConfig(
        n_trials=config.n_trials,
        timeout_s=config.timeout_s,
        seed=config.seed,
        study_name=config.study_name,
        storage=settings.optuna_storage(),
        pruning=config.pruning,
        strategies=tuple(config.strategies),
    )
    return run_study(
        data, config.study_name, xgb_device(), lambda: tune_xgb(data, tuning, log=context.log.info)
    )


@dg.asset(
    key=["training", "resampled_train"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=[xgb_study],
    description=(
        "The training split resampled with the study's best strategy (or the configured one). "
        "Validation and test are never resampled."
    ),
)
def resampled_train(
    context: dg.AssetExecutionContext, config: ResamplingConfig
) -> dg.MaterializeResult:
    data = load_split()
    best = load_best_params(config.study_name, settings.optuna_storage())
    strategy = config.strategy or best[STRATEGY_KEY]
    target_ratio = config.target_ratio or best.get(TARGET_RATIO_KEY, DEFAULT_TARGET_RATIO)
    resampled = resample_training(
        data.X_train, data.y_train, strategy, target_ratio=target_ratio, seed=config.seed
    )
    frame = resampled.X.assign(**{LABEL_COLUMN: resampled.y})
    if resampled.sample_weight is not None:
        frame[SAMPLE_WEIGHT_COLUMN] = resampled.sample_weight
    path = resampled_train_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    context.log.info(
        f"{strategy} at ratio {target_ratio:.2f}: {resampled.counts_before} -> "
        f"{resampled.counts_after}"
    )
    return dg.MaterializeResult(
        metadata={
            "strategy": strategy,
            "target_ratio": float(target_ratio),
            "train_negatives_before": resampled.counts_before.get(0, 0),
            "train_positives_before": resampled.counts_before.get(1, 0),
            "train_negatives_after": resampled.counts_after.get(0, 0),
            "train_positives_after": resampled.counts_after.get(1, 0),
            "validation_positive_rate": float(np.mean(data.y_validation)),
            "test_positive_rate": float(np.mean(data.y_test)),
            "path": dg.MetadataValue.path(str(path)),
        }
    )


Scorer = Callable[[pd.DataFrame], np.ndarray]


def evaluate_against_baselines(
    data: SplitData, model_name: str, model_scores: Scorer, top_k_fraction: float
) -> tuple[dict[str, dict], dict[str, dict], dict[str, float], np.ndarray]:
    """Validation and test metrics of the model and the baselines, with each one's threshold
    chosen on validation, and the model's test scores (for its plots). Scorers get
    `data.model_input(split)`: features (and sequences)."""
    logistic = fit_logistic_regression(data.X_train, data.y_train)
    features = data.feature_columns
    scorers: dict[str, Scorer] = {
        model_name: model_scores,
        "logistic_regression": lambda X: logistic.predict_proba(X[features])[:, 1],
        "recency_frequency": lambda X: recency_frequency_scores(X[features]),
        "base_rate": lambda X: base_rate_scores(data.y_train, len(X)),
    }
    validation_input, test_input = data.model_input("validation"), data.model_input("test")
    validation_metrics, test_metrics, thresholds, test_scores = {}, {}, {}, {}
    for name, score in scorers.items():
        validation_scores = score(validation_input)
        thresholds[name] = choose_threshold(data.y_validation, validation_scores)
        validation_metrics[name] = evaluate(
            data.y_validation, validation_scores, thresholds[name], top_k_fraction
        )
        test_scores[name] = score(test_input)
        test_metrics[name] = evaluate(
            data.y_test, test_scores[name], thresholds[name], top_k_fraction
        )
    return validation_metrics, test_metrics, thresholds, test_scores[model_name]


def final_model_metadata(
    version: str, run_id: str, test: dict, threshold: float, table: pd.DataFrame, data: SplitData
) -> dict:
    return {
        "model_name": MODEL_NAME,
        "model_version": version,
        "mlflow_run_id": run_id,
        "test_pr_auc": test["pr_auc"],
        "test_roc_auc": test["roc_auc"],
        "test_precision_at_k": test["precision_at_k"],
        "test_lift_at_k": test["lift_at_k"],
        "threshold": threshold,
        "comparison": dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".4f")),
        **split_metadata(data),
    }


def read_resampled_train(
    feature_columns: list[str],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    frame = pd.read_parquet(resampled_train_path())
    weights = frame[SAMPLE_WEIGHT_COLUMN].to_numpy() if SAMPLE_WEIGHT_COLUMN in frame else None
    return frame[feature_columns], frame[LABEL_COLUMN].to_numpy(), weights


@dg.asset(
    key=["training", "xgb_model"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=[resampled_train],
    description=(
        "XGBoost with the study's best parameters, fitted on the resampled training split, "
        "compared with the baselines on the untouched test window, logged and registered in MLflow."
    ),
)
def xgb_model(context: dg.AssetExecutionContext, config: FinalModelConfig) -> dg.MaterializeResult:
    data = load_split()
    params = load_best_params(config.study_name, settings.optuna_storage())
    xgb_params = {k: v for k, v in params.items() if k not in (STRATEGY_KEY, TARGET_RATIO_KEY)}
    X_train, y_train, weights = read_resampled_train(data.feature_columns)
    booster = train_xgb(
        {**xgb_params, "seed": 0},
        X_train,
        y_train,
        data.X_validation,
        data.y_validation,
        sample_weight=weights,
    )
    validation_metrics, test_metrics, thresholds, test_scores = evaluate_against_baselines(
        data, "xgboost", lambda X: predict_proba(booster, X), config.top_k_fraction
    )
    table = comparison_table(test_metrics)
    context.log.info("Test window comparison:\n" + table.to_string(index=False))

    start_mlflow()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="xgboost-final") as run:
        plots_dir = Path(tmp) / "xgboost"
        plots = save_evaluation_plots(
            data.y_test,
            test_scores,
            thresholds["xgboost"],
            plots_dir,
            "xgboost",
        )
        plots.append(
            save_feature_importance_plot(
                feature_importance(booster), plots_dir / "feature_importance.png", "Gain"
            )
        )
        plots.append(
            save_shap_summary_plot(
                contributions(booster, data.X_test), data.X_test, plots_dir / "shap_summary.png"
            )
        )
        logged = log_final_model(
            booster,
            data,
            test_metrics,
            params,
            plot_paths=plots,
            validation_metrics=validation_metrics,
            threshold=thresholds["xgboost"],
        )
    return dg.MaterializeResult(
        metadata=final_model_metadata(
            logged.version,
            run.info.run_id,
            test_metrics["xgboost"],
            thresholds["xgboost"],
            table,
            data,
        )
    )


@dg.asset(
    key=["training", "seq_study"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=SEQUENCE_MARTS,
    description=(
        "Optuna study over the PyTorch sequence model (encoder, sizes, dropout, learning rate, "
        "batch size, sequence length); validation PR-AUC, pruned epoch by epoch."
    ),
)
def seq_study(context: dg.AssetExecutionContext, config: SeqStudyConfig) -> dg.MaterializeResult:
    data = load_split(with_sequences=True)
    start_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning = SeqTuningConfig(
        n_trials=config.n_trials,
        timeout_s=config.timeout_s,
        seed=config.seed,
        study_name=config.study_name,
        storage=settings.optuna_storage(),
        pruning=config.pruning,
        max_epochs=config.max_epochs,
        max_train_rows=config.max_train_rows,
    )
    return run_study(
        data,
        config.study_name,
        str(torch_device()),
        lambda: tune_sequence_model(data, tuning, log=context.log.info),
    )


@dg.asset(
    key=["training", "seq_model"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=[seq_study],
    description=(
        "The sequence model with the study's best parameters, compared with the baselines on the "
        "untouched test window, logged and registered in MLflow (family=torch-seq)."
    ),
)
def seq_model(context: dg.AssetExecutionContext, config: SeqModelConfig) -> dg.MaterializeResult:
    data = load_split(with_sequences=True)
    params = load_best_seq_params(config.study_name, settings.optuna_storage())
    trained = train_sequence_model(data, params, seed=0)
    validation_metrics, test_metrics, thresholds, test_scores = evaluate_against_baselines(
        data, "torch_seq", lambda X: seq_predict_proba(trained, X), config.top_k_fraction
    )
    table = comparison_table(test_metrics)
    context.log.info("Test window comparison:\n" + table.to_string(index=False))

    start_mlflow()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="torch-seq-final") as run:
        plots = save_evaluation_plots(
            data.y_test,
            test_scores,
            thresholds["torch_seq"],
            Path(tmp) / "torch_seq",
            "torch_seq",
        )
        logged = log_sequence_model(
            trained,
            data,
            test_metrics,
            params.to_dict(),
            plot_paths=plots,
            validation_metrics=validation_metrics,
            threshold=thresholds["torch_seq"],
        )
    return dg.MaterializeResult(
        metadata=final_model_metadata(
            logged.version,
            run.info.run_id,
            test_metrics["torch_seq"],
            thresholds["torch_seq"],
            table,
            data,
        )
    )


CANDIDATE_MODELS = (xgb_model, seq_model)


def new_versions(context: dg.AssetExecutionContext) -> list[str]:
    """The latest version each final-model asset registered that has no promotion decision yet,
    oldest first. A family not materialized yet (or already judged) adds nothing."""
    client = mlflow.MlflowClient()
    versions = []
    for asset in CANDIDATE_MODELS:
        event = context.instance.get_latest_materialization_event(asset.key)
        if event is None or event.asset_materialization is None:
            continue
        version = str(event.asset_materialization.metadata["model_version"].value)
        if "promotion_decision" not in client.get_model_version(MODEL_NAME, version).tags:
            versions.append(version)
    return sorted(versions, key=int)


def decisions_table(decisions: list[PromotionDecision]) -> pd.DataFrame:
    client = mlflow.MlflowClient()
    rows = [
        {
            "version": d.challenger_version,
            "family": client.get_model_version(MODEL_NAME, d.challenger_version).tags.get(
                "family", "?"
            ),
            "test_pr_auc": d.challenger_pr_auc,
            "compared_with": d.champion_version or "none",
            "decision": "promoted" if d.promoted else "kept champion",
        }
        for d in decisions
    ]
    return pd.DataFrame(rows)


@dg.asset(
    key=["training", "champion"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=list(CANDIDATE_MODELS),
    description=(
        "Promotion gate for both families: each new version becomes `challenger`, and "
        "`champion` only if it beats the current champion re-scored on the same test window."
    ),
)
def champion(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    start_mlflow()
    versions = new_versions(context)
    if not versions:
        raise dg.Failure("No new model version to judge: materialize xgb_model or seq_model first")
    data = load_split(with_sequences=True)
    test_input = data.model_input("test")
    decisions = []
    for version in versions:
        decision = promote(
            mlflow.MlflowClient(),
            version,
            test_input,
            data.y_test,
            test_window=str(data.split.test_cutoff),
        )
        context.log.info(f"Promotion of version {version}: {decision.reason}")
        decisions.append(decision)
    table = decisions_table(decisions)
    champion_version = next(
        (d.challenger_version for d in reversed(decisions) if d.promoted),
        decisions[-1].champion_version,
    )
    return dg.MaterializeResult(
        metadata={
            "champion_version": champion_version or "none",
            "versions_judged": ", ".join(versions),
            "promoted": any(d.promoted for d in decisions),
            "decisions": dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".4f")),
            "reasons": dg.MetadataValue.json({d.challenger_version: d.reason for d in decisions}),
            "test_window": str(data.split.test_cutoff),
        }
    )
