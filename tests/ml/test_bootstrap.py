"""User-level bootstrap intervals, paired differences and calibration, checked against
scikit-learn and against cases whose answer is known."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from ml.evaluation import (
    bootstrap_metrics,
    evaluate,
    expected_calibration_error,
    fit_calibrator,
    paired_differences,
)
from ml.evaluation.bootstrap import weighted_metrics
from ml.evaluation.comparison import evaluate_window, segment_masks, segment_table


def repeated_users(
    n_users: int = 600, cutoffs: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and user ids of users seen at several cutoffs. As in the warehouse, where
    daily cutoffs have overlapping label windows, one purchase labels several of a user's rows:
    a user's rows mostly share one label; the score knows each user's propensity noisily."""
    rng = np.random.default_rng(seed)
    propensity = rng.beta(0.4, 6.0, n_users)
    users = np.repeat(np.arange(n_users), cutoffs)
    user_label = rng.random(n_users) < propensity
    own_label = rng.random(len(users)) < propensity[users]
    y = np.where(rng.random(len(users)) < 0.8, user_label[users], own_label).astype(np.int64)
    scores = np.clip(propensity[users] + rng.normal(0, 0.03, len(users)), 0.001, 0.999)
    return y, scores, users


def test_weighted_metrics_equal_scikit_learn_with_sample_weights() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.1).astype(np.int64)
    scores = np.round(np.clip(0.1 + 0.3 * y + rng.normal(0, 0.2, 500), 0.01, 0.99), 2)  # ties
    weights = rng.integers(0, 4, size=(5, 500)).astype(float)
    values = weighted_metrics(weights, y, scores)
    for row, w in enumerate(weights):
        assert values["pr_auc"][row] == pytest.approx(
            average_precision_score(y, scores, sample_weight=w), abs=1e-12
        )
        assert values["roc_auc"][row] == pytest.approx(
            roc_auc_score(y, scores, sample_weight=w), abs=1e-12
        )
        assert values["log_loss"][row] == pytest.approx(
            log_loss(y, scores, sample_weight=w), abs=1e-12
        )
        assert values["brier"][row] == pytest.approx(
            brier_score_loss(y, scores, sample_weight=w), abs=1e-12
        )


def test_unit_weights_give_the_point_metrics_of_evaluate() -> None:
    y, scores, _ = repeated_users()
    values = weighted_metrics(np.ones((1, len(y))), y, scores, top_k_fraction=0.1)
    point = evaluate(y, scores, threshold=0.5, top_k_fraction=0.1)
    for name in ("pr_auc", "roc_auc", "log_loss", "brier", "precision_at_k", "lift_at_k"):
        assert values[name][0] == pytest.approx(point[name], abs=1e-12), name


def test_user_resampling_is_wider_than_row_resampling_when_users_repeat() -> None:
    y, scores, users = repeated_users()
    by_user = bootstrap_metrics(y, scores, users, n_resamples=400, seed=1)
    by_row = bootstrap_metrics(y, scores, None, n_resamples=400, seed=1)
    for name in ("pr_auc", "log_loss"):
        user_width = by_user[name].high - by_user[name].low
        row_width = by_row[name].high - by_row[name].low
        assert user_width > 1.5 * row_width, (name, user_width, row_width)
        assert by_user[name].low < by_user[name].estimate < by_user[name].high


def test_intervals_are_reproducible_for_a_seed() -> None:
    y, scores, users = repeated_users(n_users=200)
    first = bootstrap_metrics(y, scores, users, n_resamples=200, seed=7)
    again = bootstrap_metrics(y, scores, users, n_resamples=200, seed=7)
    other = bootstrap_metrics(y, scores, users, n_resamples=200, seed=8)
    assert first == again
    assert first["pr_auc"] != other["pr_auc"]


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    y, scores, users = repeated_users(n_users=200)
    difference = paired_differences(y, scores, scores, users, n_resamples=200)["pr_auc"]
    assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert difference.p_positive == 0.0


