"""Training: tune XGBoost with Optuna, resample the training split, fit, evaluate against
baselines on the untouched test window, log everything to MLflow and gate the champion alias.

Assets are thin: the work lives in ml/. Models travel through the MLflow registry and study state
through Optuna storage; nothing here passes a model through an IO manager.
"""

import tempfile
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
from ml.registry import MODEL_NAME, promote
from ml.resampling import STRATEGIES, resample_training
from ml.splits import SplitData, choose_time_split, split_by_time
from ml.tracking import DEFAULT_EXPERIMENT, configure_mlflow, log_final_model
from ml.tuning import (
    DEFAULT_TARGET_RATIO,
    STRATEGY_KEY,
    TARGET_RATIO_KEY,
    TuningConfig,
    load_best_params,
    tune_xgb,
)
from ml.xgb import contributions, feature_importance, predict_proba, train_xgb, xgb_device

FEATURE_MARTS = [
    dg.AssetKey(["marts", "user_features"]),
    dg.AssetKey(["marts", "labels"]),
    dg.AssetKey(["marts", "cutoffs"]),
]
STUDY_NAME = "purchase-propensity-xgb"
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


def load_split() -> SplitData:
    warehouse = settings.warehouse_path()
    return split_by_time(
        load_labeled_features(warehouse), choose_time_split(load_cutoffs(warehouse))
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


@dg.asset(
    key=["training", "xgb_study"],
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
    with mlflow.start_run(run_name=f"study-{config.study_name}") as parent:
        mlflow.set_tags({f"split_{k}": v for k, v in data.split.describe().items()})
        result = tune_xgb(data, tuning, log=context.log.info)
        mlflow.log_metric("best_validation_pr_auc", result.best_value)
    return dg.MaterializeResult(
        metadata={
            "best_validation_pr_auc": result.best_value,
            "best_params": dg.MetadataValue.json(result.best_params),
            "trials_total": result.n_trials_total,
            "trials_this_run": result.n_trials_this_run,
            "trials_pruned": result.n_pruned,
            "device": xgb_device(),
            "optuna_storage": settings.optuna_storage(),
            "mlflow_parent_run_id": parent.info.run_id,
            **split_metadata(data),
        }
    )


@dg.asset(
    key=["training", "resampled_train"],
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


def read_resampled_train(
    feature_columns: list[str],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    frame = pd.read_parquet(resampled_train_path())
    weights = frame[SAMPLE_WEIGHT_COLUMN].to_numpy() if SAMPLE_WEIGHT_COLUMN in frame else None
    return frame[feature_columns], frame[LABEL_COLUMN].to_numpy(), weights


@dg.asset(
    key=["training", "xgb_model"],
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
    logistic = fit_logistic_regression(data.X_train, data.y_train)
    scorers = {
        "xgboost": lambda X: predict_proba(booster, X),
        "logistic_regression": lambda X: logistic.predict_proba(X)[:, 1],
        "recency_frequency": recency_frequency_scores,
        "base_rate": lambda X: base_rate_scores(data.y_train, len(X)),
    }
    validation_metrics, test_metrics, thresholds = {}, {}, {}
    for name, score in scorers.items():
        validation_scores = score(data.X_validation)
        thresholds[name] = choose_threshold(data.y_validation, validation_scores)
        validation_metrics[name] = evaluate(
            data.y_validation, validation_scores, thresholds[name], config.top_k_fraction
        )
        test_metrics[name] = evaluate(
            data.y_test, score(data.X_test), thresholds[name], config.top_k_fraction
        )
    table = comparison_table(test_metrics)
    context.log.info("Test window comparison:\n" + table.to_string(index=False))

    start_mlflow()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="xgboost-final") as run:
        plots_dir = Path(tmp) / "xgboost"
        plots = save_evaluation_plots(
            data.y_test,
            predict_proba(booster, data.X_test),
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
    xgb_test = test_metrics["xgboost"]
    return dg.MaterializeResult(
        metadata={
            "model_name": MODEL_NAME,
            "model_version": logged.version,
            "mlflow_run_id": run.info.run_id,
            "test_pr_auc": xgb_test["pr_auc"],
            "test_roc_auc": xgb_test["roc_auc"],
            "test_precision_at_k": xgb_test["precision_at_k"],
            "test_lift_at_k": xgb_test["lift_at_k"],
            "threshold": thresholds["xgboost"],
            "comparison": dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".4f")),
            **split_metadata(data),
        }
    )


@dg.asset(
    key=["training", "champion"],
    group_name="training",
    deps=[xgb_model],
    description=(
        "Promotion gate: the new version becomes `challenger`, and `champion` only if it beats "
        "the current champion re-scored on the same test window."
    ),
)
def champion(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    event = context.instance.get_latest_materialization_event(xgb_model.key)
    version = str(event.asset_materialization.metadata["model_version"].value)
    data = load_split()
    start_mlflow()
    decision = promote(
        mlflow.MlflowClient(),
        version,
        data.X_test,
        data.y_test,
        test_window=str(data.split.test_cutoff),
    )
    context.log.info(f"Promotion of version {version}: {decision.reason}")
    return dg.MaterializeResult(
        metadata={
            "challenger_version": decision.challenger_version,
            "challenger_test_pr_auc": decision.challenger_pr_auc,
            "champion_version_before": decision.champion_version or "none",
            "champion_test_pr_auc_before": decision.champion_pr_auc
            if decision.champion_pr_auc is not None
            else float("nan"),
            "promoted": decision.promoted,
            "reason": decision.reason,
            "test_window": str(data.split.test_cutoff),
        }
    )
