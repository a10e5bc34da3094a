"""Evaluation plots: ROC, precision-recall, calibration, confusion matrix, feature importance
and a SHAP summary.

Plots are drawn on `matplotlib.figure.Figure` objects rendered by the Agg canvas: no display,
no pyplot window state, safe in Dagster worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

from ml.evaluation.metrics import as_arrays

TOP_FEATURES = 20


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
    y, s = as_arrays(y_true, scores)
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
    paths.append(save_lift_plot(y, s, out_dir / "lift.png", model_name))
    return paths


def lift_by_decile(y_true: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """Buyer rate per score decile (decile 1 = the highest-scored tenth) over the overall buyer
    rate: how many times more buyers a shop reaches by targeting that tenth."""
    y, s = as_arrays(y_true, scores)
    order = np.argsort(-s, kind="stable")
    deciles = np.array_split(order, 10)
    overall = max(float(y.mean()), 1e-12)
    return pd.DataFrame(
        {
            "decile": np.arange(1, 11),
            "rows": [len(d) for d in deciles],
            "buyer_rate": [float(y[d].mean()) if len(d) else 0.0 for d in deciles],
            "lift": [float(y[d].mean()) / overall if len(d) else 0.0 for d in deciles],
        }
    )


def save_lift_plot(y_true: np.ndarray, scores: np.ndarray, out_path: Path, model_name: str) -> Path:
    table = lift_by_decile(y_true, scores)
    figure = _new_figure()
    axes = figure.subplots()
    axes.bar(table["decile"], table["lift"], color="#3b6ea5")
    axes.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="no model (lift 1)")
    axes.set_xticks(table["decile"])
    axes.set_xlabel("score decile (1 = highest scores)")
    axes.set_ylabel("buyer rate / overall buyer rate")
    axes.set_title(f"Lift by decile: {model_name}")
    axes.legend()
    return _save(figure, out_path)


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


def save_calibration_comparison_plot(
    y_true: np.ndarray, raw_scores: np.ndarray, calibrated_scores: np.ndarray, out_path: Path
) -> Path:
    """Calibration curves of the raw and the calibrated scores on one axis (quantile bins)."""
    y, raw = as_arrays(y_true, raw_scores)
    _, calibrated = as_arrays(y_true, calibrated_scores)
    figure = _new_figure()
    axes = figure.subplots()
    for scores, name in ((raw, "raw score"), (calibrated, "calibrated")):
        CalibrationDisplay.from_predictions(
            y, scores, n_bins=10, strategy="quantile", ax=axes, name=name
        )
    axes.set_title("Calibration before and after (quantile bins)")
    return _save(figure, Path(out_path))
