"""MLflow bookkeeping: where runs go, and everything one final model leaves behind.

MLflow is the record of models: a final run holds the metrics of the model and its baselines on
the promotion window, each with its user-level interval (`<metric>_ci_low`/`_ci_high`), the
paired differences, the segment table, the calibration before and after, the plots, lineage tags
naming each role's cutoffs, a model card and the pyfunc model itself (calibration included),
registered as a new version of `purchase-propensity`. Nothing else stores or pickles models.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

from ml.evaluation.bootstrap import BOOTSTRAP_METRICS
from ml.evaluation.final import FinalEvaluation
from ml.liveness import worker_dead
from ml.registry import MODEL_NAME
from ml.settings import PROJECT_ROOT
from ml.splits import SplitData

DEFAULT_EXPERIMENT = "purchase-propensity"
# The tag naming the process that runs an MLflow run ("<host>:<pid>", ml.liveness): a run left
# RUNNING by a process that is gone is ended as KILLED (`end_orphaned_runs`).
WORKER_TAG = "worker"
# Why a run that its dead process left RUNNING was ended as KILLED by another (`end_run_as_killed`).
KILLED_REASON_TAG = "killed_reason"
# What loading and calling a model needs (pinned at logging time). The model's own code, the
# `ml` package, travels with it (`model_code_paths`), so the registered model loads where this
# repository is not installed (`mlflow models serve`, a Docker image). scikit-learn, duckdb,
# optuna and imbalanced-learn are imported by the `ml` modules the models unpickle from.
# Listed rather than inferred: MLflow's inference runs the model in a subprocess and takes
# seconds per model; tests/orchestration/fresh_env.py checks the list against what loading
# imports.
MODEL_REQUIREMENTS = (
    "mlflow",
    "xgboost",
    "numpy",
    "pandas",
    "cloudpickle",
    "scikit-learn",
    "duckdb",
    "optuna",
    "imbalanced-learn",
)
# What each role of time is used for, in the model card and docs/models.md's words.
ROLE_USES = {
    "train": "fitting (resampling touches only these rows)",
    "validation": "Optuna's objective, early stopping, the decision threshold and calibration",
    "promotion": "only the promotion gate and the figures below",
}


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
    experiment = _experiment_by_name(experiment_name)
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


def _experiment_by_name(name: str, attempts: int = 3) -> mlflow.entities.Experiment | None:
    """`mlflow.get_experiment_by_name`, retried when another process is creating a new SQLite
    store's tables at the same moment ("table ... already exists"): the first access of a
    store creates its schema, and two first accesses at once race."""
    for attempt in range(1, attempts + 1):
        try:
            return mlflow.get_experiment_by_name(name)
        except Exception as error:
            if "already exists" not in str(error) or attempt == attempts:
                raise
            time.sleep(attempt)
    return None


def end_run_as_killed(client: mlflow.MlflowClient, run_id: str, reason: str) -> None:
    """Ends a run whose process died while it was RUNNING: status KILLED, the reason as a tag
    (MLflow keeps such a run RUNNING, with no end time, otherwise)."""
    client.set_tag(run_id, KILLED_REASON_TAG, reason)
    client.set_terminated(run_id, status="KILLED")


def end_orphaned_runs(log: Callable[[str], None] = lambda _: None) -> list[str]:
    """Ends as KILLED every RUNNING run of the active experiment whose worker process is gone
    (a study or final run of a killed process keeps no end time otherwise); returns their ids.
    Runs of live workers, of other hosts and without a worker tag are left alone."""
    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string="attributes.status = 'RUNNING'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    ended = []
    for run in runs:
        worker = run.data.tags.get(WORKER_TAG, "")
        if not worker_dead(worker):
            continue
        end_run_as_killed(client, run.info.run_id, f"its worker process {worker} died")
        log(f"MLflow run {run.info.run_id} ({run.info.run_name}) ended as KILLED: {worker} died")
        ended.append(run.info.run_id)
    return ended


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
    """Which data made the model: each role's cutoffs, rows and buyers, and the git commit."""
    tags = {f"split_{key}": value for key, value in data.split.describe().items()}
    tags.update({f"rows_{key}": str(value) for key, value in data.row_counts().items()})
    tags["n_features"] = str(len(data.feature_columns))
    tags["git_commit"] = git_commit()
    if data.split.history_warning:
        tags["history_warning"] = data.split.history_warning[:500]
    return tags


