"""The one evaluation every final model goes through, whatever its family.

1. Calibrate the family's raw scores on the tuning role's validation cutoffs.
2. Choose each model's decision threshold on the same validation cutoffs.
3. Score the model and the baselines (logistic regression, recency-frequency, base rate) on the
   promotion window: every metric with a user-level interval, the model's paired PR-AUC
   difference against each baseline, the same by activity segment, and the calibration error
   before and after.

The promotion window is read here only to report; nothing is fitted or chosen on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.baselines import (
    HEURISTIC_COLUMNS,
    base_rate_scores,
    fit_logistic_regression,
    recency_frequency_scores,
)
from ml.evaluation.bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap_metrics
from ml.evaluation.calibration import Calibrator, fit_calibrator
from ml.evaluation.comparison import (
    WindowEvaluation,
    evaluate_window,
    segment_masks,
    segment_table,
)
from ml.evaluation.metrics import choose_threshold, evaluate
from ml.splits import SplitData

Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass(frozen=True)
class FinalEvaluation:
    """What a final model's run records and its asset reports.

    `model` names the family's row in the tables ("xgboost", "torch_seq"). Scores of the model
    are calibrated everywhere except `ece_raw`, the promotion-window calibration error of the
    raw scores, kept to show what calibration changed.
    """

    model: str
    calibrator: Calibrator
    thresholds: dict[str, float]
    validation_metrics: dict[str, dict[str, float]]
    window: WindowEvaluation
    segments: pd.DataFrame
    ece_raw: Interval
    raw_promotion_scores: np.ndarray
    promotion_scores: np.ndarray

    @property
    def promotion(self) -> dict[str, Interval]:
        """The model's own promotion-window intervals."""
        return self.window.intervals[self.model]

    @property
    def mean_score(self) -> float:
        return float(np.mean(self.promotion_scores))

    @property
    def buyer_rate(self) -> float:
        return self.window.n_buyers / max(self.window.n_rows, 1)


def baseline_scorers(data: SplitData) -> dict[str, Scorer]:
    """The baselines every model is compared with, fitted on the train role only (the
    recency-frequency heuristic where the features it reads exist)."""
    logistic = fit_logistic_regression(data.X_train, data.y_train)
    features = data.feature_columns
    scorers: dict[str, Scorer] = {
        "logistic_regression": lambda X: logistic.predict_proba(X[features])[:, 1]
    }
    if set(HEURISTIC_COLUMNS) <= set(features):
        scorers["recency_frequency"] = lambda X: recency_frequency_scores(X[features])
    scorers["base_rate"] = lambda X: base_rate_scores(data.y_train, len(X))
    return scorers


def evaluate_final_model(
    data: SplitData,
    model: str,
    raw_scores: Scorer,
    calibration_method: str = "sigmoid",
    top_k_fraction: float = 0.1,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> FinalEvaluation:
    """Calibration, thresholds and the promotion-window comparison of one final model.

    `raw_scores` gets `data.model_input(role)` (features and, when loaded, sequences) and
    returns the family's uncalibrated scores.
    """
    validation_input = data.model_input("validation")
    promotion_input = data.model_input("promotion")
    raw_validation = raw_scores(validation_input)
    calibrator = fit_calibrator(raw_validation, data.y_validation, calibration_method)
    raw_promotion = raw_scores(promotion_input)

    validation_scores = {model: calibrator.apply(raw_validation)}
    promotion_scores = {model: calibrator.apply(raw_promotion)}
    for name, score in baseline_scorers(data).items():
        validation_scores[name] = score(validation_input)
        promotion_scores[name] = score(promotion_input)

    thresholds = {
        name: choose_threshold(data.y_validation, scores)
        for name, scores in validation_scores.items()
    }
    validation_metrics = {
        name: evaluate(data.y_validation, scores, thresholds[name], top_k_fraction)
        for name, scores in validation_scores.items()
    }
    users = data.keys_promotion["user_id"].to_numpy()
    window = evaluate_window(
        data.y_promotion,
        promotion_scores,
        users,
        thresholds,
        reference=model,
        n_resamples=n_resamples,
        seed=seed,
        top_k_fraction=top_k_fraction,
    )
    segments = segment_table(
        data.y_promotion,
        promotion_scores,
        users,
        segment_masks(data.X_promotion, data.split.horizon),
        n_resamples=n_resamples,
        seed=seed,
    )
    ece_raw = bootstrap_metrics(
        data.y_promotion, raw_promotion, users, n_resamples, seed, top_k_fraction, names=("ece",)
    )["ece"]
    return FinalEvaluation(
        model=model,
        calibrator=calibrator,
        thresholds=thresholds,
        validation_metrics=validation_metrics,
        window=window,
        segments=segments,
        ece_raw=ece_raw,
        raw_promotion_scores=raw_promotion,
        promotion_scores=promotion_scores[model],
    )
