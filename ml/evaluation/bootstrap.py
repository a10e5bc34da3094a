"""Confidence intervals that resample shoppers, not rows, and paired differences between models.

Why users: the evaluation windows hold several cutoffs, and a shopper active on several of them
appears once per cutoff with nearly the same features and often the same label. Rows are not
independent, so resampling rows pretends to have more evidence than there is and gives intervals
that are too narrow. Each bootstrap resample here draws users with replacement (a multinomial
count per user) and gives every row of a user that count as its weight.

Why vectorized: a resample is a weight vector over the rows, and every metric used here is a
weighted sum over rows sorted once by score (PR-AUC, ROC-AUC, precision and lift at k) or a plain
weighted mean (log loss, Brier, expected calibration error). So a block of resamples is one
matrix (resamples x rows) and a few cumulative sums; 1,000 resamples of 40,000 rows take about
a second. The formulas equal scikit-learn's with `sample_weight` (the tests check it).

A paired difference scores both models under the same resampled weights, so what the two share
(which shoppers happened to be in the window) cancels out; its interval is far narrower than
the two separate intervals suggest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

# Metrics with an interval; all of them are computed from one sort per model and resample block.
BOOTSTRAP_METRICS = ("pr_auc", "roc_auc", "log_loss", "brier", "precision_at_k", "lift_at_k", "ece")
DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95
# Rows x resamples held in memory at once (float64): 4M cells is 32 MB per matrix.
BLOCK_CELLS = 4_000_000
ECE_BINS = 10
_EPS = 1e-15


@dataclass(frozen=True)
class Interval:
    """A metric on the data as it is, and the bootstrap percentile interval around it."""

    estimate: float
    low: float
    high: float
    confidence: float

    def text(self, digits: int = 3) -> str:
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """metric(a) - metric(b) on the same resampled users.

    `low`/`high`: the two-sided interval at `confidence`; `lower_bound`: the one-sided lower
    bound at `confidence` (the promotion gate reads it); `p_positive`: the share of resamples in
    which a scored higher than b.
    """

    metric: str
    estimate: float
    low: float
    high: float
    lower_bound: float
    p_positive: float
    confidence: float
    n_resamples: int

    def text(self, digits: int = 4) -> str:
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def to_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def group_codes(groups: Sequence | np.ndarray | pd.Series | None, n_rows: int) -> np.ndarray:
    """Integer code per row of its resampling unit (the user); every row its own unit when
    `groups` is None (row-level resampling, for comparison only)."""
    if groups is None:
        return np.arange(n_rows)
    codes, _ = pd.factorize(pd.Series(np.asarray(groups)), sort=False)
    if len(codes) != n_rows:
        raise ValueError(f"groups has {len(codes)} entries for {n_rows} rows.")
    if (codes < 0).any():
        raise ValueError("groups holds missing values: every row needs its user.")
    return codes


def resample_weights(
    codes: np.ndarray, n_resamples: int, seed: int, block_cells: int = BLOCK_CELLS
) -> Iterator[np.ndarray]:
    """Blocks of row weights (resamples x rows): each resample draws the units with replacement
    and weighs each row by how often its unit was drawn. Deterministic for a seed."""
    n_units = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    per_block = max(1, block_cells // max(len(codes), 1))
    done = 0
    while done < n_resamples:
        size = min(per_block, n_resamples - done)
        counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=size)
        yield counts[:, codes].astype(np.float64)
        done += size


def _ranking_metrics(
    weights: np.ndarray, y: np.ndarray, scores: np.ndarray, top_k_fraction: float
) -> dict[str, np.ndarray]:
    """PR-AUC (average precision), ROC-AUC, precision and lift at k for each weight row.

    Rows are sorted once by score; tied scores form one threshold, as in scikit-learn.
    NaN where a resample has no positive (or, for ROC-AUC, no negative).
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_y = scores[order], y[order].astype(np.float64)
    w = weights[:, order]
    cum_weight = np.cumsum(w, axis=1)
    cum_tp = np.cumsum(w * sorted_y, axis=1)
    cum_fp = cum_weight - cum_tp
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(scores) - 1]
    tp, fp = cum_tp[:, last_of_tie], cum_fp[:, last_of_tie]
    positives, negatives = tp[:, -1], fp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / np.maximum(tp + fp, _EPS)
        recall = tp / positives[:, None]
        recall_steps = np.diff(np.c_[np.zeros(len(w)), recall], axis=1)
        pr_auc = np.sum(recall_steps * precision, axis=1)
        tpr = np.c_[np.zeros(len(w)), recall]
        fpr = np.c_[np.zeros(len(w)), fp / negatives[:, None]]
        roc_auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
        # Top k: the first rows (by score) that together hold top_k_fraction of the weight.
        total = cum_weight[:, -1]
        k_index = np.minimum(
            np.sum(cum_weight < top_k_fraction * total[:, None] - 1e-9, axis=1), len(scores) - 1
        )
        rows = np.arange(len(w))
        precision_at_k = cum_tp[rows, k_index] / cum_weight[rows, k_index]
        base_rate = positives / total
        lift_at_k = precision_at_k / base_rate
    pr_auc[positives <= 0] = np.nan
    roc_auc[(positives <= 0) | (negatives <= 0)] = np.nan
    return {
        "pr_auc": pr_auc,
        "roc_auc": roc_auc,
        "precision_at_k": precision_at_k,
        "lift_at_k": lift_at_k,
    }