def evaluation_metrics(evaluation: FinalEvaluation) -> dict[str, float]:
    """Flat MLflow metrics of a final evaluation.

    The family's own promotion-window figures as `promotion_<metric>` with `_ci_low`/`_ci_high`;
    every model's as `promotion_<model>_<metric>` (same suffixes); the paired PR-AUC differences
    as `promotion_pr_auc_minus_<model>`; validation point metrics as `validation_<model>_<metric>`;
    the raw score's calibration error as `promotion_ece_raw`.
    """
    metrics: dict[str, float] = {}

    def put(prefix: str, interval) -> None:
        for suffix, value in (
            ("", interval.estimate),
            ("_ci_low", interval.low),
            ("_ci_high", interval.high),
        ):
            if math.isfinite(value):
                metrics[f"{prefix}{suffix}"] = float(value)

    window = evaluation.window
    for model, intervals in window.intervals.items():
        for name in BOOTSTRAP_METRICS:
            put(f"promotion_{model}_{name}", intervals[name])
            if model == evaluation.model:
                put(f"promotion_{name}", intervals[name])
    for model, difference in window.differences.items():
        put(f"promotion_pr_auc_minus_{model}", difference)
    put("promotion_ece_raw", evaluation.ece_raw)
    metrics["promotion_mean_score"] = evaluation.mean_score
    metrics["promotion_buyer_rate"] = evaluation.buyer_rate
    metrics["threshold"] = evaluation.thresholds[evaluation.model]
    metrics.update(metric_values(evaluation.validation_metrics, "validation"))
    return metrics


def model_card(
    data: SplitData,
    evaluation: FinalEvaluation,
    params: Mapping[str, Any],
    primary_model: str,
) -> str:
    """A markdown card: what the model predicts, which window played which role, how well it
    does with intervals, by segment, how calibrated it is, and its limits."""
    split = data.split
    counts = data.row_counts()
    described = split.describe()
    role_lines = []
    for role in ("train", "validation", "promotion"):
        role_lines.append(
            f"- {role}: {described[f'{role}_cutoffs']} ({described[f'n_{role}_cutoffs']} "
            f"cutoffs, {counts[f'{role}_rows']:,} rows, {counts[f'{role}_positives']:,} buyers): "
            f"{ROLE_USES[role]}"
        )
    interval = evaluation.promotion
    strategy = params.get("strategy", "unknown")
    lines = [
        f"# {MODEL_NAME} ({primary_model})",
        "",
        "## What it predicts",
        f"The probability that a shopper makes a purchase within {_duration(split.horizon)} "
        "after a cutoff, from point-in-time features built only from events before that cutoff. "
        f"Scores are calibrated ({evaluation.calibrator.method}) on the validation cutoffs.",
        "",
        "## Roles of time",
        *role_lines,
        f"- label windows of one role end before the next role starts (horizon "
        f"{_duration(split.horizon)}); cutoffs in the gaps are unused. "
        f"{counts['promotion_users']:,} distinct users in the promotion window.",
        f"- features: {len(data.feature_columns)}; git commit {git_commit()}",
        *(
            [f"- history: {split.history_warning}"]
            if split.history_warning
            else ["- history: every cutoff used sees a complete lookback window"]
        ),
        "",
        "## Promotion window: model and baselines (95 % intervals resample users)",
        evaluation.window.markdown(),
        "",
        "## By segment (PR-AUC, promotion window)",
        evaluation.segments.to_markdown(index=False),
        "",
        "## Calibration (promotion window)",
        f"- mean calibrated score {evaluation.mean_score:.4f}, observed buyer rate "
        f"{evaluation.buyer_rate:.4f}",
        f"- expected calibration error: raw {evaluation.ece_raw.text(4)}, calibrated "
        f"{interval['ece'].text(4)}",
        "",
        "## Caveats",
        "- Every challenger of a night is judged on the same promotion window, so a champion's "
        "figure there is the best of several tries (winner's curse); the untouched estimate of a "
        "deployed model is its served predictions checked once their labels mature.",
        "- Shoppers without any events before a cutoff have no features and get no score.",
        f"- The decision threshold {evaluation.thresholds[evaluation.model]:.4f} was chosen on "
        "the validation cutoffs.",
    ]
    if strategy not in ("none", "unknown"):
        lines.append(
            f"- Training rows were rebalanced (`{strategy}`); the calibration maps the raw "
            "scores, which overstate the probability of buying, back to probabilities."
        )
    return "\n".join(lines) + "\n"


