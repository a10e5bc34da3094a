"""Logistic regression stays sane on Taobao-shaped data, where it once scored a test log loss of
6.6, worse than the base rate.

The rows mimic what the pipeline builds from a Taobao UserBehavior file of 814 users and 9 days
(daily cutoffs, lookback 4 days, horizon 1 day). Its traits: heavy-tailed counts (a few
crawler-like users browse 60 times as much), few buyers, hours-since columns that are NULL for
"never", no prices (all-NULL columns), no removes (constant columns), a column that is NULL in
training and filled later, and above all events_previous_7d: the file is too short for it except
for three users with stray events days before the file, so it is non-zero on a handful of
training rows and on most rows of the last cutoff. Standard scaling put those rows 10^5 standard
deviations out.

The failure is now also reproduced end to end:
test_logistic_regression_beats_the_base_rate_on_a_taobao_file_end_to_end writes such a file as
a headerless UserBehavior CSV (the 9 full days, then a tenth that stops at 16:00 local time, so
that cutoff 8, the first where events_previous_7d is common, has a complete label window),
ingests it, builds the warehouse with the real dbt CLI on the shop's local day (Asia/Shanghai)
and fits the baseline on the roles of time the pipeline picks. On that file a plain
standard-scaled logistic regression (C = 1, no log scale, no clipping) scores a promotion log
loss of 0.35 against the base rate's 0.18, with events_previous_7d 3,000 standard deviations out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, log_loss

from ml.baselines import base_rate_scores, fit_logistic_regression
from ml.data.ingest import ingest_file
from ml.data.taobao_sample import (
    DAYS,
    EXPORT_STOPS_AFTER,
    FIRST_DAY,
    draw_daily_counts,
    write_taobao_file,
)
from ml.dataset import load_cutoffs, load_labeled_features
from ml.splits import choose_time_split, split_by_time
from tests.conftest import query, run_dbt

LOOKBACK = 4
TRAIN_CUTOFFS = range(1, 7)  # label windows end by the first held-out cutoff
HELD_OUT_CUTOFFS = (7, 8)
LABEL = "purchased"

# The end-to-end test: a UserBehavior file starting on the real file's first day, in the shop's
# local time (Asia/Shanghai, UTC+8 all year), that stops at 16:00 on the day after the DAYS full
# days, as an export taken in the afternoon would.
INGEST_TIME = datetime(2017, 12, 10, tzinfo=UTC)
DBT_VARS = {
    "cutoff_step": "1 day",
    "lookback": f"{LOOKBACK} days",
    "horizon": "1 day",
    "timezone": "Asia/Shanghai",
}

pytestmark = pytest.mark.filterwarnings(
    # The all-NULL price columns: SimpleImputer says it drops them, which is what we want.
    "ignore:Skipping features without any observed values:UserWarning"
)


def taobao_shaped_rows(seed: int, n_users: int = 814) -> pd.DataFrame:
    """One row per (user, cutoff) for users seen in the lookback, with features named as in
    marts.user_features and the label; `cutoff` k is the start of day k."""
    rng = np.random.default_rng(seed)
    events, views, carts, wishlists, purchases = draw_daily_counts(rng, n_users, DAYS)
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


def local_day_start(day: int) -> datetime:
    """The start of local day `day` (0 = FIRST_DAY) as the warehouse stores it: naive UTC."""
    return (FIRST_DAY + timedelta(days=day)).astimezone(UTC).replace(tzinfo=None)


def test_logistic_regression_beats_the_base_rate_on_a_taobao_file_end_to_end(
    tmp_path: Path,
) -> None:
    """The real ingestion and dbt build on a Taobao-shaped file, then the pipeline's roles of
    time: the baseline must beat the base rate on the promotion cutoffs, whose last one is the
    first where events_previous_7d is common."""
    path = write_taobao_file(tmp_path / "UserBehavior.csv", seed=0)
    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    try:
        report = ingest_file(con, path, "taobao", INGEST_TIME)
    finally:
        con.close()
    lines = len(path.read_text().splitlines())
    assert report.rows_read == lines == report.accepted + report.quarantined
    assert report.quarantined == 0 and report.duplicates == 0

    run_dbt(warehouse, "build", dbt_vars=DBT_VARS)

    # data_end defaults to the newest event: just before 16:00 local on the last day, so that
    # day's cutoff has no complete label window although a cutoff (the scoring one) follows it.
    cutoffs = load_cutoffs(warehouse)
    by_time = cutoffs.set_index("cutoff_time")
    stopped_day = local_day_start(DAYS)
    data_end = by_time["data_end"].iloc[0]
    assert stopped_day + EXPORT_STOPS_AFTER - timedelta(minutes=5) < data_end
    assert data_end < stopped_day + EXPORT_STOPS_AFTER
    assert by_time.loc[local_day_start(DAYS - 1), "horizon_complete"]
    assert not by_time.loc[stopped_day, "horizon_complete"]
    assert by_time.loc[local_day_start(DAYS + 1), "is_latest"]
    label_windows = query(
        warehouse,
        "select cutoff_time, bool_or(horizon_complete), bool_and(horizon_complete) "
        "from marts.labels where cutoff_time >= "
        f"'{local_day_start(DAYS - 1)}' group by 1 order by 1",
    )
    assert label_windows == [
        (local_day_start(DAYS - 1), True, True),
        (stopped_day, False, False),
        (local_day_start(DAYS + 1), False, False),
    ]

    # The defaults (3 validation, 3 promotion cutoffs) fit: the 9 full days hold cutoffs 1 to 8
    # with a complete label window. Promotion ends with cutoff 8, the first whose
    # events_previous_7d (days -6 to 0) reaches into the file. The stray events also stretch the
    # grid back before the file, so even cutoff 1 counts as having a complete lookback (no
    # history warning); train holds cutoffs 1 and 2 and, before them, the stray users' rows.
    split = choose_time_split(cutoffs)
    assert split.promotion_cutoffs == tuple(local_day_start(day) for day in (6, 7, 8))
    assert split.validation_cutoffs == tuple(local_day_start(day) for day in (3, 4, 5))
    assert split.train_cutoffs[-1] == local_day_start(2)
    roles = [*split.train_cutoffs, *split.validation_cutoffs, *split.promotion_cutoffs]
    data = split_by_time(load_labeled_features(warehouse, cutoffs=roles), split)
    train, promotion = data.X_train, data.X_promotion
    y_train, y_promotion = data.y_train, data.y_promotion

    # The traits that broke the old model, as the warehouse built them.
    assert 0 < (train["events_previous_7d"] > 0).mean() < 0.01
    assert (promotion["events_previous_7d"] > 0).mean() > 0.15
    assert train["events_7d"].max() > 50 * train["events_7d"].median()
    assert train["avg_view_price"].isna().all() and (train["removes_7d"] == 0).all()
    assert 0.02 < y_train.mean() < 0.08 and 0.02 < y_promotion.mean() < 0.08

    model = fit_logistic_regression(train, y_train)
    scores = model.predict_proba(promotion)[:, 1]

    base_rate = base_rate_scores(y_train, len(y_promotion))
    assert log_loss(y_promotion, scores) <= log_loss(y_promotion, base_rate)
    assert average_precision_score(y_promotion, scores) > y_promotion.mean()
    assert scores.min() > 1e-4 and scores.max() < 1 - 1e-4
