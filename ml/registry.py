"""Promotion in the MLflow model registry, with aliases instead of stages.

A new version becomes the `challenger`. It becomes the `champion` only when the evidence says it
is better: the paired difference of PR-AUC (challenger minus champion, both scored now on the
promotion window, resampling users) has a one-sided lower bound above `GateConfig.min_gain`.
A difference the interval cannot tell from zero keeps the champion, so the alias does not move
by chance. A metric stored when the champion was trained is never used, since it may come from
another window. Nothing moves until both models are scored, so a failure while loading or scoring
leaves every alias where it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from sklearn.metrics import average_precision_score

from ml.evaluation.bootstrap import DEFAULT_CONFIDENCE, PairedDifference, paired_differences

MODEL_NAME = "purchase-propensity"
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class GateConfig:
    """The promotion rule: promote when the one-sided `confidence` lower bound of the paired
    PR-AUC difference exceeds `min_gain`; `n_resamples` user-level bootstrap resamples."""

    min_gain: float = 0.0
    confidence: float = DEFAULT_CONFIDENCE
    n_resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class PromotionDecision:
    """Both scores on the same promotion window, their paired difference and the decision."""

    challenger_version: str
    challenger_pr_auc: float
    champion_version: str | None
    champion_pr_auc: float | None
    promoted: bool
    reason: str
    difference: PairedDifference | None = None
    window: str = ""
    n_rows: int = 0
    n_buyers: int = 0
    n_users: int = 0


def pr_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: the PR-AUC used to compare models."""
    return float(average_precision_score(y_true, scores))


def current_champion(client: MlflowClient, model_name: str = MODEL_NAME) -> str | None:
    """The version number holding the champion alias, or None when there is none yet.

    Read from the model's alias map rather than by catching "alias not found", so that any other
    registry error stops the promotion instead of looking like "no champion".
    """
    version = client.get_registered_model(model_name).aliases.get(CHAMPION)
    return None if version is None else str(version)


def trained_champion(client: MlflowClient, model_name: str = MODEL_NAME) -> ModelVersion | None:
    """The champion's version, or None in a state where no model was registered or promoted
    yet (`propensity run --features-only`, or a run that stopped before the gate)."""
    if not client.search_registered_models(filter_string=f"name='{model_name}'"):
        return None
    number = current_champion(client, model_name)
    return None if number is None else client.get_model_version(model_name, number)


def newest_versions_by_family(client: MlflowClient, model_name: str = MODEL_NAME) -> dict[str, str]:
    """The newest registered version of each family (the version tag `family`)."""
    newest: dict[str, int] = {}
    for version in client.search_model_versions(f"name='{model_name}'"):
        family = version.tags.get("family", "unknown")
        newest[family] = max(newest.get(family, 0), int(version.version))
    return {family: str(number) for family, number in sorted(newest.items())}