def ece_bin_edges(scores: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Inner edges of equal-count score bins (fixed for every resample)."""
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return edges


def _mean_metrics(weights: np.ndarray, y: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Log loss, Brier and expected calibration error (equal-count bins of the scores)."""
    clipped = np.clip(scores, _EPS, 1 - _EPS)
    row_log_loss = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    total = weights.sum(axis=1)
    bins = np.searchsorted(ece_bin_edges(scores), scores, side="right")
    one_hot = np.zeros((len(scores), int(bins.max()) + 1))
    one_hot[np.arange(len(scores)), bins] = 1.0
    bin_weight = weights @ one_hot
    bin_score = weights @ (one_hot * scores[:, None])
    bin_label = weights @ (one_hot * y[:, None])
    ece = np.sum(np.abs(bin_score - bin_label), axis=1) / total
    return {
        "log_loss": weights @ row_log_loss / total,
        "brier": weights @ (scores - y) ** 2 / total,
        "ece": ece,
        "_bin_weight": bin_weight,
    }


def weighted_metrics(
    weights: np.ndarray, y: np.ndarray, scores: np.ndarray, top_k_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """Every BOOTSTRAP_METRICS value for each row of `weights` (resamples x rows)."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    values = _ranking_metrics(weights, y, scores, top_k_fraction)
    values.update(_mean_metrics(weights, y, scores))
    values.pop("_bin_weight")
    return values


def expected_calibration_error(y: np.ndarray, scores: np.ndarray) -> float:
    """|mean score - observed rate| averaged over equal-count score bins, weighted by rows."""
    ones = np.ones((1, len(scores)))
    return float(_mean_metrics(ones, np.asarray(y, float), np.asarray(scores, float))["ece"][0])


def _check(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, scores = np.asarray(y, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y {y.shape} and scores {scores.shape} must be 1-d of equal length.")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values.")
    return y, scores


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_metrics(
    y: np.ndarray,
    scores: np.ndarray,
    groups: Sequence | np.ndarray | pd.Series | None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    top_k_fraction: float = 0.1,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """Each BOOTSTRAP_METRICS value with its percentile interval, resampling `groups` (users;
    None resamples rows)."""
    y, scores = _check(y, scores)
    estimate = weighted_metrics(np.ones((1, len(y))), y, scores, top_k_fraction)
    draws = _collect(
        resample_weights(group_codes(groups, len(y)), n_resamples, seed),
        lambda w: weighted_metrics(w, y, scores, top_k_fraction),
    )
    return {
        name: Interval(float(estimate[name][0]), *_percentiles(draws[name], confidence), confidence)
        for name in BOOTSTRAP_METRICS
    }


def paired_differences(
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: Sequence | np.ndarray | pd.Series | None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    top_k_fraction: float = 0.1,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, PairedDifference]:
    """metric(a) - metric(b) for each BOOTSTRAP_METRICS name, both models scored on the same
    resampled users. For log loss, Brier and ECE a negative difference means a is better."""
    y, scores_a = _check(y, scores_a)
    _, scores_b = _check(y, scores_b)
    ones = np.ones((1, len(y)))
    estimate_a = weighted_metrics(ones, y, scores_a, top_k_fraction)
    estimate_b = weighted_metrics(ones, y, scores_b, top_k_fraction)

    def difference(w: np.ndarray) -> dict[str, np.ndarray]:
        a = weighted_metrics(w, y, scores_a, top_k_fraction)
        b = weighted_metrics(w, y, scores_b, top_k_fraction)
        return {name: a[name] - b[name] for name in BOOTSTRAP_METRICS}

    draws = _collect(resample_weights(group_codes(groups, len(y)), n_resamples, seed), difference)
    result = {}
    for name in BOOTSTRAP_METRICS:
        values = draws[name][np.isfinite(draws[name])]
        low, high = _percentiles(values, confidence)
        lower_bound = float(np.quantile(values, 1 - confidence)) if len(values) else float("nan")
        result[name] = PairedDifference(
            metric=name,
            estimate=float(estimate_a[name][0] - estimate_b[name][0]),
            low=low,
            high=high,
            lower_bound=lower_bound,
            p_positive=float(np.mean(values > 0)) if len(values) else float("nan"),
            confidence=confidence,
            n_resamples=int(len(values)),
        )
    return result


def _collect(
    blocks: Iterator[np.ndarray], compute: Callable[[np.ndarray], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for block in blocks:
        for name, values in compute(block).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}
