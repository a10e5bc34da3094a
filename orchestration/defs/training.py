"""Training: one study asset and one final-model asset per registered model family
(ml.families), built by the factories below, then one promotion gate for all of them.

- time_split: the rows of each role's cutoffs (ml.splits), frozen once per run, so every asset
  downstream sees the same windows and none of them holds the warehouse's lock
- behaviour_encoder: the sequence family's event encoder pretrained on next-event prediction
  over the tuning roles' sequences (no labels), registered as `behaviour-encoder`
- <family>_study: Optuna tunes the family on the tuning role (train + validation cutoffs)
- <family>_model: the best parameters fitted (or the study's kept best model reused),
  calibrated, compared with the baselines on the promotion window (every figure with a
  user-level interval) and registered in MLflow
- next_category_model: which categories each shopper will touch (ml.next_category), against
  four baselines on the promotion window, registered as `next-category` with its own gate
- champion: every new version, of any family, is compared with the current champion on the
  promotion window, both scored now; it is promoted only when the paired difference's lower
  bound clears the minimum gain.

Assets are thin: the work lives in ml/. Models travel through the MLflow registry and study state
through Optuna storage; nothing here passes a model through an IO manager.
"""

import dataclasses
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import optuna
import pandas as pd
from pydantic import create_model

from ml import settings
from ml.dataset import load_cutoffs, load_labeled_features
from ml.evaluation import (
    CALIBRATION_METHODS,
    paired_differences,
    save_calibration_comparison_plot,
    save_evaluation_plots,
)
from ml.evaluation.final import FinalEvaluation, evaluate_final_model
from ml.evaluation.ranking import has_targets
from ml.families import all_families
from ml.families.base import ModelFamily, TrainedModel
from ml.families.torch_seq.encoder import save_encoder
from ml.families.torch_seq.pretrain import PretrainParams, encoder_summary, pretrain_encoder
from ml.families.torch_seq.pyfunc import ENCODER_MODEL_NAME, log_encoder
from ml.liveness import this_worker
from ml.next_category.evaluation import (
    CATEGORY_MODEL_NAME,
    evaluate_against_baselines,
    promote_category_model,
)
from ml.next_category.model import DEFAULT_PARAMS as NEXT_CATEGORY_PARAMS
from ml.next_category.model import predict_category_proba, train_category_model
from ml.next_category.pyfunc import category_probabilities, log_category_model
from ml.registry import (
    MODEL_NAME,
    GateConfig,
    PromotionDecision,
    newest_versions_by_family,
    predict_version,
    promote,
)
from ml.splits import (
    SplitData,
    choose_time_split,
    load_split_snapshot,
    save_split_snapshot,
    split_by_time,
)
from ml.study import (
    StudyBudget,
    best_trial_number,
    load_best_params,
    load_kept_model,
    tune,
)
from ml.tracking import DEFAULT_EXPERIMENT, WORKER_TAG, configure_mlflow, end_orphaned_runs
from ml.tuning_workers import Round, run_on_workers
from orchestration.defs.links import mlflow_links
from orchestration.defs.resources import TRAINING_POOL, WAREHOUSE_POOL, TimeRolesResource

SPLIT_MARTS = [
    dg.AssetKey(["marts", "user_features"]),
    dg.AssetKey(["marts", "labels"]),
    dg.AssetKey(["marts", "cutoffs"]),
    dg.AssetKey(["marts", "user_sequences"]),
    dg.AssetKey(["marts", "category_labels"]),
]
TIME_SPLIT_KEY = dg.AssetKey(["training", "time_split"])
ENCODER_PARAMS = PretrainParams()
NEXT_CATEGORY_KEY = dg.AssetKey(["training", "next_category_model"])
ENCODER_KEY = dg.AssetKey(["training", "behaviour_encoder"])


def snapshot_dir() -> Path:
    return settings.training_dir() / "split"


def kept_model_dir(study_name: str) -> Path:
    """Where a study keeps its best trial's model for the final-model asset to reuse."""
    return settings.training_dir() / "kept_models" / study_name


def start_mlflow(log: Callable[[str], None] = lambda _: None) -> str:
    """The project's experiment, after ending the runs a killed process left open."""
    experiment_id = configure_mlflow(
        settings.mlflow_tracking_uri(), DEFAULT_EXPERIMENT, settings.mlflow_artifact_location()
    )
    end_orphaned_runs(log)
    return experiment_id


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


