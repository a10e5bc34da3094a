"""MLflow bookkeeping: where runs go, and everything one final model leaves behind.

MLflow is the record of models: a final run holds the metrics of the model and its baselines,
the plots, a comparison table, lineage tags, a model card and the pyfunc model itself, registered
as a new version of `purchase-propensity`. Nothing else stores or pickles models.
"""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from ml.dataset import SEQUENCE_COLUMNS
from ml.evaluation import comparison_table
from ml.propensity_model import BOOSTER_ARTIFACT, PropensityModel
from ml.registry import MODEL_NAME
from ml.settings import PROJECT_ROOT
from ml.splits import SplitData
from ml.xgb import predict_proba

if TYPE_CHECKING:  # torch is imported only when a sequence model is logged
    from ml.seq_model import TrainedSequenceModel

DEFAULT_EXPERIMENT = "purchase-propensity"
FAMILY = PropensityModel.family
# What loading the model needs besides this project's `ml` package (which must be importable:
# the PythonModel is pickled by reference). Listed rather than inferred: MLflow's inference runs
# the model in a subprocess and takes seconds per model.
MODEL_REQUIREMENTS = ("mlflow", "xgboost", "numpy", "pandas", "cloudpickle")
# Metrics shown in the model card's table, when present.
CARD_METRICS = ("pr_auc", "roc_auc", "precision_at_k", "lift_at_k", "brier", "log_loss")


@dataclass(frozen=True)
class LoggedModel:
    """Where a logged model can be found again."""

    run_id: str
    model_uri: str
    version: str


def configure_mlflow(
    tracking_uri: str,
    experiment_name: str = DEFAULT_EXPERIMENT,
    artifact_location: str | Path | None = None,
) -> str:
    """Points MLflow at `tracking_uri` and makes `experiment_name` the active experiment.

    The artifact location only applies when the experiment is created (MLflow cannot move an
    existing experiment's artifacts); a plain path becomes a file:// URI. Returns the experiment id.
    """
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = artifact_location
        if location is not None and "://" not in str(location):
            location = Path(location).expanduser().resolve().as_uri()
        try:
            experiment_id = mlflow.create_experiment(experiment_name, artifact_location=location)
        except MlflowException:
            # Another process created it between our lookup and create_experiment.
            experiment = mlflow.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit(repo: Path = PROJECT_ROOT) -> str:
    """The repository's HEAD commit, or "unknown" outside a git checkout or without git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def metric_values(metrics_by_model: Mapping[str, Mapping[str, Any]], prefix: str) -> dict:
    """Flat MLflow metrics like `test_xgboost_pr_auc`; values that are not finite numbers are
    left out (MLflow stores only floats)."""
    flat: dict[str, float] = {}
    for model, metrics in metrics_by_model.items():
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                flat[f"{prefix}_{model}_{name}"] = float(value)
    return flat


def lineage_tags(data: SplitData) -> dict[str, str]:
    """Which data made the model: split cutoffs, rows per split and the code's git commit."""
    tags = {f"split_{key}": value for key, value in data.split.describe().items()}
    tags.update({f"rows_{key}": str(value) for key, value in data.row_counts().items()})
    tags["n_features"] = str(len(data.feature_columns))
    tags["git_commit"] = git_commit()
    return tags


def model_card(
    data: SplitData,
    test_metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    primary_model: str = FAMILY,
    threshold: float | None = None,
) -> str:
    """A short markdown card: what the model predicts, on which data, how well, and its limits."""
    split = data.split.describe()
    counts = data.row_counts()
    models = list(test_metrics)
    shown = [m for m in CARD_METRICS if any(m in test_metrics[model] for model in models)]
    header = "| model | " + " | ".join(shown) + " |"
    rule = "|---|" + "---|" * len(shown)
    rows = [
        f"| {model} | "
        + " | ".join(_format_number(test_metrics[model].get(m)) for m in shown)
        + " |"
        for model in models
    ]
    base_rate = counts["test_positives"] / max(counts["test_rows"], 1)
    strategy = params.get("strategy", "unknown")
    lines = [
        f"# {MODEL_NAME} ({primary_model})",
        "",
        "## What it predicts",
        f"The probability that a shopper makes a purchase within {_duration(data.split.horizon)} "
        "after a cutoff, from point-in-time features built only from events before that cutoff.",
        "",
        "## Data window",
        f"- train cutoffs: {split['train_cutoffs']} ({split['n_train_cutoffs']} cutoffs, "
        f"{counts['train_rows']} rows, {counts['train_positives']} buyers)",
        f"- validation cutoff: {split['validation_cutoff']} ({counts['validation_rows']} rows, "
        f"{counts['validation_positives']} buyers); used for early stopping, tuning and the "
        "threshold",
        f"- test cutoff: {split['test_cutoff']} ({counts['test_rows']} rows, "
        f"{counts['test_positives']} buyers, base rate {base_rate:.2%}); used only for the "
        "numbers below and for promotion",
        f"- features: {len(data.feature_columns)}; git commit {git_commit()}",
        "",
        "## Test metrics against baselines",
        header,
        rule,
        *rows,
        "",
        "## Caveats",
        "- The test window is a single cutoff; its numbers move from one cutoff to the next.",
        "- Shoppers without any events before a cutoff have no features and get no score.",
    ]
    if strategy != "none":
        lines.append(
            f"- Training rows were rebalanced (`{strategy}`): scores rank shoppers, but they "
            "overstate the probability of buying."
        )
    if threshold is not None:
        lines.append(
            f"- The decision threshold {threshold:.4f} was chosen on the validation cutoff."
        )
    return "\n".join(lines) + "\n"


