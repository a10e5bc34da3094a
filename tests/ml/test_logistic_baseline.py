"""Logistic regression stays sane on Taobao-shaped data, where it once scored a test log loss of
6.6, worse than the base rate.

The rows mimic what the pipeline builds from a Taobao UserBehavior file of 814 users and 9 days
(daily cutoffs, lookback 4 days, horizon 1 day); the same failure was reproduced by generating
such a file and running it through ingestion and dbt. Its traits: heavy-tailed counts (a few
crawler-like users browse 60 times as much), few buyers, hours-since columns that are NULL for
"never", no prices (all-NULL columns), no removes (constant columns), a column that is NULL in
training and filled later, and above all events_previous_7d: the file is too short for it except
for three users with stray events days before the file, so it is non-zero on a handful of
training rows and on most rows of the last cutoff. Standard scaling put those rows 10^5 standard
deviations out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss

from ml.baselines import fit_logistic_regression

DAYS = 9
LOOKBACK = 4
TRAIN_CUTOFFS = range(1, 7)  # label windows end by the first held-out cutoff
HELD_OUT_CUTOFFS = (7, 8)
LABEL = "purchased"

pytestmark = pytest.mark.filterwarnings(
    # The all-NULL price columns: SimpleImputer says it drops them, which is what we want.
    "ignore:Skipping features without any observed values:UserWarning"
)


def taobao_shaped_rows(seed: int, n_users: int = 814) -> pd.DataFrame:
    """One row per (user, cutoff) for users seen in the lookback, with features named as in
    marts.user_features and the label; `cutoff` k is the start of day k."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(np.log(8), 1.1, n_users)
    activity[rng.choice(n_users, 8, replace=False)] *= 60
    intent = rng.normal(size=n_users)
    active = rng.random((n_users, DAYS)) < rng.beta(2.0, 1.5, n_users)[:, None]
    events = np.where(active, rng.poisson(activity[:, None], (n_users, DAYS)) + 1, 0)
    carts = rng.binomial(events, rng.beta(1.2, 20, n_users)[:, None])
    wishlists = rng.binomial(events - carts, rng.beta(1, 30, n_users)[:, None])
    views = events - carts - wishlists
    # Buying follows yesterday's carts and the user's intent, saturating for heavy users.
    carts_before = np.pad(carts, ((0, 0), (1, 0)))[:, :DAYS]
    p_buy = 1 / (1 + np.exp(4.0 - 1.6 * np.log1p(carts_before) - 1.2 * intent[:, None]))
    purchases = (active & (rng.random((n_users, DAYS)) < np.minimum(p_buy, 0.7))).astype(int)
    stray_events = np.zeros(n_users)
    stray_events[rng.choice(n_users, 3, replace=False)] = 5.0

    def window(counts: np.ndarray, k: int, days: int) -> np.ndarray:
        return counts[:, max(0, k - days) : k].sum(axis=1).astype(float)

    def hours_since(counts: np.ndarray, k: int) -> np.ndarray:
        seen = counts[:, :k] > 0
        last = np.where(seen.any(axis=1), k - 1 - np.argmax(seen[:, ::-1], axis=1), -1)
        hours = 24.0 * (k - last) - rng.uniform(0, 24, n_users)
        return np.where(last >= 0, hours, np.nan)

    frames = []
    for k in range(1, DAYS):
        events_7d = window(events, k, 7)
        # Days k-14 .. k-8: before the file, except the stray events, until day 0 enters.
        previous_7d = stray_events + events[:, : max(0, k - 7)].sum(axis=1)
        both = events_7d + previous_7d
        trend = np.divide(
            events_7d - previous_7d, both, out=np.full(n_users, np.nan), where=both > 0
        )
        frame = pd.DataFrame(
            {
                "cutoff": k,
                **{
                    f"{name}_{suffix}": window(counts, k, days)
                    for suffix, days in (("1d", 1), ("7d", 7), ("lookback", LOOKBACK))
                    for name, counts in (
                        ("events", events),
                        ("views", views),
                        ("carts", carts),
                        ("purchases", purchases),
                        ("wishlists", wishlists),
                    )
                },
                "removes_7d": 0.0,
                "events_previous_7d": previous_7d,
                "active_days_lookback": window(events > 0, k, LOOKBACK),
                "hours_since_last_event": hours_since(events, k),
                "hours_since_last_cart": hours_since(carts, k),
                "hours_since_last_purchase": hours_since(purchases, k),
                "view_to_cart_ratio": window(carts, k, LOOKBACK)
                / np.maximum(window(views, k, LOOKBACK), 1),
                "activity_trend_7d": trend,
                "avg_view_price": np.nan,
                "max_cart_price": np.nan,
                # NULL in training, filled on later cutoffs (as if prices started to arrive).
                "avg_cart_price": rng.lognormal(4, 1.5, n_users) if k >= 7 else np.nan,
                LABEL: purchases[:, k],
            }
        )
        frames.append(frame[window(events, k, LOOKBACK) > 0])
    return pd.concat(frames, ignore_index=True)


def split(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    features = [c for c in rows.columns if c not in ("cutoff", LABEL)]
    return (
        rows[rows["cutoff"].isin(TRAIN_CUTOFFS)],
        rows[rows["cutoff"].isin(HELD_OUT_CUTOFFS)],
        features,
    )


def test_the_rows_have_the_traits_that_broke_the_old_model() -> None:
    """Guards the other test: without these traits it would prove nothing."""
    train, later, _ = split(taobao_shaped_rows(seed=0))
    assert 3_000 < len(train) < 5_000 and 0.02 < train[LABEL].mean() < 0.08
    assert (train["events_previous_7d"] > 0).mean() < 0.01
    assert (later["events_previous_7d"] > 0).mean() > 0.3
    assert train["events_7d"].max() > 50 * train["events_7d"].median()
    assert train["avg_cart_price"].isna().all() and later["avg_cart_price"].notna().all()
    assert train["hours_since_last_purchase"].isna().mean() > 0.5
    assert train["avg_view_price"].isna().all() and (train["removes_7d"] == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logistic_regression_is_no_worse_than_the_base_rate_on_later_rows(seed: int) -> None:
    train, later, features = split(taobao_shaped_rows(seed))
    y_train, y_later = train[LABEL].to_numpy(), later[LABEL].to_numpy()

    model = fit_logistic_regression(train[features], y_train)
    scores = model.predict_proba(later[features])[:, 1]

    base_rate = np.full(len(y_later), y_train.mean())
    assert log_loss(y_later, scores) <= log_loss(y_later, base_rate)
    assert average_precision_score(y_later, scores) > 1.5 * y_later.mean()
    # No row is scored as certain, so no single row can dominate the log loss.
    assert scores.min() > 1e-4 and scores.max() < 1 - 1e-4