def test_paired_difference_finds_a_clear_gain_and_not_a_noisy_tie() -> None:
    y, scores, users = repeated_users()
    rng = np.random.default_rng(5)
    worse = np.clip(scores + rng.normal(0, 0.15, len(scores)), 0.001, 0.999)
    gain = paired_differences(y, scores, worse, users, n_resamples=500)["pr_auc"]
    assert gain.lower_bound > 0.02
    assert gain.p_positive > 0.99
    # Two equally good but differently noisy scores: the interval straddles zero.
    twin_a = np.clip(scores + rng.normal(0, 0.02, len(scores)), 0.001, 0.999)
    twin_b = np.clip(scores + rng.normal(0, 0.02, len(scores)), 0.001, 0.999)
    tie = paired_differences(y, twin_a, twin_b, users, n_resamples=500)["pr_auc"]
    assert tie.low < 0 < tie.high
    assert tie.lower_bound < 0
    # The paired interval is far narrower than the two separate intervals.
    separate = bootstrap_metrics(y, twin_a, users, n_resamples=500)["pr_auc"]
    assert tie.high - tie.low < 0.5 * (separate.high - separate.low)


def test_sigmoid_calibration_keeps_the_ranking_and_fixes_inflated_scores() -> None:
    y, scores, _ = repeated_users(n_users=2_000, cutoffs=2)
    # What undersampling does: the odds of every score multiplied by 5.
    odds = scores / (1 - scores) * 5
    inflated = odds / (1 + odds)
    half = len(y) // 2
    calibrator = fit_calibrator(inflated[:half], y[:half], "sigmoid")
    calibrated = calibrator.apply(inflated[half:])
    assert np.array_equal(np.argsort(calibrated), np.argsort(inflated[half:]))
    before = expected_calibration_error(y[half:], inflated[half:])
    after = expected_calibration_error(y[half:], calibrated)
    assert after < before / 3
    assert calibrated.mean() == pytest.approx(y[half:].mean(), abs=0.01)


def test_isotonic_calibration_round_trips_through_a_dict() -> None:
    y, scores, _ = repeated_users(n_users=500, cutoffs=2)
    calibrator = fit_calibrator(scores, y, "isotonic")
    again = type(calibrator).from_dict(calibrator.to_dict())
    assert np.array_equal(again.apply(scores), calibrator.apply(scores))
    assert np.all(np.diff(calibrator.apply(np.sort(scores))) >= 0)


def test_window_evaluation_and_segments() -> None:
    y, scores, users = repeated_users(n_users=400)
    rng = np.random.default_rng(2)
    noisy = np.clip(scores + rng.normal(0, 0.1, len(scores)), 0.001, 0.999)
    evaluation = evaluate_window(
        y,
        {"model": scores, "noisy": noisy},
        users,
        thresholds={"model": 0.2, "noisy": 0.2},
        reference="model",
        n_resamples=200,
    )
    table = evaluation.table()
    assert list(table["model"]) == ["model", "noisy"]
    assert (table["pr_auc_low"] <= table["pr_auc"]).all()
    assert evaluation.differences["noisy"].lower_bound > 0
    assert "noisy" in evaluation.markdown() and "[" in evaluation.markdown()

    features = pd.DataFrame(
        {
            "events_lookback": rng.choice([1, 5, 40], len(y), p=[0.05, 0.45, 0.5]),
            "hours_since_first_event": rng.uniform(0, 600, len(y)),
        }
    )
    masks = segment_masks(features, timedelta(days=7))
    assert list(masks) == [
        "1-2 events",
        "3-9 events",
        "10+ events",
        "first seen within the horizon",
    ]
    table = segment_table(y, {"model": scores}, users, masks, n_resamples=100, min_buyers=30)
    by_segment = table.set_index("segment")
    small = by_segment.loc["1-2 events"]
    assert small["buyers"] < 30
    assert small["model"].startswith("cannot be read")
    assert by_segment.loc["10+ events", "model"].count("[") == 1