def load_roles(family: ModelFamily | None = None) -> tuple[SplitData, str]:
    """The frozen roles (sequences when the family reads them, or for every family when
    `family` is None) and the snapshot's id."""
    with_sequences = family is None or family.uses_sequences
    try:
        return load_split_snapshot(snapshot_dir(), with_sequences=with_sequences)
    except FileNotFoundError as missing:
        raise dg.Failure(str(missing)) from missing


@dg.asset(
    key=TIME_SPLIT_KEY,
    pool=WAREHOUSE_POOL,
    group_name="training",
    deps=SPLIT_MARTS,
    description=(
        "Which cutoffs tune, which decide promotion (the time_roles resource), and a frozen "
        "copy of their rows (features, labels, sequences) that every training asset of the run "
        "reads."
    ),
)
def time_split(
    context: dg.AssetExecutionContext, time_roles: TimeRolesResource
) -> dg.MaterializeResult:
    # The MLflow store is created here, before any later step can open it: two processes
    # creating a new SQLite store at once race on its tables.
    start_mlflow()
    warehouse = settings.warehouse_path()
    split = choose_time_split(
        load_cutoffs(warehouse),
        n_validation=time_roles.n_validation_cutoffs,
        n_promotion=time_roles.n_promotion_cutoffs,
        max_train_cutoffs=time_roles.max_train_cutoffs,
    )
    role_cutoffs = split.train_cutoffs + split.validation_cutoffs + split.promotion_cutoffs
    labeled = load_labeled_features(warehouse, with_sequences=True, cutoffs=role_cutoffs)
    snapshot_id = save_split_snapshot(labeled, split, snapshot_dir())
    data = split_by_time(labeled, split)  # what the snapshot holds, without reading it back
    if split.history_warning:
        context.log.warning(split.history_warning)
    return dg.MaterializeResult(
        metadata={
            "snapshot_id": snapshot_id,
            "path": dg.MetadataValue.path(str(snapshot_dir() / snapshot_id)),
            "n_features": len(data.feature_columns),
            **split_metadata(data),
        }
    )


def search_fields(family: ModelFamily) -> dict[str, tuple[type, object]]:
    """The family's search settings as Launchpad config fields with their defaults."""
    hints = typing.get_type_hints(family.search_settings)
    defaults = family.search_settings()
    return {
        f.name: (hints[f.name], getattr(defaults, f.name))
        for f in dataclasses.fields(family.search_settings)
    }


def study_config_class(family: ModelFamily) -> type[dg.Config]:
    """Launchpad config of a family's study: the budget (n_trials trials run, whatever the
    machine's speed; timeout_s is only a safety net for the whole study, and hitting it is
    reported as metadata `timed_out`), n_workers (above 1: the trials run on that many worker
    processes, ml.tuning_workers; more can join from other machines) and the family's search
    settings."""
    return create_model(
        f"{family.asset_prefix.title()}StudyConfig",
        __base__=dg.Config,
        __doc__=study_config_class.__doc__,
        n_trials=(int, family.default_n_trials),
        timeout_s=(int, 3600),
        seed=(int, 42),
        pruning=(bool, True),
        study_name=(str, family.study_name),
        n_workers=(int, 1),
        **search_fields(family),
    )


