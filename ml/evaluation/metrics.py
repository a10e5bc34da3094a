"""Metrics, tables and plots that say how good a purchase-propensity score is.

Buyers are a few percent of the rows, so accuracy says little (predicting "nobody buys" is
already right for most rows; `majority_class_accuracy` shows how much). The metrics that
matter here are ranking ones: PR-AUC (average precision), and precision and lift among the top
k% of scores, i.e. how much better than random a campaign aimed at the top-scored users does.
Log loss, Brier score and the calibration table say whether the scores can be read as
probabilities. Everything is computed by scikit-learn except precision@k and lift@k, which it
does not offer.

A row is predicted positive when its score is >= the threshold, as in
`sklearn.metrics.precision_recall_curve`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

# The columns comparison_table shows first; any other metric follows.
COMPARISON_COLUMNS = (
    "pr_auc",
    "roc_auc",
    "precision_at_k",
    "lift_at_k",
    "f1",
    "precision",
    "recall",
    "log_loss",
    "brier",
    "accuracy",
    "threshold",
)


def as_arrays(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must be 1-d of equal length.")
    return y, s


def choose_threshold(y_validation: np.ndarray, validation_scores: np.ndarray) -> float:
    """The score threshold with the highest F1 on validation (never on test: that would tune
    the model to the data that is meant to judge it)."""
    y, s = as_arrays(y_validation, validation_scores)
    if y.sum() == 0:
        raise ValueError(
            "The validation rows have no positives: F1 and its threshold are undefined."
        )
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision, recall) pair has no threshold: it is the "predict nobody" point.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(thresholds[int(np.argmax(f1))])


def evaluate(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, top_k_fraction: float = 0.1
) -> dict[str, float]:
    """Every metric of one score on one split.

    precision_at_k: the share of positives among the top `ceil(top_k_fraction * n_rows)` rows
    by score (ties keep row order). lift_at_k: precision_at_k / base_rate, so 3 means a campaign
    aimed at those users reaches three times as many buyers as one aimed at random users.
    roc_auc and pr_auc are NaN when y_true holds one class only: there is nothing to rank.
    """
    y, s = as_arrays(y_true, scores)
    if not 0 < top_k_fraction <= 1:
        raise ValueError(f"top_k_fraction must be in (0, 1], got {top_k_fraction}.")
    predicted = (s >= threshold).astype(np.int64)
    base_rate = float(y.mean())
    k = max(1, math.ceil(top_k_fraction * len(y)))
    top_k = np.argsort(-s, kind="stable")[:k]
    precision_at_k = float(y[top_k].mean())
    one_class = len(np.unique(y)) < 2
    return {
        "roc_auc": float("nan") if one_class else float(roc_auc_score(y, s)),
        "pr_auc": float("nan") if one_class else float(average_precision_score(y, s)),
        "log_loss": float(log_loss(y, s, labels=[0, 1])),
        "brier": float(brier_score_loss(y, s, pos_label=1)),
        "accuracy": float(accuracy_score(y, predicted)),
        "base_rate": base_rate,
        "majority_class_accuracy": max(base_rate, 1.0 - base_rate),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "precision_at_k": precision_at_k,
        "lift_at_k": precision_at_k / base_rate if base_rate > 0 else float("nan"),
        "threshold": float(threshold),
        "top_k_fraction": float(top_k_fraction),
        "n_rows": int(len(y)),
        "n_positives": int(y.sum()),
    }


def calibration_table(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Mean score against observed positive rate in quantile bins (equal row counts), from
    `sklearn.calibration.calibration_curve`. Bins with no rows are left out."""
    y, s = as_arrays(y_true, scores)
    observed, predicted = calibration_curve(y, s, n_bins=n_bins, strategy="quantile")
    return pd.DataFrame(
        {
            "bin": np.arange(len(observed)),
            "mean_predicted": predicted,
            "observed_rate": observed,
        }
    )


def comparison_table(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """One row per model (the `model` column), best PR-AUC first."""
    table = pd.DataFrame.from_dict({name: dict(m) for name, m in results.items()}, orient="index")
    first = [column for column in COMPARISON_COLUMNS if column in table.columns]
    table = table[first + [column for column in table.columns if column not in first]]
    table = table.rename_axis("model").reset_index()
    if "pr_auc" in table.columns:
        table = table.sort_values("pr_auc", ascending=False, kind="stable")
    return table.reset_index(drop=True)
