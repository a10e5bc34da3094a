"""Promotion in the MLflow model registry, with aliases instead of stages.

A new version becomes the `challenger`. It becomes the `champion` only when it beats the current
champion on the same test window, both scored now; a metric stored when the champion was trained
is never used, since it may come from another window. Nothing moves until both models are scored,
so a failure while loading or scoring leaves every alias where it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import average_precision_score

MODEL_NAME = "purchase-propensity"
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    """Both scores on the same test window and what was decided."""

    challenger_version: str
    challenger_pr_auc: float
    champion_version: str | None
    champion_pr_auc: float | None
    promoted: bool
    reason: str


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


def score_version(
    model_name: str,
    version: str,
    X: pd.DataFrame,
    y: np.ndarray,
    evaluate_fn: Callable[[np.ndarray, np.ndarray], float] = pr_auc,
) -> float:
    """Loads a registered version as pyfunc (any family) and scores it on (X, y).

    Loads through the global MLflow registry URI (`ml.tracking.configure_mlflow` sets it).
    """
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    scores = np.asarray(model.predict(signature_columns(model, X)), dtype=float).reshape(-1)
    return float(evaluate_fn(y, scores))


def promote(
    client: MlflowClient,
    version: str | int,
    X_test: pd.DataFrame,
    y_test: np.ndarray,
    evaluate_fn: Callable[[np.ndarray, np.ndarray], float] = pr_auc,
    model_name: str = MODEL_NAME,
    test_window: str = "",
) -> PromotionDecision:
    """Makes `version` the challenger, and the champion if it beats the current one.

    Order matters: score both models first, then write the evidence as version tags, then move
    aliases. A failure before the aliases move leaves the registry's aliases untouched. A tie
    keeps the champion. `test_window` (e.g. the test cutoff) is recorded with the decision.
    """
    version = str(version)
    challenger_score = score_version(model_name, version, X_test, y_test, evaluate_fn)
    # Resolve the alias once and score that version: the same model `@champion` points to now.
    champion_version = current_champion(client, model_name)
    champion_score = None
    if champion_version is None:
        promoted, reason = True, "no champion yet"
    elif champion_version == version:
        champion_score = challenger_score
        promoted, reason = True, "already the champion"
    else:
        champion_score = score_version(model_name, champion_version, X_test, y_test, evaluate_fn)
        promoted = challenger_score > champion_score
        verb = "beats" if promoted else "does not beat"
        challenger_text, champion_text = _pr_auc_text(challenger_score, champion_score)
        reason = (
            f"challenger v{version} PR-AUC {challenger_text} {verb} champion "
            f"v{champion_version} PR-AUC {champion_text} on the same test window"
        )

    decision = PromotionDecision(
        challenger_version=version,
        challenger_pr_auc=challenger_score,
        champion_version=champion_version,
        champion_pr_auc=champion_score,
        promoted=promoted,
        reason=reason,
    )
    tags = {
        "promotion_decision": "promoted" if promoted else "kept_champion",
        "promotion_reason": reason,
        "challenger_test_pr_auc": f"{challenger_score:.6f}",
        "champion_test_pr_auc": "none" if champion_score is None else f"{champion_score:.6f}",
        "compared_with_version": champion_version or "none",
        "promotion_test_window": test_window,
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    return decision