def build_study_asset(family: ModelFamily) -> dg.AssetsDefinition:
    config_class = study_config_class(family)
    search_names = [f.name for f in dataclasses.fields(family.search_settings)]

    @dg.asset(
        key=["training", f"{family.asset_prefix}_study"],
        pool=TRAINING_POOL,
        group_name="training",
        deps=[TIME_SPLIT_KEY, *([ENCODER_KEY] if family.uses_pretrained_encoder else [])],
        description=(
            f"Optuna study over the {family.name} family on the tuning role (validation "
            f"PR-AUC, pruned {family.step_name} by {family.step_name})."
        ),
    )
    def study(context: dg.AssetExecutionContext, config: config_class) -> dg.MaterializeResult:
        if config.n_workers < 1:
            raise dg.Failure(
                f"n_workers must be at least 1 (1: in this process), got {config.n_workers}"
            )
        data, snapshot_id = load_roles(family)
        start_mlflow(context.log.warning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune logs one line per trial
        budget = StudyBudget(
            n_trials=config.n_trials,
            timeout_s=config.timeout_s,
            seed=config.seed,
            study_name=config.study_name,
            storage=settings.optuna_storage(),
            pruning=config.pruning,
        )
        search = family.search_settings(**{name: getattr(config, name) for name in search_names})
        with mlflow.start_run(
            run_name=f"study-{config.study_name}", tags={WORKER_TAG: this_worker()}
        ) as parent:
            mlflow.set_tags({f"split_{k}": v for k, v in data.split.describe().items()})
            mlflow.set_tags({"family": family.registry_tag, "snapshot_id": snapshot_id})
            if config.n_workers > 1:
                trials = Round(
                    family,
                    budget,
                    search,
                    snapshot_dir(),
                    snapshot_id,
                    parent.info.run_id,
                    parent.info.experiment_id,
                    keep_best_in=kept_model_dir(config.study_name),
                )
                result = run_on_workers(trials, config.n_workers, log=context.log.info)
            else:
                result = tune(
                    family,
                    data,
                    budget,
                    search,
                    log=context.log.info,
                    keep_best_in=kept_model_dir(config.study_name),
                    data_id=snapshot_id,
                )
            mlflow.log_metric("best_validation_pr_auc", result.best_value)
            mlflow.set_tag("timed_out", str(result.timed_out).lower())
        return dg.MaterializeResult(
            metadata={
                "best_validation_pr_auc": result.best_value,
                "best_trial": result.best_trial_number,
                "best_params": dg.MetadataValue.json(result.best_params),
                "trials_total": result.n_trials_total,
                "trials_requested": result.n_trials_requested,
                "trials_this_run": result.n_trials_this_run,
                "trials_pruned": result.n_pruned,
                "timed_out": result.timed_out,
                "device": family.device(),
                "optuna_storage": settings.without_password(settings.optuna_storage()),
                "n_workers": config.n_workers,
                "mlflow_parent_run_id": parent.info.run_id,
                **mlflow_links(parent.info.run_id),
                "snapshot_id": snapshot_id,
                **split_metadata(data),
            }
        )

    return study


class FinalModelConfig(dg.Config):
    """study_name: empty means the family's study; calibration_method: sigmoid (keeps the
    ranking) or isotonic; n_resamples: user-level bootstrap resamples behind every interval."""

    study_name: str = ""
    top_k_fraction: float = 0.1
    calibration_method: str = "sigmoid"
    n_resamples: int = 1000


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
        **mlflow_links(run_id, MODEL_NAME, version),
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


def fitted_best(
    context: dg.AssetExecutionContext,
    family: ModelFamily,
    data: SplitData,
    snapshot_id: str,
    study_name: str,
) -> tuple[TrainedModel, dict]:
    """The study's best parameters fitted on the train role: the model the study kept when it
    was fitted on this very snapshot (the same fit, so the same model), else fitted now."""
    storage = settings.optuna_storage()
    params = load_best_params(family, study_name, storage)
    trial = best_trial_number(family, study_name, storage)
    kept = load_kept_model(family, kept_model_dir(study_name), study_name, trial, snapshot_id)
    if kept is not None:
        context.log.info(f"Reusing the model of trial {trial}, fitted on snapshot {snapshot_id}")
        return kept, params
    context.log.info(f"Fitting the parameters of trial {trial} on snapshot {snapshot_id}")
    return family.fit(data, params), params


def build_final_model_asset(family: ModelFamily, study: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=["training", f"{family.asset_prefix}_model"],
        pool=TRAINING_POOL,
        group_name="training",
        deps=[study],
        description=(
            f"The {family.name} family with its study's best parameters, calibrated on the "
            "validation cutoffs, compared with the baselines on the promotion window "
            f"(user-level intervals), logged and registered in MLflow (family="
            f"{family.registry_tag})."
        ),
    )
    def final_model(
        context: dg.AssetExecutionContext, config: FinalModelConfig
    ) -> dg.MaterializeResult:
        if config.calibration_method not in CALIBRATION_METHODS:
            raise dg.Failure(f"calibration_method must be one of {CALIBRATION_METHODS}")
        data, snapshot_id = load_roles(family)
        study_name = config.study_name or family.study_name
        fitted, params = fitted_best(context, family, data, snapshot_id, study_name)
        evaluation = evaluate_final_model(
            data,
            family.name,
            lambda X: family.predict(fitted.model, X),
            calibration_method=config.calibration_method,
            top_k_fraction=config.top_k_fraction,
            n_resamples=config.n_resamples,
        )
        context.log.info("Promotion window comparison:\n" + evaluation.window.markdown())
        start_mlflow()
        with (
            tempfile.TemporaryDirectory() as tmp,
            mlflow.start_run(
                run_name=f"{family.registry_tag}-final", tags={WORKER_TAG: this_worker()}
            ) as run,
        ):
            folder = Path(tmp) / family.name
            plots = evaluation_plots(data, evaluation, folder)
            plots += family.explain(fitted.model, data, folder)
            logged_params = {**params, **fitted.summary, "optuna_study": study_name}
            logged = family.log(fitted, data, evaluation, logged_params, plots)
        metadata = final_model_metadata(logged.version, run.info.run_id, evaluation, data)
        metadata["fit"] = dg.MetadataValue.json(fitted.summary)
        metadata["snapshot_id"] = snapshot_id
        return dg.MaterializeResult(metadata=metadata)

    return final_model


FAMILIES = all_families()
STUDY_ASSETS = {family.name: build_study_asset(family) for family in FAMILIES}
CANDIDATE_MODELS = tuple(
    build_final_model_asset(family, STUDY_ASSETS[family.name]) for family in FAMILIES
)


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
    group_name="training",
    deps=list(CANDIDATE_MODELS),
    description=(
        "Promotion gate for every family: each new version becomes `challenger`, and "
        "`champion` only if the lower bound of its paired PR-AUC gain over the champion, both "
        "scored now on the promotion window, clears the minimum gain."
    ),
)
def champion(context: dg.AssetExecutionContext, config: ChampionConfig) -> dg.MaterializeResult:
    start_mlflow()
    versions = new_versions(context)
    if not versions:
        raise dg.Failure("No new model version to judge: materialize a family's final model")
    data, _ = load_roles()
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
            **mlflow_links(model_name=MODEL_NAME, version=champion_version),
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


