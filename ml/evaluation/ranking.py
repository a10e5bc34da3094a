"""Ranking metrics of next-category recommendations, with intervals that resample shoppers.

A recommender scores every category for a (user, cutoff) row; the row's target is the set of
categories the user touched in the label window (`marts.category_labels`). Only rows with at
least one target category are scored: a shopper who does not come back in the horizon gives
nothing to rank against. Each metric is the mean over those rows of

- recall@k: the share of the row's target categories among the k highest-scored;
- ndcg@k: the discounted gain of the hits in the top k (1 / log2(rank + 1) each), divided by
  the gain of the best possible ranking (every target first);
- mrr: 1 / the rank of the first target category in the whole ranking.

Ranks are 1-based; equal scores are ranked by category index (stable), so a method that cannot
tell categories apart gains nothing from the order it lists them in. A target category the
method has no score for (one first seen after it was fitted) ranks after every scored one.

Intervals: the user-level bootstrap of `ml.evaluation.bootstrap` (a shopper is at several
cutoffs): a resample draws users with replacement, and a mean over rows becomes
sum(count x the user's row sum) / sum(count x the user's rows). A paired difference uses the
same resampled users for both methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ml.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    PairedDifference,
    group_codes,
    interval_from_draws,
    paired_difference,
    resample_counts,
)

RANKING_METRICS = ("recall_at_k", "ndcg_at_k", "mrr")
DEFAULT_K = 10
# Rows ranked at once: rows x categories int64 ranks (4,096 x 2,000 categories is 64 MB).
ROWS_PER_CHUNK = 4096


def has_targets(targets: Sequence[np.ndarray] | pd.Series) -> np.ndarray:
    """Which rows have at least one target category (the rows the metrics are means over)."""
    return np.array([len(t) > 0 for t in targets], dtype=bool)


def top_categories(scores: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) category indexes, highest score first, ties by the lower index."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), axis=1, kind="stable")
    return order[:, :k]


def ranking_values(
    scores: np.ndarray, targets: Sequence[np.ndarray] | pd.Series, k: int = DEFAULT_K
) -> dict[str, np.ndarray]:
    """Per row, each of RANKING_METRICS. `scores`: (rows, categories), column c the score of
    category index c; `targets`: per row a non-empty array of category indexes.

    Raises ValueError when the rows do not match or a row has no target.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = list(targets)
    if scores.ndim != 2 or scores.shape[0] != len(targets):
        raise ValueError(f"scores {scores.shape} must be (rows, categories), {len(targets)} rows")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    lengths = np.array([len(t) for t in targets], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError("Every row needs at least one target category (see has_targets)")
    n, n_categories = scores.shape
    rows = np.repeat(np.arange(n), lengths)
    categories = np.concatenate([np.asarray(t, dtype=np.int64) for t in targets]) if n else []
    categories = np.asarray(categories, dtype=np.int64)
    if (categories < 0).any():
        raise ValueError("Target category indexes must be non-negative")
    ranks = np.full(len(categories), np.inf)
    known = categories < n_categories
    for start in range(0, n, ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, n)
        order = np.argsort(-scores[start:stop], axis=1, kind="stable")
        chunk_ranks = np.empty_like(order)
        np.put_along_axis(chunk_ranks, order, np.arange(1, n_categories + 1)[None, :], axis=1)
        inside = known & (rows >= start) & (rows < stop)
        ranks[inside] = chunk_ranks[rows[inside] - start, categories[inside]]

    hits = ranks <= k
    gains = np.where(hits, 1.0 / np.log2(ranks + 1.0), 0.0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(lengths, k) - 1]
    first_rank = np.full(n, np.inf)
    np.minimum.at(first_rank, rows, ranks)
    return {
        "recall_at_k": np.bincount(rows, weights=hits, minlength=n) / lengths,
        "ndcg_at_k": np.bincount(rows, weights=gains, minlength=n) / ideal,
        "mrr": 1.0 / first_rank,
    }


def _resampled_means(
    values: Mapping[str, np.ndarray], codes: np.ndarray, n_resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """Per name, the mean of its values in each resample of the users (`codes`)."""
    n_units = int(codes.max()) + 1
    unit_rows = np.bincount(codes, minlength=n_units).astype(np.float64)
    unit_sums = {
        name: np.bincount(codes, weights=v, minlength=n_units) for name, v in values.items()
    }
    draws: dict[str, list[np.ndarray]] = {name: [] for name in values}
    for counts in resample_counts(n_units, n_resamples, seed):
        rows = counts @ unit_rows
        for name, sums in unit_sums.items():
            draws[name].append((counts @ sums) / rows)
    return {name: np.concatenate(parts) for name, parts in draws.items()}


def bootstrap_means(
    values: Mapping[str, np.ndarray],
    users: Sequence | np.ndarray | pd.Series,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """The mean of each per-row array in `values` with its user-level percentile interval."""
    first = next(iter(values.values()))
    codes = group_codes(users, len(first))
    draws = _resampled_means(values, codes, n_resamples, seed)
    return {
        name: interval_from_draws(float(np.mean(v)), draws[name], confidence)
        for name, v in values.items()
    }


def paired_mean_differences(
    values_a: Mapping[str, np.ndarray],
    values_b: Mapping[str, np.ndarray],
    users: Sequence | np.ndarray | pd.Series,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, PairedDifference]:
    """mean(a) - mean(b) per metric, both on the same resampled users: the mean of the per-row
    differences, since both methods rank the same rows."""
    differences = {name: values_a[name] - values_b[name] for name in values_a}
    codes = group_codes(users, len(next(iter(differences.values()))))
    draws = _resampled_means(differences, codes, n_resamples, seed)
    return {
        name: paired_difference(name, float(np.mean(d)), draws[name], confidence)
        for name, d in differences.items()
    }
