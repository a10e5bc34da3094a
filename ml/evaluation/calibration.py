"""Turn a model's raw scores into probabilities, fitted on the tuning role's validation cutoffs.

Why: the raw scores are not probabilities. Resampled training data (undersampling, SMOTE) or a
positive class weight shift them upwards, and training cutoffs may see a shorter history than the
scored cutoff. A shop that reads "0.3" as "three in ten buy" needs calibrated scores.

Two methods, both from scikit-learn:
- "sigmoid" (Platt scaling): a logistic regression on the logit of the raw score. Monotone, so
  the ranking (PR-AUC, ROC-AUC, the intervention list) is unchanged; it fixes the constant
  log-odds shift that resampling causes. The default.
- "isotonic": a monotone step function; more flexible, but it turns ranges of scores into ties,
  which can cost ranking quality on small validation windows.

The fitted map is kept as plain numbers (`to_dict`), so the registered pyfunc of any family can
carry it without pickling a scikit-learn object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

CALIBRATION_METHODS = ("sigmoid", "isotonic")
_EPS = 1e-6


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(clipped / (1 - clipped))


@dataclass(frozen=True)
class Calibrator:
    """A fitted monotone map from raw score to probability.

    sigmoid: p = 1 / (1 + exp(-(slope * logit(score) + intercept)));
    isotonic: p = the step function through (x, y), clipped at both ends.
    """

    method: str
    slope: float = 1.0
    intercept: float = 0.0
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.slope * _logit(scores) + self.intercept)))
        if self.method == "isotonic":
            return np.interp(scores, self.x, self.y)
        raise ValueError(f"Unknown calibration method {self.method!r}")

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "slope": self.slope,
            "intercept": self.intercept,
            "x": list(self.x),
            "y": list(self.y),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Calibrator:
        return cls(
            method=values["method"],
            slope=float(values.get("slope", 1.0)),
            intercept=float(values.get("intercept", 0.0)),
            x=[float(v) for v in values.get("x", [])],
            y=[float(v) for v in values.get("y", [])],
        )


def fit_calibrator(scores: np.ndarray, y: np.ndarray, method: str = "sigmoid") -> Calibrator:
    """Fits `method` on raw validation scores and their labels (never on promotion data)."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if len(np.unique(y)) < 2:
        raise ValueError("Calibration needs both buyers and non-buyers in the validation rows.")
    if method == "sigmoid":
        # A large C: two parameters fitted on thousands of rows need no shrinkage.
        model = LogisticRegression(C=1e6, max_iter=1_000)
        model.fit(_logit(scores).reshape(-1, 1), y)
        return Calibrator(
            "sigmoid", slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0])
        )
    isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    isotonic.fit(scores, y)
    return Calibrator(
        "isotonic",
        x=[float(v) for v in isotonic.X_thresholds_],
        y=[float(v) for v in isotonic.y_thresholds_],
    )


def calibrate(raw_scores: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """The calibrated probabilities of a family's raw scores (unchanged without calibration)."""
    return (
        raw_scores if calibration is None else Calibrator.from_dict(calibration).apply(raw_scores)
    )
