"""Baselines any trained model has to beat to be worth running.

* The base rate: every user gets the training share of buyers. It ranks nobody above anybody,
  so its PR-AUC equals the share of buyers; a model that does no better has learned nothing.
* A recency-frequency heuristic: what a shop would do without machine learning, "users who
  were here lately, carted lately and come often buy". A model must beat it to earn its cost.
* Logistic regression: the simplest learned model. When a boosted tree model only ties with
  it, the simpler model is the better choice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# The heuristic's fixed settings, chosen by reasoning about shoppers rather than fitted, so the
# heuristic can never overfit: (column, half-life in hours or half-saturation count, weight).
RECENCY_TERMS = (
    ("hours_since_last_cart", 48.0, 0.35),  # a cart in the last two days is a strong intent
    ("hours_since_last_event", 72.0, 0.20),  # any visit in the last three days
)
FREQUENCY_TERMS = (
    ("carts_7d", 2.0, 0.25),  # two cart adds in a week count as half of "a lot"
    ("events_7d", 20.0, 0.10),
    ("sessions_lookback", 5.0, 0.10),
)
HEURISTIC_COLUMNS = tuple(name for name, _, _ in RECENCY_TERMS + FREQUENCY_TERMS)


def base_rate_scores(y_train: np.ndarray, n_rows: int) -> np.ndarray:
    """The training share of positives for every one of `n_rows` rows."""
    return np.full(n_rows, float(np.mean(y_train)))


def recency_frequency_scores(X: pd.DataFrame) -> np.ndarray:
    """A fixed, unfitted score in [0, 1] from recency and frequency.

    Why: recency and frequency are the classic signals of who buys next (RFM marketing), and
    they need no training data, so this is the bar a shop could reach without a model. Each
    recency term is 0.5 ** (hours / half_life), 1 for "just now" and 0 for "never" (NaN). Each
    frequency term is count / (count + half_saturation), 0 for none and towards 1 for many. The
    score is their weighted sum; the weights add up to 1.
    """
    missing = [column for column in HEURISTIC_COLUMNS if column not in X.columns]
    if missing:
        raise KeyError(f"The recency-frequency heuristic needs the columns {missing}.")
    score = np.zeros(len(X))
    for column, half_life_hours, weight in RECENCY_TERMS:
        hours = X[column].to_numpy(dtype=float).clip(min=0.0)
        recency = np.nan_to_num(0.5 ** (hours / half_life_hours), nan=0.0)
        score += weight * recency
    for column, half_saturation, weight in FREQUENCY_TERMS:
        count = np.nan_to_num(X[column].to_numpy(dtype=float), nan=0.0).clip(min=0.0)
        score += weight * count / (count + half_saturation)
    return score.clip(0.0, 1.0)


def fit_logistic_regression(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
) -> Pipeline:
    """Median imputation with missing-value indicators (a NULL such as "never carted" carries
    information), standard scaling, logistic regression. Score with `.predict_proba(X)[:, 1]`."""
    pipeline = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", add_indicator=True)),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(max_iter=5_000, random_state=seed)),
        ]
    )
    pipeline.fit(X_train, np.asarray(y_train), model__sample_weight=sample_weight)
    return pipeline
