"""Data and model monitoring as plain computations: label rate, feature drift (PSI), nulls in key
features, the score distribution and the freshness of raw events.

Why here and not in the Dagster checks: a notebook, a CLI or a test can call the same rules on any
frame; the checks in orchestration/defs/checks.py only read the warehouse and report the outcome.
Each rule returns a CheckOutcome whose message says what was found against what was expected, so a
failed check in the UI tells the reader what to look at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

# A purchase within the horizon by a user active in the lookback: below 0.1 % the labels are
# almost certainly broken (no purchases ingested), above 50 % purchases are not the rare event
# the models and the resampling assume.
LABEL_RATE_BAND = (0.001, 0.5)
# Population stability index: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a shift worth a look.
PSI_WARN_THRESHOLD = 0.2
PSI_BINS = 10
# Features every row must have: counts over the windows and the recency of the last event (a
# user_features row exists only for users with an event in the lookback, so none may be NULL).
KEY_FEATURES = (
    "events_1d",
    "events_7d",
    "events_lookback",
    "views_lookback",
    "carts_lookback",
    "purchases_lookback",
    "sessions_lookback",
    "active_days_lookback",
    "hours_since_last_event",
)
# Features that grow with the calendar by design (how long the data or the user has existed):
# the scoring cutoff is always later than the training cutoffs, so their PSI is large on healthy
# data. The drift check leaves them out.
CLOCK_FEATURES = ("days_of_history", "hours_since_first_event")
# Scores are probabilities of a rare event: a mean above one half (or a constant score) says the
# model or its input is broken even when every single value is a valid probability.
MEAN_SCORE_BAND = (1e-4, 0.5)
# The nightly run reads the previous day: its newest event is at most a day and some slack old.
FRESHNESS_MAX_LAG = timedelta(hours=36)


@dataclass(frozen=True)
class CheckOutcome:
    """Whether a rule held, a one-line message for people, and figures for metadata."""

    passed: bool
    message: str
    metadata: dict[str, float | int | str] = field(default_factory=dict)


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of `actual` against `expected` (e.g. scoring vs training).

    Bins are quantiles of `expected` (duplicate edges merged, so count features with many zeros
    get fewer, wider bins); missing values form a bin of their own, since a feature that starts
    being NULL is drift too. Empty bins get a small floor so the logarithm stays finite.
    """
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    if len(expected) == 0 or len(actual) == 0:
        raise ValueError("PSI needs values on both sides")
    known = expected[~np.isnan(expected)]
    if len(known):
        inner = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1]))
    else:
        inner = np.array([])

    def shares(values: np.ndarray) -> np.ndarray:
        nan = np.isnan(values)
        counts = np.bincount(
            np.searchsorted(inner, values[~nan], side="right"), minlength=len(inner) + 1
        )
        return np.append(counts, nan.sum()) / len(values)

    floor = 1e-4
    e, a = np.maximum(shares(expected), floor), np.maximum(shares(actual), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str] | None = None
) -> dict[str, float]:
    """PSI per feature of `current` (the scoring window) against `reference` (training)."""
    columns = list(columns if columns is not None else reference.columns)
    return {
        column: psi(reference[column].to_numpy(float), current[column].to_numpy(float))
        for column in columns
    }


def check_drift(
    psi_by_feature: Mapping[str, float], threshold: float = PSI_WARN_THRESHOLD
) -> CheckOutcome:
    """Passes when no feature's PSI exceeds the threshold; the message names the worst ones."""
    drifted = sorted(
        ((name, value) for name, value in psi_by_feature.items() if value > threshold),
        key=lambda item: -item[1],
    )
    worst = max(psi_by_feature.values(), default=0.0)
    metadata: dict[str, float | int | str] = {
        "max_psi": worst,
        "features_above_threshold": len(drifted),
        "threshold": threshold,
    }
    if not drifted:
        return CheckOutcome(
            True, f"No feature drifted: max PSI {worst:.3f} <= {threshold}", metadata
        )
    listed = ", ".join(f"{name} {value:.2f}" for name, value in drifted[:5])
    more = f" and {len(drifted) - 5} more" if len(drifted) > 5 else ""
    return CheckOutcome(
        False,
        f"{len(drifted)} feature(s) drifted between the training and the scoring window "
        f"(PSI > {threshold}): {listed}{more}",
        metadata,
    )