def _duration(value: timedelta) -> str:
    """Whole days as "7 days" rather than timedelta's "7 days, 0:00:00"."""
    if value % timedelta(days=1) == timedelta(0):
        return f"{value.days} day" + ("s" if value.days != 1 else "")
    return str(value)


def _format_number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


@contextmanager
def _active_or_new_run(run_name: str) -> Iterator[mlflow.ActiveRun]:
    """The active run when there is one (the caller ends it), otherwise a new run we end."""
    active = mlflow.active_run()
    if active is not None:
        yield active
    else:
        with mlflow.start_run(run_name=run_name) as run:
            yield run


def log_final_model(
    booster: xgb.Booster,
    data: SplitData,
    test_metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    plot_paths: Sequence[Path] = (),
    validation_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    threshold: float | None = None,
    tags: Mapping[str, str] | None = None,
    registered_model_name: str = MODEL_NAME,
    run_name: str = "xgboost-final",
) -> LoggedModel:
    """Logs the final XGBoost model and its evidence into the active run (or a new one), and
    registers it as a new version of `registered_model_name` with the tag family=xgboost.

    `test_metrics` maps model name ("xgboost", "logistic_regression", ...) to the metrics of
    `ml.evaluation.evaluate` on the test split; they are logged as `test_<model>_<metric>`.
    Each plot is logged as `plots/<its folder name>/<file name>`.
    """

    def save_booster(work: Path) -> dict[str, str]:
        booster_path = work / "booster.ubj"
        booster.save_model(str(booster_path))
        return {BOOSTER_ARTIFACT: str(booster_path)}

    sample = data.X_train.head(200)
    return _log_model_with_evidence(
        family=FAMILY,
        python_model=PropensityModel(data.feature_columns),
        save_artifacts=save_booster,
        signature=feature_signature(sample, predict_proba(booster, sample)),
        input_example=data.X_train.head(5),
        requirements=_pinned(MODEL_REQUIREMENTS),
        data=data,
        test_metrics=test_metrics,
        params=params,
        plot_paths=plot_paths,
        validation_metrics=validation_metrics,
        threshold=threshold,
        tags=tags,
        registered_model_name=registered_model_name,
        run_name=run_name,
    )


def log_sequence_model(
    trained: TrainedSequenceModel,
    data: SplitData,
    test_metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    plot_paths: Sequence[Path] = (),
    validation_metrics: Mapping[str, Mapping[str, Any]] | None = None,
    threshold: float | None = None,
    tags: Mapping[str, str] | None = None,
    registered_model_name: str = MODEL_NAME,
    run_name: str = "torch-seq-final",
) -> LoggedModel:
    """Logs a trained sequence model with the same evidence as `log_final_model` (metrics,
    plots, comparison table, model card, lineage, signature, input example) and registers it
    with the tag family=torch-seq.

    The logged parameters are the model's SeqParams, its loss weighting (strategy
    "class_weight" when positives weigh more, positive_weight), best epoch and training
    device, updated by `params` (e.g. the study's name). Signature and input example come from
    `data.model_input("train")`: the feature columns and the four sequence columns as arrays
    (see `sequence_signature`).
    """
    # Here rather than at the top: importing torch takes seconds, and XGBoost-only users of
    # this module (and the Dagster code location) should not pay for it.
    from ml.seq_model import predict_proba as predict_sequence_proba
    from ml.seq_propensity_model import SequencePropensityModel
    from ml.seq_propensity_model import save_artifacts as save_sequence_artifacts

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
    return _log_model_with_evidence(
        family=SequencePropensityModel.family,
        python_model=SequencePropensityModel(trained.feature_columns),
        save_artifacts=lambda work: save_sequence_artifacts(trained, work / "torch"),
        signature=sequence_signature(sample, predict_sequence_proba(trained, sample)),
        input_example=sample.head(5),
        requirements=_pinned((*MODEL_REQUIREMENTS, "torch")),
        data=data,
        test_metrics=test_metrics,
        params=logged_params,
        plot_paths=plot_paths,
        validation_metrics=validation_metrics,
        threshold=threshold,
        tags=tags,
        registered_model_name=registered_model_name,
        run_name=run_name,
    )


