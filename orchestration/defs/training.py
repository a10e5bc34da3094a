"""Training: two model families, each tuned by Optuna on the tuning role's cutoffs, fitted,
calibrated, compared with the baselines on the promotion window (every figure with a user-level
interval) and registered in MLflow; then one promotion gate for both.

- XGBoost on the static features: xgb_study -> resampled_train -> xgb_model
- a PyTorch sequence model on each shopper's recent events and the static features:
  seq_study -> seq_model
- champion: every new version, of either family, is compared with the current champion on the
  promotion window, both scored now; it is promoted only when the paired difference's lower
  bound clears the minimum gain.

Which cutoffs play which role (ml.splits) is the `time_roles` resource, so every asset of a run
sees the same roles.

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
from ml.dataset import LABEL_COLUMN, load_cutoffs, load_labeled_features
from ml.evaluation import (
    CALIBRATION_METHODS,
    paired_differences,
    save_calibration_comparison_plot,
    save_evaluation_plots,
    save_feature_importance_plot,
    save_shap_summary_plot,
)
from ml.evaluation.final import FinalEvaluation, evaluate_final_model
from ml.registry import (
    MODEL_NAME,
    GateConfig,
    PromotionDecision,
    newest_versions_by_family,
    predict_version,
    promote,
)
from ml.resampling import STRATEGIES, resample_training
from ml.seq_model import predict_proba as seq_predict_proba
from ml.seq_model import torch_device, train_sequence_model
from ml.seq_tuning import SeqTuningConfig, load_best_seq_params, tune_sequence_model
from ml.splits import (
    SplitData,
    choose_time_split,
    split_by_time,
)
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
from orchestration.defs.resources import WAREHOUSE_POOL, TimeRolesResource

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
    """Tuning budget: n_trials trials run, whatever the machine's speed. timeout_s is only a
    safety net for the whole study; hitting it is reported (metadata `timed_out`)."""

    n_trials: int = 15
    timeout_s: int = 3600
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
    """calibration_method: sigmoid (keeps the ranking) or isotonic; n_resamples: user-level
    bootstrap resamples behind every interval."""

    study_name: str = STUDY_NAME
    top_k_fraction: float = 0.1
    calibration_method: str = "sigmoid"
    n_resamples: int = 1000


class SeqStudyConfig(dg.Config):
    """Sequence model tuning budget; each trial trains up to max_epochs with early stopping.

    The demo default fits a CPU: max_train_rows caps the training rows (every buyer is kept,
    non-buyers are sampled); 0 trains on the whole train split, as a GPU can afford.
    """

    n_trials: int = 4
    timeout_s: int = 3600
    seed: int = 42
    pruning: bool = True
    max_epochs: int = 4
    max_train_rows: int = 20_000
    study_name: str = SEQ_STUDY_NAME


class SeqModelConfig(FinalModelConfig):
    study_name: str = SEQ_STUDY_NAME


def load_split(time_roles: TimeRolesResource, with_sequences: bool = False) -> SplitData:
    warehouse = settings.warehouse_path()
    split = choose_time_split(
        load_cutoffs(warehouse),
        n_validation=time_roles.n_validation_cutoffs,
        n_promotion=time_roles.n_promotion_cutoffs,
        max_train_cutoffs=time_roles.max_train_cutoffs,
    )
    role_cutoffs = split.train_cutoffs + split.validation_cutoffs + split.promotion_cutoffs
    labeled = load_labeled_features(warehouse, with_sequences=with_sequences, cutoffs=role_cutoffs)
    return split_by_time(labeled, split)


def start_mlflow() -> str:
    return configure_mlflow(
        settings.mlflow_tracking_uri(), DEFAULT_EXPERIMENT, str(settings.mlflow_artifacts_dir())
    )


def resampled_train_path() -> Path:
    return settings.training_dir() / "train_resampled.parquet"


def split_metadata(data: SplitData) -> dict[str, str | int]:
    """Each role's cutoffs, rows and buyers; a warning when cutoffs with an incomplete
    lookback had to be used."""
    metadata: dict[str, str | int] = {
        **{f"split_{key}": value for key, value in data.split.describe().items()},
        **data.row_counts(),
    }
    if data.split.history_warning:
        metadata["history_warning"] = data.split.history_warning
    return metadata


def run_study(
    data: SplitData, study_name: str, device: str, tune: Callable[[], TuningResult]
) -> dg.MaterializeResult:
    """Runs `tune` inside the study's parent MLflow run (trials nest under it) and reports
    the study as asset metadata; both families' study assets share it."""
    with mlflow.start_run(run_name=f"study-{study_name}") as parent:
        mlflow.set_tags({f"split_{k}": v for k, v in data.split.describe().items()})
        result = tune()
        mlflow.log_metric("best_validation_pr_auc", result.best_value)
        mlflow.set_tag("timed_out", str(result.timed_out).lower())
    return dg.MaterializeResult(
        metadata={
            "best_validation_pr_auc": result.best_value,
            "best_params": dg.MetadataValue.json(result.best_params),
            "trials_total": result.n_trials_total,
            "trials_requested": result.n_trials_requested,
            "trials_this_run": result.n_trials_this_run,
            "trials_pruned": result.n_pruned,
            "timed_out": result.timed_out,
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
def xgb_study(
    context: dg.AssetExecutionContext, config: StudyConfig, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    data = load_split(time_roles)
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
    context: dg.AssetExecutionContext, config: ResamplingConfig, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    data = load_split(time_roles)
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
            "path": dg.MetadataValue.path(str(path)),
        }
    )


def final_model_metadata(
    version: str, run_id: str, evaluation: FinalEvaluation, data: SplitData
) -> dict:
    """The model's promotion-window figures with their intervals, the comparison, segments
    and calibration, and each role's cutoffs, rows and buyers."""
    promotion = evaluation.promotion
    metadata: dict = {
        "model_name": MODEL_NAME,
        "model_version": version,
        "mlflow_run_id": run_id,
        "threshold": evaluation.thresholds[evaluation.model],
        "calibration_method": evaluation.calibrator.method,
        "mean_score": evaluation.mean_score,
        "observed_buyer_rate": evaluation.buyer_rate,
        "ece_raw": evaluation.ece_raw.text(4),
        "comparison": dg.MetadataValue.md(evaluation.window.markdown()),
        "segments": dg.MetadataValue.md(evaluation.segments.to_markdown(index=False)),
        **split_metadata(data),
    }
    for name in ("pr_auc", "roc_auc", "log_loss", "brier", "precision_at_k", "lift_at_k", "ece"):
        metadata[f"promotion_{name}"] = promotion[name].estimate
        metadata[f"promotion_{name}_ci"] = (
            f"[{promotion[name].low:.4f}, {promotion[name].high:.4f}]"
        )
    return metadata


def evaluation_plots(data: SplitData, evaluation: FinalEvaluation, folder: Path) -> list[Path]:
    """ROC, PR, calibration and confusion matrix of the calibrated promotion scores, and the
    calibration curve before and after."""
    plots = save_evaluation_plots(
        data.y_promotion,
        evaluation.promotion_scores,
        evaluation.thresholds[evaluation.model],
        folder,
        evaluation.model,
    )
    plots.append(
        save_calibration_comparison_plot(
            data.y_promotion,
            evaluation.raw_promotion_scores,
            evaluation.promotion_scores,
            folder / "calibration_before_after.png",
        )
    )
    return plots


def evaluate_and_log(
    context: dg.AssetExecutionContext,
    data: SplitData,
    config: FinalModelConfig,
    model: str,
    raw_scores: Callable[[pd.DataFrame], np.ndarray],
    log_model: Callable[[FinalEvaluation, list[Path]], object],
    extra_plots: Callable[[Path], list[Path]] = lambda folder: [],
) -> dg.MaterializeResult:
    """What every family's final-model asset does after training: calibrate and evaluate
    (ml.evaluation.final), draw the plots, log and register in one MLflow run, report."""
    if config.calibration_method not in CALIBRATION_METHODS:
        raise dg.Failure(f"calibration_method must be one of {CALIBRATION_METHODS}")
    evaluation = evaluate_final_model(
        data,
        model,
        raw_scores,
        calibration_method=config.calibration_method,
        top_k_fraction=config.top_k_fraction,
        n_resamples=config.n_resamples,
    )
    context.log.info("Promotion window comparison:\n" + evaluation.window.markdown())
    start_mlflow()
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(run_name=f"{model.replace('_', '-')}-final") as run,
    ):
        folder = Path(tmp) / model
        plots = evaluation_plots(data, evaluation, folder) + extra_plots(folder)
        logged = log_model(evaluation, plots)
    return dg.MaterializeResult(
        metadata=final_model_metadata(logged.version, run.info.run_id, evaluation, data)
    )