def _duration(value: timedelta) -> str:
    """Whole days as "7 days" rather than timedelta's "7 days, 0:00:00"."""
    if value % timedelta(days=1) == timedelta(0):
        return f"{value.days} day" + ("s" if value.days != 1 else "")
    return str(value)


@contextmanager
def active_or_new_run(run_name: str) -> Iterator[mlflow.ActiveRun]:
    """The active run when there is one (the caller ends it), otherwise a new run we end."""
    active = mlflow.active_run()
    if active is not None:
        yield active
    else:
        with mlflow.start_run(run_name=run_name) as run:
            yield run


def pinned(packages: Sequence[str]) -> list[str]:
    """`name==version` of the installed packages, without a local version label such as
    torch's "+cpu" (no index serves that wheel; the same version with CUDA satisfies it)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in packages]


def model_code_paths(work: Path) -> list[str]:
    """The `ml` package, copied into `work` without caches, as `code_paths` of a pyfunc model:
    the PythonModel is pickled by reference to its module, so loading needs this code."""
    target = work / "model_code" / "ml"
    shutil.copytree(
        PROJECT_ROOT / "ml", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return [str(target)]


def log_model_with_evidence(
    *,
    family: str,
    python_model: mlflow.pyfunc.PythonModel,
    save_artifacts: Callable[[Path], dict[str, str]],
    signature: ModelSignature,
    input_example: pd.DataFrame,
    requirements: list[str],
    data: SplitData,
    evaluation: FinalEvaluation,
    params: Mapping[str, Any],
    plot_paths: Sequence[Path],
    tags: Mapping[str, str] | None,
    registered_model_name: str,
    run_name: str,
) -> LoggedModel:
    """What every family's final run holds, in one place: params, metrics, lineage tags, plots,
    comparison table, model card, the pyfunc model (its artifacts written by `save_artifacts`
    into a temporary folder), its registration, the family tag and the card as description."""
    with active_or_new_run(run_name) as run, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mlflow.log_params(dict(params))
        mlflow.log_params({"calibration_method": evaluation.calibrator.method})
        mlflow.log_metrics(evaluation_metrics(evaluation))
        mlflow.set_tags({**lineage_tags(data), "family": family, **(tags or {})})

        for path in plot_paths:
            # Under the plot's folder name: save_evaluation_plots uses one folder per model.
            mlflow.log_artifact(str(path), artifact_path=f"plots/{Path(path).parent.name}")
        _log_comparison_table(evaluation.window.table(), work)
        mlflow.log_text(evaluation.window.markdown(), "comparison_table.md")
        mlflow.log_text(evaluation.segments.to_markdown(index=False), "segments.md")
        mlflow.log_dict(evaluation.calibrator.to_dict(), "calibration.json")
        card = model_card(data, evaluation, params, primary_model=family)
        mlflow.log_text(card, "model_card.md")

        model_info = mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            artifacts=save_artifacts(work),
            signature=signature,
            input_example=input_example,
            registered_model_name=registered_model_name,
            pip_requirements=requirements,
            code_paths=model_code_paths(work),
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


def _log_comparison_table(table: pd.DataFrame, work: Path) -> None:
    """The model comparison as CSV and as an MLflow table for the UI."""
    csv_path = work / "comparison_table.csv"
    table.to_csv(csv_path, index=False)
    mlflow.log_artifact(str(csv_path))
    try:
        mlflow.log_table(table, artifact_file="comparison_table.json")
    except Exception as error:  # the CSV and markdown already hold the same numbers
        mlflow.set_tag("comparison_table_json_error", str(error)[:250])
