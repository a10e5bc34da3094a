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

Plots are drawn on `matplotlib.figure.Figure` objects rendered by the Agg canvas: no display,
no pyplot window state, safe in Dagster worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay, calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
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

TOP_FEATURES = 20
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


def _as_arrays(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} must be 1-d of equal length.")
    return y, s


def choose_threshold(y_validation: np.ndarray, validation_scores: np.ndarray) -> float:
    """The score threshold with the highest F1 on validation (never on test: that would tune
    the model to the data that is meant to judge it)."""
    y, s = _as_arrays(y_validation, validation_scores)
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
    y, s = _as_arrays(y_true, scores)
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
    y, s = _as_arrays(y_true, scores)
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


def _new_figure(width: float = 6.0, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, format="png")
    return path


def save_evaluation_plots(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, out_dir: Path, model_name: str
) -> list[Path]:
    """roc.png, pr.png, calibration.png and confusion_matrix.png in `out_dir` (created; use one
    folder per model, the file names are fixed)."""
    y, s = _as_arrays(y_true, scores)
    out_dir = Path(out_dir)
    paths = []

    figure = _new_figure()
    axes = figure.subplots()
    RocCurveDisplay.from_predictions(y, s, ax=axes, name=model_name, plot_chance_level=True)
    axes.set_title(f"ROC curve: {model_name}")
    paths.append(_save(figure, out_dir / "roc.png"))

    figure = _new_figure()
    axes = figure.subplots()
    PrecisionRecallDisplay.from_predictions(y, s, ax=axes, name=model_name, plot_chance_level=True)
    axes.set_title(f"Precision-recall curve: {model_name}")
    paths.append(_save(figure, out_dir / "pr.png"))

    figure = _new_figure()
    axes = figure.subplots()
    CalibrationDisplay.from_predictions(
        y, s, n_bins=10, strategy="quantile", ax=axes, name=model_name
    )
    axes.set_title(f"Calibration (quantile bins): {model_name}")
    paths.append(_save(figure, out_dir / "calibration.png"))

    figure = _new_figure()
    axes = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        y, (s >= threshold).astype(np.int64), labels=[0, 1], ax=axes, colorbar=False
    )
    axes.set_title(f"Confusion matrix at threshold {threshold:.3g}: {model_name}")
    paths.append(_save(figure, out_dir / "confusion_matrix.png"))
    return paths


def save_feature_importance_plot(
    importance: Mapping[str, float], out_path: Path, title: str
) -> Path:
    """Horizontal bars of the TOP_FEATURES most important features, the largest on top."""
    top = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:TOP_FEATURES]
    top.reverse()  # barh draws from the bottom up
    figure = _new_figure(7.0, 0.3 * len(top) + 1.5)
    axes = figure.subplots()
    axes.barh([name for name, _ in top], [value for _, value in top], color="tab:blue")
    axes.set_xlabel("importance")
    axes.set_title(title)
    return _save(figure, Path(out_path))


def save_shap_summary_plot(contributions: np.ndarray, X: pd.DataFrame, out_path: Path) -> Path:
    """A beeswarm-like SHAP summary from XGBoost `pred_contribs` (last column = bias).

    One row per feature (the TOP_FEATURES with the largest mean |contribution|, largest on
    top); each dot is one user's contribution to the log-odds, coloured by that user's feature
    value from low (blue) to high (red), grey where the value is missing. Vertical jitter only
    spreads the dots.
    """
    contributions = np.asarray(contributions, dtype=float)
    if contributions.shape != (len(X), X.shape[1] + 1):
        raise ValueError(
            f"contributions must be (n_rows, n_features + 1) = ({len(X)}, {X.shape[1] + 1}), "
            f"got {contributions.shape}."
        )
    per_feature = contributions[:, :-1]
    order = np.argsort(-np.abs(per_feature).mean(axis=0), kind="stable")[:TOP_FEATURES]
    rng = np.random.default_rng(0)

    figure = _new_figure(8.0, 0.4 * len(order) + 1.5)
    axes = figure.subplots()
    points = None
    for row, feature_index in enumerate(order[::-1]):
        values = X.iloc[:, feature_index].to_numpy(dtype=float)
        shown = ~np.isnan(values)
        colour = np.full(len(values), 0.5)
        if shown.any():
            # Colours clipped to the 5th-95th percentiles so one outlier cannot wash out the rest.
            low, high = np.percentile(values[shown], [5, 95])
            spread = high - low if high > low else 1.0
            colour[shown] = np.clip((values[shown] - low) / spread, 0.0, 1.0)
        jitter = rng.uniform(-0.3, 0.3, len(values))
        axes.scatter(
            per_feature[~shown, feature_index],
            row + jitter[~shown],
            s=6,
            color="lightgrey",
        )
        points = axes.scatter(
            per_feature[shown, feature_index],
            row + jitter[shown],
            s=6,
            c=colour[shown],
            cmap="coolwarm",
            vmin=0.0,
            vmax=1.0,
        )
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(order)), [X.columns[i] for i in order[::-1]])
    axes.set_xlabel("contribution to the log-odds (SHAP value)")
    axes.set_title("Feature contributions")
    if points is not None:
        colorbar = figure.colorbar(points, ax=axes, ticks=[0, 1])
        colorbar.ax.set_yticklabels(["low", "high"])
        colorbar.set_label("feature value")
    return _save(figure, Path(out_path))