class NextCategoryConfig(dg.Config):
    """The next-category model's budget (epochs and training rows decide its time, whatever the
    machine) and its gate: promote when the one-sided `confidence` lower bound of the paired
    recall@10 gain (over the champion, or the best baseline when there is none) exceeds
    `min_gain`."""

    max_epochs: int = NEXT_CATEGORY_PARAMS.max_epochs
    max_train_rows: int = NEXT_CATEGORY_PARAMS.max_train_rows
    hidden_size: int = NEXT_CATEGORY_PARAMS.hidden_size
    batch_size: int = NEXT_CATEGORY_PARAMS.batch_size
    seed: int = 0
    min_gain: float = 0.0
    confidence: float = 0.95
    n_resamples: int = 1000


@dg.asset(
    key=NEXT_CATEGORY_KEY,
    pool=TRAINING_POOL,
    group_name="training",
    deps=[TIME_SPLIT_KEY],
    description=(
        "Which categories each shopper will touch in the horizon: the sequence network with one "
        "output per category, trained on the train role (early stopping on validation NDCG@10), "
        "compared on the promotion window with four baselines (Recall@10, NDCG@10, MRR with "
        "user-level intervals), registered as `next-category` and gated on its paired recall@10 "
        "gain."
    ),
)
def next_category_model(
    context: dg.AssetExecutionContext, config: NextCategoryConfig
) -> dg.MaterializeResult:
    data, snapshot_id = load_roles()
    params = dataclasses.replace(
        NEXT_CATEGORY_PARAMS,
        max_epochs=config.max_epochs,
        max_train_rows=config.max_train_rows,
        hidden_size=config.hidden_size,
        batch_size=config.batch_size,
    )
    if data.next_categories_train is None or not has_targets(data.next_categories_train).any():
        # A source without categories (RetailRocket's events have none): nothing to rank.
        reason = (
            "no training row has a category in its label window (does this source record "
            "categories?): no next-category model; offers fall back to the shopper's own most "
            "frequent categories where there are any"
        )
        context.log.warning(f"Next-category model skipped: {reason}")
        return dg.MaterializeResult(metadata={"skipped": reason, "snapshot_id": snapshot_id})
    trained = train_category_model(data, params, seed=config.seed)
    context.log.info(
        f"Trained on {trained.train_rows:,} rows, {trained.n_categories - 1} categories, "
        f"best epoch {trained.best_epoch} (validation NDCG@10 {trained.best_validation_ndcg:.4f})"
    )
    evaluation = evaluate_against_baselines(
        data,
        lambda frame: predict_category_proba(trained, frame),
        n_resamples=config.n_resamples,
        seed=config.seed,
        confidence=config.confidence,
    )
    context.log.info(evaluation.markdown())
    start_mlflow()
    with mlflow.start_run(run_name="next-category-final", tags={WORKER_TAG: this_worker()}) as run:
        mlflow.set_tag("snapshot_id", snapshot_id)
        logged = log_category_model(trained, data, evaluation, {"seed": config.seed})
        decision = promote_category_model(
            mlflow.MlflowClient(),
            logged.version,
            evaluation,
            data,
            category_probabilities,
            min_gain=config.min_gain,
            n_resamples=config.n_resamples,
            seed=config.seed,
            confidence=config.confidence,
        )
        mlflow.set_tag("promotion_decision", decision.reason)
    context.log.info(f"Next-category v{logged.version}: {decision.reason}")
    model = evaluation.metrics["model"]
    best = evaluation.metrics[evaluation.best_baseline]
    return dg.MaterializeResult(
        metadata={
            "model_name": CATEGORY_MODEL_NAME,
            "model_version": logged.version,
            "mlflow_run_id": run.info.run_id,
            **mlflow_links(run.info.run_id, CATEGORY_MODEL_NAME, logged.version),
            "promoted": decision.promoted,
            "decision": decision.reason,
            "best_baseline": evaluation.best_baseline,
            "recall_at_10": model["recall_at_k"].text(4),
            "ndcg_at_10": model["ndcg_at_k"].text(4),
            "mrr": model["mrr"].text(4),
            "best_baseline_recall_at_10": best["recall_at_k"].text(4),
            "comparison": dg.MetadataValue.md(evaluation.markdown()),
            "promotion_rows_with_targets": evaluation.n_rows,
            "n_categories": trained.n_categories - 1,
            "train_rows_used": trained.train_rows,
            "train_seconds": round(trained.seconds, 1),
            "device": trained.device,
            "snapshot_id": snapshot_id,
        }
    )