def _pinned(packages: Sequence[str]) -> list[str]:
    """`name==version` of the installed packages, without a local version label such as
    torch's "+cpu" (no index serves that wheel; the same version with CUDA satisfies it)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in packages]


def _log_model_with_evidence(
    *,
    family: str,
    python_model: mlflow.pyfunc.PythonModel,
    save_artifacts: Callable[[Path], dict[str, str]],
    signature: ModelSignature,
    input_example: pd.DataFrame,
    requirements: list[str],
    data: SplitData,
    test_metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Any],
    plot_paths: Sequence[Path],
    validation_metrics: Mapping[str, Mapping[str, Any]] | None,
    threshold: float | None,
    tags: Mapping[str, str] | None,
    registered_model_name: str,
    run_name: str,
) -> LoggedModel:
    """What every family's final run holds, in one place: params, metrics, lineage tags, plots,
    comparison table, model card, the pyfunc model (its artifacts written by `save_artifacts`
    into a temporary folder), its registration, the family tag and the card as description."""
    with _active_or_new_run(run_name) as run, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mlflow.log_params(dict(params))
        metrics = metric_values(test_metrics, "test")
        if validation_metrics:
            metrics.update(metric_values(validation_metrics, "validation"))
        if threshold is not None:
            metrics["threshold"] = float(threshold)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({**lineage_tags(data), "family": family, **(tags or {})})

        for path in plot_paths:
            # Under the plot's folder name: save_evaluation_plots uses one folder per model.
            mlflow.log_artifact(str(path), artifact_path=f"plots/{Path(path).parent.name}")
        _log_comparison_table(comparison_table(dict(test_metrics)), work)
        card = model_card(data, test_metrics, params, primary_model=family, threshold=threshold)
        mlflow.log_text(card, "model_card.md")

        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts=save_artifacts(work),
            signature=signature,
            input_example=input_example,
            registered_model_name=registered_model_name,
            pip_requirements=requirements,
        )
        version = str(model_info.registered_model_version)
        client = mlflow.MlflowClient()
        client.set_model_version_tag(registered_model_name, version, "family", family)
        client.update_model_version(registered_model_name, version, description=card)
        return LoggedModel(
            run_id=run.info.run_id,
            model_uri=f"models:/{registered_model_name}/{version}",
            version=version,
        )


def feature_signature(X: pd.DataFrame, probabilities: np.ndarray) -> ModelSignature:
    """`infer_signature`, with every feature column required.

    Inferred from a sample, a column is "optional" only because it held NaN there; NaN values are
    accepted in every column anyway, while a missing column must fail loudly.
    """
    inferred = infer_signature(X, probabilities)
    inputs = Schema([ColSpec(spec.type, spec.name) for spec in inferred.inputs.inputs])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs)


def sequence_signature(model_input: pd.DataFrame, probabilities: np.ndarray) -> ModelSignature:
    """`feature_signature` of the feature columns, then the SEQUENCE_COLUMNS as array columns.

    Given explicitly: MLflow 3.17 infers Array types only from int64/int32/float cells and fails
    on the warehouse's uint8 event codes. Its schema enforcement then converts every cell to the
    declared type, which costs tens of microseconds per row at predict time (measured: 40-90 us
    per row with 25-event sequences).
    """
    features = [column for column in model_input.columns if column not in SEQUENCE_COLUMNS]
    signature = feature_signature(model_input[features], probabilities)
    sequence_specs = [
        ColSpec(Array(DataType.long), "event_type_codes"),
        ColSpec(Array(DataType.long), "category_indexes"),
        ColSpec(Array(DataType.double), "prices"),
        ColSpec(Array(DataType.double), "seconds_before_cutoff"),
    ]
    assert [spec.name for spec in sequence_specs] == list(SEQUENCE_COLUMNS)
    inputs = Schema([*signature.inputs.inputs, *sequence_specs])
    return ModelSignature(inputs=inputs, outputs=signature.outputs)


def _log_comparison_table(table: pd.DataFrame, work: Path) -> None:
    """The model comparison as CSV, as markdown, and as an MLflow table for the UI."""
    csv_path = work / "comparison_table.csv"
    table.to_csv(csv_path, index=False)
    mlflow.log_artifact(str(csv_path))
    mlflow.log_text(table.to_markdown(index=False, floatfmt=".4f"), "comparison_table.md")
    try:
        mlflow.log_table(table, artifact_file="comparison_table.json")
    except Exception as error:  # the CSV and markdown already hold the same numbers
        mlflow.set_tag("comparison_table_json_error", str(error)[:250])
