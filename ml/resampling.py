"""Rebalance the training split, where buyers are a few percent of the rows.

Apply this to the training split only. Validation and test must keep the class ratio the
model will meet when it scores real users; resampling them would make precision, PR-AUC,
calibration and the chosen threshold describe a shop that does not exist.

`target_ratio` is positives / negatives after resampling (imbalanced-learn's float
`sampling_strategy`): 0.5 means one buyer for every two non-buyers. When the data already has
at least that ratio it is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE, RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from sklearn.neighbors import NearestNeighbors

STRATEGIES = ("none", "class_weight", "random_under", "random_over", "smote")
SMOTE_NEIGHBORS = 5  # imbalanced-learn's default, lowered when there are fewer positives


@dataclass(frozen=True)
class Resampled:
    """The training rows to fit on. `sample_weight` is set by the class_weight strategy only."""

    X: pd.DataFrame
    y: np.ndarray
    sample_weight: np.ndarray | None
    strategy: str
    target_ratio: float
    counts_before: dict[int, int]
    counts_after: dict[int, int]


def class_counts(y: np.ndarray) -> dict[int, int]:
    """Rows per class, both classes always present as keys."""
    y = np.asarray(y)
    return {0: int(np.sum(y == 0)), 1: int(np.sum(y == 1))}


def resample_training(
    X: pd.DataFrame, y: np.ndarray, strategy: str, target_ratio: float = 0.5, seed: int = 0
) -> Resampled:
    """Rebalance training rows with one of STRATEGIES (training split only, see module doc).

    none: rows as they are. class_weight: rows as they are, plus sample weights that give the
    positives a total weight of target_ratio * n_negatives. random_under: drop negatives.
    random_over: repeat positives. smote: add synthetic positives between neighbouring ones.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown resampling strategy {strategy!r}; choose one of {STRATEGIES}.")
    if not 0 < target_ratio <= 1:
        raise ValueError(
            f"target_ratio is positives / negatives and must be in (0, 1], got {target_ratio}."
        )
    y = np.asarray(y).astype(np.int64)
    before = class_counts(y)
    n_negative, n_positive = before[0], before[1]
    if n_positive == 0 or n_negative == 0:
        raise ValueError(f"Resampling needs both classes in the training rows, got {before}.")

    def result(X_out: pd.DataFrame, y_out: np.ndarray, weight: np.ndarray | None) -> Resampled:
        return Resampled(
            X=X_out.reset_index(drop=True),
            y=np.asarray(y_out).astype(np.int64),
            sample_weight=weight,
            strategy=strategy,
            target_ratio=target_ratio,
            counts_before=before,
            counts_after=class_counts(y_out),
        )

    # Met when reaching the ratio would add fewer than one positive (imbalanced-learn rounds the
    # same way, and raises "required to remove samples" for a ratio a fraction above the data's).
    already_balanced = n_positive >= int(target_ratio * n_negative)
    if strategy == "none":
        return result(X, y, None)
    if strategy == "class_weight":
        weight = np.ones(len(y))
        if not already_balanced:
            weight[y == 1] = target_ratio * n_negative / n_positive
        return result(X, y, weight)
    if already_balanced:
        return result(X, y, None)
    if strategy == "random_under":
        sampler = RandomUnderSampler(sampling_strategy=target_ratio, random_state=seed)
        X_out, y_out = sampler.fit_resample(X, y)
        return result(X_out, y_out, None)
    if strategy == "random_over":
        sampler = RandomOverSampler(sampling_strategy=target_ratio, random_state=seed)
        X_out, y_out = sampler.fit_resample(X, y)
        return result(X_out, y_out, None)
    X_out, y_out = _smote_with_missing_values(X, y, target_ratio, seed)
    return result(X_out, y_out, None)


def _smote_with_missing_values(
    X: pd.DataFrame, y: np.ndarray, target_ratio: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """SMOTE on features that contain NaN, which imbalanced-learn's SMOTE rejects.

    NaN means something here (e.g. "never carted" for hours_since_last_cart), so the real rows
    keep their NaN. Only to place the synthetic positives, NaN is filled with the positives'
    median of that column (0 where a column has no value at all). Each synthetic row then gets
    back NaN wherever its nearest real positive row has NaN, so a synthetic buyer made mostly
    from a buyer who never carted has not carted either.
    """
    n_positive = int(np.sum(y == 1))
    if n_positive < 2:
        raise ValueError("SMOTE needs at least 2 positive rows to interpolate between.")
    positives = X[y == 1]
    fill_values = positives.median().fillna(0.0)
    X_filled = X.fillna(fill_values)

    smote = SMOTE(
        sampling_strategy=target_ratio,
        k_neighbors=min(SMOTE_NEIGHBORS, n_positive - 1),
        random_state=seed,
    )
    X_smote, y_smote = smote.fit_resample(X_filled, y)
    # imbalanced-learn returns the original rows first, in order, then the synthetic ones.
    synthetic = X_smote.iloc[len(X) :].reset_index(drop=True)
    if len(synthetic):
        nearest = NearestNeighbors(n_neighbors=1).fit(positives.fillna(fill_values).to_numpy())
        _, index = nearest.kneighbors(synthetic.to_numpy())
        missing = positives.isna().to_numpy()[index[:, 0]]
        synthetic = synthetic.mask(missing)
    X_out = pd.concat([X.reset_index(drop=True), synthetic], ignore_index=True)
    return X_out, np.asarray(y_smote)