class BehaviourEncoderConfig(dg.Config):
    """Pretraining's budget (epochs over at most max_rows sequences: the count decides its
    time, not the machine) and the encoder's size, which pretrained trials of the sequence
    study take."""

    max_epochs: int = ENCODER_PARAMS.max_epochs
    max_rows: int = ENCODER_PARAMS.max_rows
    hidden_size: int = ENCODER_PARAMS.hidden_size
    embedding_dim: int = ENCODER_PARAMS.embedding_dim
    batch_size: int = ENCODER_PARAMS.batch_size
    seed: int = 0


@dg.asset(
    key=ENCODER_KEY,
    pool=TRAINING_POOL,
    group_name="training",
    deps=[TIME_SPLIT_KEY],
    description=(
        "The sequence family's event encoder pretrained on next-event prediction (next type and "
        "next category after each event, causal) over the tuning roles' sequences: no label, "
        "no event at or after the last validation cutoff. Registered as `behaviour-encoder` "
        "with its curves; the sequence study's pretrained trials fine-tune it."
    ),
)
def behaviour_encoder(
    context: dg.AssetExecutionContext, config: BehaviourEncoderConfig
) -> dg.MaterializeResult:
    data, snapshot_id = load_roles()
    params = dataclasses.replace(
        ENCODER_PARAMS,
        max_epochs=config.max_epochs,
        max_rows=config.max_rows,
        hidden_size=config.hidden_size,
        embedding_dim=config.embedding_dim,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    encoder = pretrain_encoder(data, params)
    last = encoder.history[-1]
    context.log.info(
        f"Pretrained on {encoder.train_rows:,} sequences in {encoder.seconds:.0f}s: held-out "
        f"next-type accuracy {last['held_out_next_type_accuracy']:.3f}, next category in the "
        f"top 10 {last['held_out_next_category_top10']:.3f}"
    )
    start_mlflow()
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(
            run_name="behaviour-encoder-pretraining", tags={WORKER_TAG: this_worker()}
        ) as run,
    ):
        staged = Path(tmp) / "behaviour_encoder.pt"
        save_encoder(encoder, staged, {"snapshot_id": snapshot_id})
        version = log_encoder(
            staged,
            encoder_summary(encoder),
            encoder.history,
            data.model_input("train").head(50),
            {"snapshot_id": snapshot_id},
        )
        origin = {"snapshot_id": snapshot_id, "version": version, "run_id": run.info.run_id}
        save_encoder(encoder, settings.encoder_path(), origin)
    return dg.MaterializeResult(
        metadata={
            "model_name": ENCODER_MODEL_NAME,
            "model_version": version,
            "mlflow_run_id": run.info.run_id,
            **mlflow_links(run.info.run_id, ENCODER_MODEL_NAME, version),
            "path": dg.MetadataValue.path(str(settings.encoder_path())),
            "curves": dg.MetadataValue.json(encoder.history),
            "pretrain_rows": encoder.train_rows,
            "held_out_rows": encoder.held_out_rows,
            "seconds": round(encoder.seconds, 1),
            "device": encoder.device,
            "snapshot_id": snapshot_id,
        }
    )