def check_label_rate(
    labels: np.ndarray, band: tuple[float, float] = LABEL_RATE_BAND
) -> CheckOutcome:
    """The share of positive labels (rows whose horizon is complete) lies within `band`."""
    labels = np.asarray(labels, dtype=float)
    low, high = band
    if len(labels) == 0:
        return CheckOutcome(False, "No labels with a complete horizon to check", {"rows": 0})
    rate = float(labels.mean())
    metadata: dict[str, float | int | str] = {
        "label_rate": rate,
        "rows": len(labels),
        "band_low": low,
        "band_high": high,
    }
    if low <= rate <= high:
        return CheckOutcome(True, f"Label rate {rate:.2%} within [{low:.2%}, {high:.2%}]", metadata)
    hint = "are purchases missing from the raw events?" if rate < low else "are labels inverted?"
    return CheckOutcome(
        False,
        f"Label rate {rate:.2%} outside the plausible band [{low:.2%}, {high:.2%}]: {hint}",
        metadata,
    )


def check_no_nulls(null_counts: Mapping[str, int], n_rows: int) -> CheckOutcome:
    """No key feature has a NULL (a missing count means a broken join, not a quiet user)."""
    with_nulls = {name: count for name, count in null_counts.items() if count > 0}
    metadata: dict[str, float | int | str] = {
        "rows": n_rows,
        **{k: v for k, v in with_nulls.items()},
    }
    if n_rows == 0:
        return CheckOutcome(False, "No feature rows to check", metadata)
    if not with_nulls:
        return CheckOutcome(True, f"No NULL in {len(null_counts)} key features", metadata)
    listed = ", ".join(
        f"{name} ({count:,} of {n_rows:,} rows)" for name, count in with_nulls.items()
    )
    return CheckOutcome(False, f"NULL in key features: {listed}", metadata)


def check_score_distribution(
    scores: np.ndarray, mean_band: tuple[float, float] = MEAN_SCORE_BAND
) -> CheckOutcome:
    """Scores are finite probabilities, not all alike, with a mean in `mean_band`."""
    scores = np.asarray(scores, dtype=float)
    if len(scores) == 0:
        return CheckOutcome(False, "No scores written", {"users_scored": 0})
    finite = scores[np.isfinite(scores)]
    metadata: dict[str, float | int | str] = {
        "users_scored": len(scores),
        "non_finite": int(len(scores) - len(finite)),
        "out_of_range": int(((finite < 0) | (finite > 1)).sum()),
        "mean": float(finite.mean()) if len(finite) else float("nan"),
        "std": float(finite.std()) if len(finite) else float("nan"),
        "p50": float(np.quantile(finite, 0.5)) if len(finite) else float("nan"),
        "p99": float(np.quantile(finite, 0.99)) if len(finite) else float("nan"),
    }
    problems = []
    if metadata["non_finite"]:
        problems.append(f"{metadata['non_finite']} scores are NaN or infinite")
    if metadata["out_of_range"]:
        problems.append(f"{metadata['out_of_range']} scores lie outside [0, 1]")
    if len(finite) and (len(np.unique(finite)) < 2 or float(finite.std()) < 1e-6):
        problems.append(f"every score is {finite[0]:.4f}: the model ranks nobody")
    low, high = mean_band
    if len(finite) and not low <= metadata["mean"] <= high:
        problems.append(f"mean score {metadata['mean']:.4f} outside [{low:g}, {high:g}]")
    if problems:
        return CheckOutcome(False, "Implausible scores: " + "; ".join(problems), metadata)
    return CheckOutcome(
        True,
        f"{len(scores):,} scores in [0, 1], mean {metadata['mean']:.4f}, std {metadata['std']:.4f}",
        metadata,
    )