@dg.asset(
    key=["training", "xgb_model"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=[resampled_train],
    description=(
        "XGBoost with the study's best parameters, fitted on the resampled training rows, "
        "calibrated on the validation cutoffs, compared with the baselines on the promotion "
        "window (user-level intervals), logged and registered in MLflow."
    ),
)
def xgb_model(
    context: dg.AssetExecutionContext, config: FinalModelConfig, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    data = load_split(time_roles)
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

    def explain(folder: Path) -> list[Path]:
        return [
            save_feature_importance_plot(
                feature_importance(booster), folder / "feature_importance.png", "Gain"
            ),
            save_shap_summary_plot(
                contributions(booster, data.X_promotion),
                data.X_promotion,
                folder / "shap_summary.png",
            ),
        ]

    return evaluate_and_log(
        context,
        data,
        config,
        "xgboost",
        lambda X: predict_proba(booster, X[data.feature_columns]),
        lambda evaluation, plots: log_final_model(
            booster, data, evaluation, params, plot_paths=plots
        ),
        extra_plots=explain,
    )


def read_resampled_train(
    feature_columns: list[str],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    frame = pd.read_parquet(resampled_train_path())
    weights = frame[SAMPLE_WEIGHT_COLUMN].to_numpy() if SAMPLE_WEIGHT_COLUMN in frame else None
    return frame[feature_columns], frame[LABEL_COLUMN].to_numpy(), weights


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
def seq_study(
    context: dg.AssetExecutionContext, config: SeqStudyConfig, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    data = load_split(time_roles, with_sequences=True)
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
        "The sequence model with the study's best parameters, calibrated on the validation "
        "cutoffs, compared with the baselines on the promotion window (user-level intervals), "
        "logged and registered in MLflow (family=torch-seq)."
    ),
)
def seq_model(
    context: dg.AssetExecutionContext, config: SeqModelConfig, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    data = load_split(time_roles, with_sequences=True)
    params = load_best_seq_params(config.study_name, settings.optuna_storage())
    trained = train_sequence_model(data, params, seed=0)
    return evaluate_and_log(
        context,
        data,
        config,
        "torch_seq",
        lambda X: seq_predict_proba(trained, X),
        lambda evaluation, plots: log_sequence_model(
            trained, data, evaluation, params.to_dict(), plot_paths=plots
        ),
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
    rows = []
    for d in decisions:
        difference = d.difference
        rows.append(
            {
                "version": d.challenger_version,
                "family": client.get_model_version(MODEL_NAME, d.challenger_version).tags.get(
                    "family", "?"
                ),
                "promotion_pr_auc": f"{d.challenger_pr_auc:.4f}",
                "compared_with": d.champion_version or "none",
                "difference (95 % interval)": difference.text() if difference else "-",
                "lower bound": f"{difference.lower_bound:+.4f}" if difference else "-",
                "decision": "promoted" if d.promoted else "kept champion",
            }
        )
    return pd.DataFrame(rows)


def family_comparison(
    data: SplitData, gate: GateConfig, scorer: Callable[[str, pd.DataFrame], np.ndarray]
) -> tuple[dict[str, str], pd.DataFrame]:
    """The newest version of each family scored now on the promotion window (by `scorer`), and
    the paired PR-AUC difference of each pair of families: (versions by family, table)."""
    versions = newest_versions_by_family(mlflow.MlflowClient())
    promotion_input = data.model_input("promotion")
    users = data.keys_promotion["user_id"].to_numpy()
    scores = {family: scorer(version, promotion_input) for family, version in versions.items()}
    rows = []
    families = sorted(scores)
    for i, first in enumerate(families):
        for second in families[i + 1 :]:
            difference = paired_differences(
                data.y_promotion,
                scores[first],
                scores[second],
                users,
                n_resamples=gate.n_resamples,
                seed=gate.seed,
                confidence=gate.confidence,
                names=("pr_auc",),
            )["pr_auc"]
            rows.append(
                {
                    "comparison": f"{first} v{versions[first]} minus {second} v{versions[second]}",
                    "pr_auc_difference": difference.estimate,
                    "low": difference.low,
                    "high": difference.high,
                    "p_positive": difference.p_positive,
                    "reading": difference_reading(difference.low, difference.high),
                }
            )
    return versions, pd.DataFrame(rows)


def difference_reading(low: float, high: float) -> str:
    """What an interval of a difference allows one to say, and no more."""
    if low > 0:
        return "first is better"
    if high < 0:
        return "second is better"
    return "not distinguishable on this window"


class ChampionConfig(dg.Config):
    """The gate: promote when the one-sided `confidence` lower bound of the paired PR-AUC
    difference (challenger minus champion) exceeds `min_gain`."""

    min_gain: float = 0.0
    confidence: float = 0.95
    n_resamples: int = 1000


@dg.asset(
    key=["training", "champion"],
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=list(CANDIDATE_MODELS),
    description=(
        "Promotion gate for both families: each new version becomes `challenger`, and "
        "`champion` only if the lower bound of its paired PR-AUC gain over the champion, both "
        "scored now on the promotion window, clears the minimum gain."
    ),
)
def champion(
    context: dg.AssetExecutionContext, config: ChampionConfig, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    start_mlflow()
    versions = new_versions(context)
    if not versions:
        raise dg.Failure("No new model version to judge: materialize xgb_model or seq_model first")
    data = load_split(time_roles, with_sequences=True)
    promotion_input = data.model_input("promotion")
    users = data.keys_promotion["user_id"].to_numpy()
    gate = GateConfig(
        min_gain=config.min_gain, confidence=config.confidence, n_resamples=config.n_resamples
    )
    window = data.split.describe()["promotion_cutoffs"]
    scored: dict[str, np.ndarray] = {}

    def scorer(version: str, X: pd.DataFrame) -> np.ndarray:
        """Each version is loaded and scored once, for the gate and the family comparison."""
        if version not in scored:
            scored[version] = predict_version(MODEL_NAME, version, X)
        return scored[version]

    decisions = []
    for version in versions:
        decision = promote(
            mlflow.MlflowClient(),
            version,
            promotion_input,
            data.y_promotion,
            users,
            gate=gate,
            window=window,
            scorer=scorer,
        )
        context.log.info(f"Promotion of version {version}: {decision.reason}")
        decisions.append(decision)
    table = decisions_table(decisions)
    champion_version = next(
        (d.challenger_version for d in reversed(decisions) if d.promoted),
        decisions[-1].champion_version,
    )
    family_versions, families = family_comparison(data, gate, scorer)
    return dg.MaterializeResult(
        metadata={
            "champion_version": champion_version or "none",
            "versions_judged": ", ".join(versions),
            "promoted": any(d.promoted for d in decisions),
            "decisions": dg.MetadataValue.md(table.to_markdown(index=False)),
            "reasons": dg.MetadataValue.json({d.challenger_version: d.reason for d in decisions}),
            "families": dg.MetadataValue.json(family_versions),
            "family_comparison": dg.MetadataValue.md(
                families.to_markdown(index=False, floatfmt="+.4f") if len(families) else "-"
            ),
            "family_differences": dg.MetadataValue.json(families.to_dict(orient="records")),
            "promotion_window": window,
            "promotion_rows": len(data.y_promotion),
            "promotion_buyers": int(data.y_promotion.sum()),
            "promotion_users": int(len(set(users))),
            "gate": f"lower bound ({config.confidence:.0%}, one-sided) > {config.min_gain:+.4f}",
        }
    )
