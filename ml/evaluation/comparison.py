"""Every model of one evaluation window side by side, each figure with its interval, each
difference paired, and the same by activity segment.

The window is the promotion role's cutoffs pooled (see `ml.splits`); rows are (user, cutoff),
and every interval resamples users. A difference is always the reference model (the family
being judged) minus another model, scored on the same resampled users.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from ml.evaluation.bootstrap import (
    BOOTSTRAP_METRICS,
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    PairedDifference,
    bootstrap_draws,
    bootstrap_metrics,
    interval_from_draws,
    paired_difference,
    point_metrics,
)
from ml.evaluation.metrics import evaluate

# Below this many buyers a segment's PR-AUC is too noisy to read (its interval spans most of
# the range); the table says so instead of printing a number.
MIN_SEGMENT_BUYERS = 30
# Activity segments: events in the lookback window, (name, lowest, highest) inclusive.
ACTIVITY_SEGMENTS = (("1-2 events", 1, 2), ("3-9 events", 3, 9), ("10+ events", 10, None))
NEW_USERS_SEGMENT = "first seen within the horizon"


@dataclass(frozen=True)
class WindowEvaluation:
    """Point metrics, intervals and paired PR-AUC differences of every model on one window."""

    reference: str
    n_rows: int
    n_buyers: int
    n_users: int
    metrics: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, Interval]]
    differences: dict[str, PairedDifference]

    def table(self) -> pd.DataFrame:
        """One row per model, best PR-AUC first: each metric with `_low`/`_high` columns, and
        the reference's paired PR-AUC difference against that model."""
        rows = []
        for model, metrics in self.metrics.items():
            row: dict[str, float | str] = {"model": model}
            for name in BOOTSTRAP_METRICS:
                interval = self.intervals[model][name]
                row[name] = interval.estimate
                row[f"{name}_low"] = interval.low
                row[f"{name}_high"] = interval.high
            row["threshold"] = metrics["threshold"]
            difference = self.differences.get(model)
            row[f"{self.reference}_minus_model_pr_auc"] = (
                difference.estimate if difference else np.nan
            )
            row["difference_low"] = difference.low if difference else np.nan
            row["difference_high"] = difference.high if difference else np.nan
            rows.append(row)
        table = pd.DataFrame(rows)
        return table.sort_values("pr_auc", ascending=False, kind="stable").reset_index(drop=True)

    def markdown(self) -> str:
        """The table for people: "0.205 [0.181, 0.229]" cells."""
        lines = [
            f"| model | PR-AUC | ROC-AUC | log loss | Brier | ECE | lift@k | "
            f"{self.reference} minus model (PR-AUC) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for model in self.table()["model"]:
            interval = self.intervals[model]
            difference = self.differences.get(model)
            lines.append(
                f"| {model} | {interval['pr_auc'].text()} | {interval['roc_auc'].text()} | "
                f"{interval['log_loss'].text()} | {interval['brier'].text()} | "
                f"{interval['ece'].text()} | {interval['lift_at_k'].text(2)} | "
                f"{difference.text() if difference else '-'} |"
            )
        lines.append(
            f"\n{self.n_rows:,} rows, {self.n_buyers:,} buyers, {self.n_users:,} users; "
            f"{_confidence(self)} intervals resample users."
        )
        return "\n".join(lines)


def _confidence(evaluation: WindowEvaluation) -> str:
    first = next(iter(evaluation.intervals.values()))
    return f"{first['pr_auc'].confidence:.0%}"


def evaluate_window(
    y: np.ndarray,
    scores_by_model: Mapping[str, np.ndarray],
    groups: np.ndarray | pd.Series,
    thresholds: Mapping[str, float],
    reference: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    top_k_fraction: float = 0.1,
    confidence: float = DEFAULT_CONFIDENCE,
) -> WindowEvaluation:
    """Metrics of every model (thresholds chosen elsewhere, on validation), their user-level
    intervals, and the paired PR-AUC difference of `reference` against each other model."""
    if reference not in scores_by_model:
        raise ValueError(f"The reference model {reference!r} has no scores.")
    y = np.asarray(y).astype(np.int64)
    draws = bootstrap_draws(y, scores_by_model, groups, n_resamples, seed, top_k_fraction)
    metrics, intervals, differences = {}, {}, {}
    for model, scores in scores_by_model.items():
        metrics[model] = evaluate(y, scores, thresholds[model], top_k_fraction)
        estimate = point_metrics(y, scores, top_k_fraction)
        intervals[model] = {
            name: interval_from_draws(estimate[name], draws[model][name], confidence)
            for name in BOOTSTRAP_METRICS
        }
    for model in scores_by_model:
        if model != reference:
            differences[model] = paired_difference(
                "pr_auc",
                intervals[reference]["pr_auc"].estimate - intervals[model]["pr_auc"].estimate,
                draws[reference]["pr_auc"] - draws[model]["pr_auc"],
                confidence,
            )
    return WindowEvaluation(
        reference=reference,
        n_rows=len(y),
        n_buyers=int(y.sum()),
        n_users=int(pd.Series(np.asarray(groups)).nunique()),
        metrics=metrics,
        intervals=intervals,
        differences=differences,
    )


def segment_masks(features: pd.DataFrame, horizon: timedelta) -> dict[str, np.ndarray]:
    """Row masks of the activity segments (events in the lookback) and, where the features
    have `hours_since_first_event`, of the users first seen within the last horizon (these
    overlap the activity segments). None where the features lack `events_lookback`."""
    if "events_lookback" not in features.columns:
        return {}
    events = features["events_lookback"].to_numpy(dtype=float)
    masks = {
        name: (events >= low) & (True if high is None else events <= high)
        for name, low, high in ACTIVITY_SEGMENTS
    }
    if "hours_since_first_event" in features.columns:
        first_seen = features["hours_since_first_event"].to_numpy(dtype=float)
        masks[NEW_USERS_SEGMENT] = first_seen < horizon.total_seconds() / 3600
    return {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}


def segment_table(
    y: np.ndarray,
    scores_by_model: Mapping[str, np.ndarray],
    groups: np.ndarray | pd.Series,
    masks: Mapping[str, np.ndarray],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    min_buyers: int = MIN_SEGMENT_BUYERS,
) -> pd.DataFrame:
    """PR-AUC with its interval per segment and model, as text; a segment with fewer than
    `min_buyers` buyers says it cannot be read instead of a number."""
    y = np.asarray(y).astype(np.int64)
    groups = np.asarray(groups)
    rows = []
    for segment, mask in masks.items():
        buyers = int(y[mask].sum())
        row: dict[str, str | int] = {"segment": segment, "rows": int(mask.sum()), "buyers": buyers}
        for model, scores in scores_by_model.items():
            if buyers < min_buyers:
                row[model] = f"cannot be read ({buyers} buyers < {min_buyers})"
                continue
            if buyers == int(mask.sum()):
                row[model] = "cannot be read (no non-buyers)"
                continue
            pr_auc = bootstrap_metrics(
                y[mask],
                np.asarray(scores)[mask],
                groups[mask],
                n_resamples,
                seed,
                names=("pr_auc",),
            )["pr_auc"]
            row[model] = pr_auc.text()
        rows.append(row)
    return pd.DataFrame(rows, columns=["segment", "rows", "buyers", *scores_by_model])
