"""Metrics against hand-computed values and scikit-learn, the F1 threshold, tables and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)

from ml.evaluation import (
    calibration_table,
    choose_threshold,
    comparison_table,
    evaluate,
    lift_by_decile,
    save_evaluation_plots,
    save_feature_importance_plot,
    save_shap_summary_plot,
)

# Ten users, best score first; four of them buy.
Y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

EXPECTED_KEYS = {
    *("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "base_rate"),
    *("majority_class_accuracy", "precision", "recall", "f1", "precision_at_k", "lift_at_k"),
    *("threshold", "top_k_fraction", "n_rows", "n_positives"),
}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5_000, path


def test_metrics_by_hand_and_by_scikit_learn() -> None:
    metrics = evaluate(Y, SCORES, threshold=0.5, top_k_fraction=0.3)

    assert set(metrics) == EXPECTED_KEYS
    # At 0.5 the first five rows are predicted buyers: TP 3, FP 2, FN 1, TN 4.
    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["base_rate"] == pytest.approx(0.4)
    assert metrics["majority_class_accuracy"] == pytest.approx(0.6)
    # Top 30% = 3 rows, two of them buyers; lift = (2/3) / 0.4.
    assert metrics["precision_at_k"] == pytest.approx(2 / 3)
    assert metrics["lift_at_k"] == pytest.approx((2 / 3) / 0.4)
    # 20 of the 24 (buyer, non-buyer) pairs are ordered right.
    assert metrics["roc_auc"] == pytest.approx(20 / 24)
    # Precision at each buyer's rank (1, 2, 4, 7), averaged.
    assert metrics["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 7) / 4)
    assert metrics["brier"] == pytest.approx(np.mean((SCORES - Y) ** 2))

    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(Y, SCORES))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(Y, SCORES))
    assert metrics["log_loss"] == pytest.approx(log_loss(Y, SCORES))
    assert metrics["brier"] == pytest.approx(brier_score_loss(Y, SCORES))
    assert metrics["f1"] == pytest.approx(f1_score(Y, SCORES >= 0.5))
    assert (metrics["threshold"], metrics["top_k_fraction"]) == (0.5, 0.3)
    assert (metrics["n_rows"], metrics["n_positives"]) == (10, 4)


def test_top_k_rounds_up_to_at_least_one_row() -> None:
    assert evaluate(Y, SCORES, 0.5, top_k_fraction=0.01)["precision_at_k"] == 1.0  # 1 row
    assert evaluate(Y, SCORES, 0.5, top_k_fraction=0.25)["precision_at_k"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="top_k_fraction"):
        evaluate(Y, SCORES, 0.5, top_k_fraction=0.0)


def test_one_class_and_mismatched_inputs() -> None:
    metrics = evaluate(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.25)
    assert np.isnan(metrics["roc_auc"]) and np.isnan(metrics["pr_auc"])
    assert np.isnan(metrics["lift_at_k"])
    assert metrics["precision"] == 0.0 and metrics["accuracy"] == 0.5
    with pytest.raises(ValueError, match="equal length"):
        evaluate(Y, SCORES[:-1], threshold=0.5)


def test_threshold_maximizes_f1() -> None:
    # By hand: thresholds 0.8 -> F1 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3.
    assert choose_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.35

    rng = np.random.default_rng(0)
    y = (rng.uniform(size=300) < 0.15).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    threshold = choose_threshold(y, scores)
    best_f1 = max(f1_score(y, scores >= t) for t in np.unique(scores))
    assert f1_score(y, scores >= threshold) == pytest.approx(best_f1)
    assert threshold in scores

    with pytest.raises(ValueError, match="no positives"):
        choose_threshold(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]))


def test_calibration_table_uses_quantile_bins() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=1_000)
    y = (rng.uniform(size=1_000) < scores).astype(int)

    table = calibration_table(y, scores, n_bins=5)

    observed, predicted = calibration_curve(y, scores, n_bins=5, strategy="quantile")
    assert list(table.columns) == ["bin", "mean_predicted", "observed_rate"]
    assert table["observed_rate"].tolist() == observed.tolist()
    assert table["mean_predicted"].tolist() == predicted.tolist()
    assert len(table) == 5
    # Calibrated scores: observed rates follow the mean scores.
    assert np.abs(table["observed_rate"] - table["mean_predicted"]).max() < 0.1


def test_comparison_table_puts_the_best_pr_auc_first() -> None:
    results = {
        "base_rate": {"pr_auc": 0.02, "roc_auc": 0.5},
        "xgboost": {"pr_auc": 0.30, "roc_auc": 0.85},
        "logistic_regression": {"pr_auc": 0.20, "roc_auc": 0.80},
    }
    table = comparison_table(results)
    assert table["model"].tolist() == ["xgboost", "logistic_regression", "base_rate"]
    assert table.columns[:3].tolist() == ["model", "pr_auc", "roc_auc"]
    assert table.loc[0, "roc_auc"] == 0.85


def test_evaluation_plots_are_written_as_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y = (rng.uniform(size=500) < 0.1).astype(int)
    scores = np.clip(rng.normal(0.2 + 0.3 * y, 0.15), 0, 1)

    paths = save_evaluation_plots(y, scores, 0.4, tmp_path / "logistic", "logistic_regression")

    names = ["roc.png", "pr.png", "calibration.png", "confusion_matrix.png", "lift.png"]
    assert paths == [tmp_path / "logistic" / name for name in names]
    for path in paths:
        assert_png(path)


def test_lift_by_decile_on_a_hand_made_case() -> None:
    """20 rows, 2 buyers, both among the two highest scores: the top decile (2 rows) holds every
    buyer, a buyer rate of 1 against 0.1 overall, lift 10; the other deciles hold none."""
    scores = np.linspace(1.0, 0.0, 20)
    y = np.zeros(20, dtype=int)
    y[:2] = 1
    table = lift_by_decile(y, scores)
    assert list(table["rows"]) == [2] * 10
    assert table["lift"].tolist() == [10.0] + [0.0] * 9


def test_feature_importance_plot_shows_the_top_features(tmp_path: Path) -> None:
    importance = {f"feature_{i}": float(i) for i in range(30)}
    path = save_feature_importance_plot(importance, tmp_path / "importance.png", "gain")
    assert path == tmp_path / "importance.png"
    assert_png(path)


def test_shap_summary_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(200, 25)), columns=[f"f{i}" for i in range(25)])
    X.loc[::4, "f0"] = np.nan  # missing values are drawn grey
    X["constant"] = 1.0
    contributions = rng.normal(size=(200, 27))

    path = save_shap_summary_plot(contributions, X, tmp_path / "shap" / "summary.png")
    assert_png(path)

    with pytest.raises(ValueError, match="n_features \\+ 1"):
        save_shap_summary_plot(contributions[:, :-1], X, tmp_path / "bad.png")
