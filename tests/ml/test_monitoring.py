"""The monitoring rules on frames made to break them: each fails with a message that names the
problem, and passes on healthy data."""

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ml.monitoring import (
    check_drift,
    check_freshness,
    check_label_rate,
    check_no_nulls,
    check_score_distribution,
    feature_psi,
    psi,
)


def test_psi_is_near_zero_for_the_same_population_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    assert psi(reference, rng.normal(size=5_000)) < 0.02
    assert psi(reference, rng.normal(loc=1.0, size=5_000)) > 0.2


def test_psi_handles_count_features_and_counts_a_new_null_share_as_drift() -> None:
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.3, 10_000).astype(float)  # mostly zeros: duplicate quantile edges
    assert psi(counts, rng.poisson(0.3, 3_000).astype(float)) < 0.02
    with_nulls = rng.poisson(0.3, 3_000).astype(float)
    with_nulls[:1_000] = np.nan
    assert psi(counts, with_nulls) > 0.2


def test_drift_check_warns_with_the_drifted_features_named() -> None:
    rng = np.random.default_rng(2)
    train = pd.DataFrame({"stable": rng.normal(size=5000), "moved": rng.normal(size=5000)})
    scoring = pd.DataFrame({"stable": rng.normal(size=2000), "moved": rng.normal(3, 1, 2000)})
    outcome = check_drift(feature_psi(train, scoring))
    assert not outcome.passed
    assert "moved" in outcome.message and "stable" not in outcome.message
    assert outcome.metadata["features_above_threshold"] == 1
    assert check_drift(feature_psi(train, train.sample(frac=0.5, random_state=0))).passed


@pytest.mark.parametrize(
    ("labels", "hint"),
    [(np.zeros(10_000), "purchases missing"), (np.ones(10_000), "inverted")],
)
def test_label_rate_outside_the_band_fails(labels: np.ndarray, hint: str) -> None:
    outcome = check_label_rate(labels)
    assert not outcome.passed and hint in outcome.message
    healthy = (np.random.default_rng(3).random(10_000) < 0.03).astype(int)
    assert check_label_rate(healthy).passed


def test_nulls_in_key_features_fail_with_counts() -> None:
    outcome = check_no_nulls({"events_7d": 12, "carts_lookback": 0}, n_rows=1000)
    assert not outcome.passed and "events_7d (12 of 1,000 rows)" in outcome.message
    assert check_no_nulls({"events_7d": 0}, n_rows=1000).passed
    assert not check_no_nulls({"events_7d": 0}, n_rows=0).passed


@pytest.mark.parametrize(
    ("scores", "problem"),
    [
        (np.full(500, 0.3), "ranks nobody"),
        (np.r_[np.linspace(0, 0.2, 499), np.nan], "NaN"),
        (np.r_[np.linspace(0, 0.2, 499), 1.5], "outside [0, 1]"),
        (np.linspace(0.6, 0.99, 500), "mean score"),
        (np.array([]), "No scores"),
    ],
)
def test_implausible_scores_fail(scores: np.ndarray, problem: str) -> None:
    outcome = check_score_distribution(scores)
    assert not outcome.passed and problem in outcome.message


def test_plausible_scores_pass() -> None:
    scores = np.random.default_rng(4).beta(0.5, 10, 2000)
    assert check_score_distribution(scores).passed


def test_stale_raw_events_fail_and_fresh_ones_pass() -> None:
    cutoff = datetime(2025, 10, 2)
    stale = check_freshness(cutoff - timedelta(days=3), cutoff)
    assert not stale.passed and "stale" in stale.message and "72.0 h" in stale.message
    assert check_freshness(cutoff - timedelta(minutes=5), cutoff).passed
    assert not check_freshness(None, cutoff).passed