def check_freshness(
    last_event: datetime | None, reference: datetime, max_lag: timedelta = FRESHNESS_MAX_LAG
) -> CheckOutcome:
    """The newest raw event is at most `max_lag` older than `reference` (the run's cutoff, or
    now). Both are naive UTC, as the warehouse stores them."""
    metadata: dict[str, float | int | str] = {
        "reference_time": reference.isoformat(),
        "max_lag_hours": max_lag.total_seconds() / 3600,
    }
    if last_event is None:
        return CheckOutcome(False, "No raw events at all", metadata)
    lag = reference - last_event
    metadata |= {"last_event": last_event.isoformat(), "lag_hours": lag.total_seconds() / 3600}
    if lag <= max_lag:
        return CheckOutcome(
            True, f"Newest event {last_event} is {_hours(lag)} before {reference}", metadata
        )
    return CheckOutcome(
        False,
        f"Raw events are stale: newest {last_event} is {_hours(lag)} before {reference} "
        f"(allowed {_hours(max_lag)}); has the landing folder stopped receiving files?",
        metadata,
    )


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


# A day with events separated from the data's dense span by at least this many empty days is
# stray: one stray event two months before the rest stretched a real file's cutoff grid to 84
# days. A separated group of days holding more than STRAY_MAX_SHARE of the events is a second
# block of data (a gap in the data, another question), not a few strays.
STRAY_GAP_DAYS = 7
STRAY_MAX_SHARE = 0.01


def check_stray_events(
    events_per_day: Mapping[date, int],
    min_gap_days: int = STRAY_GAP_DAYS,
    max_share: float = STRAY_MAX_SHARE,
) -> CheckOutcome:
    """No few events lie far outside the data's dense span, where they stretch the cutoff grid.

    Days with events are grouped: a run of at least `min_gap_days` empty days starts a new
    group. The group with the most events is the dense span; any other group with at most
    `max_share` of the events is stray. Strays before the dense span call for the dbt var
    data_start, strays after it for as_of (events from then on are left out).
    """
    days = sorted((day, count) for day, count in events_per_day.items() if count > 0)
    if not days:
        return CheckOutcome(True, "No events to check", {"stray_events": 0})
    groups: list[list[tuple[date, int]]] = [[days[0]]]
    for day, count in days[1:]:
        if (day - groups[-1][-1][0]).days - 1 >= min_gap_days:
            groups.append([])
        groups[-1].append((day, count))
    total = sum(count for _, count in days)
    dense = max(groups, key=lambda group: sum(count for _, count in group))
    start, end = dense[0][0], dense[-1][0]
    strays = [
        group
        for group in groups
        if group is not dense and sum(count for _, count in group) <= max_share * total
    ]
    before = [(day, n) for group in strays if group[-1][0] < start for day, n in group]
    after = [(day, n) for group in strays if group[0][0] > end for day, n in group]
    n_stray = sum(n for _, n in before + after)
    metadata: dict[str, float | int | str] = {
        "stray_events": n_stray,
        "stray_days": len(before) + len(after),
        "dense_span_start": start.isoformat(),
        "dense_span_end": end.isoformat(),
        "events": total,
        "min_gap_days": min_gap_days,
    }
    if not n_stray:
        outside = total - sum(count for _, count in dense)
        elsewhere = (
            f"; the {outside:,} events outside it come in blocks of more than {max_share:.0%}"
            if outside
            else ""
        )
        return CheckOutcome(
            True,
            f"No stray events: the dense span {start} .. {end} holds {total - outside:,} of "
            f"{total:,} events{elsewhere}",
            metadata,
        )
    span = f"the dense span {start} .. {end}"
    problems = []
    if before:
        n, gap = sum(count for _, count in before), (start - before[-1][0]).days - 1
        problems.append(
            f"{n:,} stray event(s) on {_day_list([day for day, _ in before])}, {gap} empty days "
            f"before {span}, stretch the cutoff grid back to them: set the dbt var data_start "
            f"to '{start}' to start the grid later"
        )
    if after:
        n, gap = sum(count for _, count in after), (after[0][0] - end).days - 1
        problems.append(
            f"{n:,} stray event(s) on {_day_list([day for day, _ in after])}, {gap} empty days "
            f"after {span}, stretch the cutoff grid on to them: set the dbt var as_of to "
            f"'{end + timedelta(days=1)}' to end the grid there"
        )
    return CheckOutcome(False, "; ".join(problems), metadata)


def _day_list(days: Sequence[date], shown: int = 3) -> str:
    listed = ", ".join(str(day) for day in days[:shown])
    return listed + (f" and {len(days) - shown} more day(s)" if len(days) > shown else "")
