"""How good a purchase-propensity score is, and how sure we can be.

- metrics: point metrics of one score on one window, the threshold, comparison tables
- bootstrap: intervals that resample users, paired differences between two models
- calibration: raw scores to probabilities (fitted on the tuning role's validation cutoffs)
- comparison: every model of a window with intervals, paired differences and segments
- plots: ROC, PR, calibration, confusion matrix, importance, SHAP summary

Every model family uses these; none of them knows which family produced a score.
"""

from ml.evaluation.bootstrap import (
    BOOTSTRAP_METRICS,
    Interval,
    PairedDifference,
    bootstrap_metrics,
    expected_calibration_error,
    paired_differences,
)
from ml.evaluation.calibration import CALIBRATION_METHODS, Calibrator, fit_calibrator
from ml.evaluation.metrics import (
    COMPARISON_COLUMNS,
    calibration_table,
    choose_threshold,
    comparison_table,
    evaluate,
)
from ml.evaluation.plots import (
    lift_by_decile,
    save_calibration_comparison_plot,
    save_evaluation_plots,
    save_feature_importance_plot,
    save_shap_summary_plot,
)

__all__ = [
    "BOOTSTRAP_METRICS",
    "CALIBRATION_METHODS",
    "COMPARISON_COLUMNS",
    "Calibrator",
    "Interval",
    "PairedDifference",
    "bootstrap_metrics",
    "calibration_table",
    "choose_threshold",
    "comparison_table",
    "evaluate",
    "expected_calibration_error",
    "fit_calibrator",
    "paired_differences",
    "save_calibration_comparison_plot",
    "lift_by_decile",
    "save_evaluation_plots",
    "save_feature_importance_plot",
    "save_shap_summary_plot",
]