def signature_columns(model: mlflow.pyfunc.PyFuncModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of `frame` the model's signature names (all of them when it names none).

    One frame serves every family (features and sequences); handing each model only its own
    columns keeps MLflow from warning about the others on every call.
    """
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return frame
    names = [name for name in schema.input_names() if name in frame.columns]
    return frame[names] if len(names) == len(schema.input_names()) else frame


def _pr_auc_text(score: float, other: float) -> tuple[str, str]:
    """Both scores with 4 decimals, or 6 where 4 would make them look equal."""
    digits = 4 if f"{score:.4f}" != f"{other:.4f}" else 6
    return f"{score:.{digits}f}", f"{other:.{digits}f}"


def predict_frame(model: mlflow.pyfunc.PyFuncModel, frame: pd.DataFrame) -> np.ndarray:
    """Scores every row of `frame` (features and, for a sequence model, sequences) with a
    loaded pyfunc; returns one float per row.

    The project's own models (both families are `mlflow.pyfunc.PythonModel`s) are called
    directly, once the signature's columns are all there: MLflow's schema enforcement converts
    every cell of an array column on its own, which took 17 s for the promotion window's
    38,000 rows of sequences against 1.9 s for the model itself (same scores). Any other pyfunc,
    or a frame that lacks a column, goes through `model.predict`, whose error names the column.
    """
    schema = model.metadata.get_input_schema()
    names = schema.input_names() if schema is not None and schema.has_input_names() else []
    if names and all(name in frame.columns for name in names):
        try:
            python_model = model.unwrap_python_model()
        except MlflowException:
            python_model = None  # not a PythonModel: MLflow's own path below
        if python_model is not None:
            scores = python_model.predict(None, frame[names])
            return np.asarray(scores, dtype=float).reshape(-1)
    return np.asarray(model.predict(signature_columns(model, frame)), dtype=float).reshape(-1)


def predict_version(model_name: str, version: str, X: pd.DataFrame) -> np.ndarray:
    """Loads a registered version as pyfunc (any family) and scores every row of X.

    Loads through the global MLflow registry URI (`ml.tracking.configure_mlflow` sets it).
    """
    return predict_frame(mlflow.pyfunc.load_model(f"models:/{model_name}/{version}"), X)


Scorer = Callable[[str, pd.DataFrame], np.ndarray]


def promote(
    client: MlflowClient,
    version: str | int,
    X: pd.DataFrame,
    y: np.ndarray,
    groups: np.ndarray | pd.Series,
    gate: GateConfig | None = None,
    model_name: str = MODEL_NAME,
    window: str = "",
    scorer: Scorer | None = None,
) -> PromotionDecision:
    """Makes `version` the challenger, and the champion if the gate says its gain is real.

    (X, y) is the promotion window, `groups` the user of each row (the bootstrap's unit),
    `window` a description of it recorded with the decision. `scorer(version, X)` returns a
    version's scores (default: load it from the registry).

    Order matters: score both models first, then write the evidence as version tags, then move
    aliases. A failure before the aliases move leaves the registry's aliases untouched.
    """
    version = str(version)
    gate = gate or GateConfig()
    y = np.asarray(y).astype(np.int64)
    score = scorer or (lambda v, frame: predict_version(model_name, v, frame))
    challenger_scores = score(version, X)
    challenger_pr_auc = pr_auc(y, challenger_scores)
    # Resolve the alias once and score that version: the same model `@champion` points to now.
    champion_version = current_champion(client, model_name)
    champion_pr_auc, difference = None, None
    window_text = f"{len(y):,} rows, {int(y.sum()):,} buyers"
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif champion_version == version:
        champion_pr_auc = challenger_pr_auc
        promoted, reason = True, "already the champion"
    else:
        champion_scores = score(champion_version, X)
        champion_pr_auc = pr_auc(y, champion_scores)
        difference = paired_differences(
            y,
            challenger_scores,
            champion_scores,
            groups,
            n_resamples=gate.n_resamples,
            seed=gate.seed,
            confidence=gate.confidence,
            names=("pr_auc",),
        )["pr_auc"]
        promoted = difference.lower_bound > gate.min_gain
        challenger_text, champion_text = _pr_auc_text(challenger_pr_auc, champion_pr_auc)
        verdict = "gain shown: promoted" if promoted else "gain not shown: champion kept"
        reason = (
            f"challenger v{version} PR-AUC {challenger_text} vs champion v{champion_version} "
            f"{champion_text}; paired difference {difference.text()} "
            f"({gate.confidence:.0%} interval), one-sided lower bound "
            f"{difference.lower_bound:+.4f} {'>' if promoted else '<='} minimum gain "
            f"{gate.min_gain:+.4f} on {window_text}: {verdict}"
        )

    decision = PromotionDecision(
        challenger_version=version,
        challenger_pr_auc=challenger_pr_auc,
        champion_version=champion_version,
        champion_pr_auc=champion_pr_auc,
        promoted=promoted,
        reason=reason,
        difference=difference,
        window=window,
        n_rows=len(y),
        n_buyers=int(y.sum()),
        n_users=int(pd.Series(np.asarray(groups)).nunique()),
    )
    for key, value in decision_tags(decision, gate).items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    return decision


def decision_tags(decision: PromotionDecision, gate: GateConfig) -> dict[str, str]:
    """The evidence of a decision as version tags: both scores, the difference with its
    interval and lower bound, the rule, the window and its size."""

    def number(value: float | None) -> str:
        return "none" if value is None else f"{value:.6f}"

    difference = decision.difference
    return {
        "promotion_decision": "promoted" if decision.promoted else "kept_champion",
        "promotion_reason": decision.reason,
        "challenger_promotion_pr_auc": number(decision.challenger_pr_auc),
        "champion_promotion_pr_auc": number(decision.champion_pr_auc),
        "compared_with_version": decision.champion_version or "none",
        "pr_auc_difference": number(difference.estimate if difference else None),
        "pr_auc_difference_low": number(difference.low if difference else None),
        "pr_auc_difference_high": number(difference.high if difference else None),
        "pr_auc_difference_lower_bound": number(difference.lower_bound if difference else None),
        "gate_min_gain": f"{gate.min_gain:g}",
        "gate_confidence": f"{gate.confidence:g}",
        "promotion_window": decision.window,
        "promotion_rows": str(decision.n_rows),
        "promotion_buyers": str(decision.n_buyers),
        "promotion_users": str(decision.n_users),
    }
