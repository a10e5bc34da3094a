"""The time split: which cutoffs train, validate and test, and that no label window leaks into
the next split. Cutoff tables are made by hand with the same rule as dbt's marts.cutoffs."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from ml.dataset import LabeledFeatures
from ml.splits import TimeSplit, choose_time_split, split_by_time

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
START = datetime(2025, 9, 2)


def make_cutoffs(
    n: int, step: timedelta, horizon: timedelta, start: datetime = START
) -> pd.DataFrame:
    """Like marts.cutoffs: a cutoff's horizon is complete when it ends at or before the last
    cutoff, which is the latest one."""
    times = [start + i * step for i in range(n)]
    return pd.DataFrame(
        {
            "cutoff_index": range(n),
            "cutoff_time": pd.to_datetime(times),
            "lookback_start": pd.to_datetime([t - 30 * DAY for t in times]),
            "horizon_end": pd.to_datetime([t + horizon for t in times]),
            "lookback_complete": False,
            "horizon_complete": [t + horizon <= times[-1] for t in times],
            "is_latest": [i == n - 1 for i in range(n)],
        }
    )


def assert_no_label_window_overlaps_the_next_split(split: TimeSplit) -> None:
    for cutoff in split.train_cutoffs:
        assert cutoff + split.horizon <= split.validation_cutoff
    assert split.validation_cutoff + split.horizon <= split.test_cutoff


def test_daily_cutoffs_with_a_seven_day_horizon() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)  # 2025-09-02 .. 2025-10-01

    split = choose_time_split(cutoffs)

    assert split.horizon == 7 * DAY
    assert split.test_cutoff == datetime(2025, 9, 24)  # 09-24 + 7 days = 10-01, the last cutoff
    assert split.validation_cutoff == datetime(2025, 9, 17)
    assert split.train_cutoffs == tuple(datetime(2025, 9, d) for d in range(2, 11))  # 09-02..09-10
    assert_no_label_window_overlaps_the_next_split(split)
    assert split.describe() == {
        "train_cutoffs": "2025-09-02T00:00:00 .. 2025-09-10T00:00:00",
        "n_train_cutoffs": "9",
        "validation_cutoff": "2025-09-17T00:00:00",
        "test_cutoff": "2025-09-24T00:00:00",
        "horizon": "7 days, 0:00:00",
    }


def test_hourly_cutoffs_with_a_six_hour_horizon() -> None:
    cutoffs = make_cutoffs(48, HOUR, 6 * HOUR)  # 2025-09-02 00:00 .. 2025-09-03 23:00

    split = choose_time_split(cutoffs)

    assert split.horizon == 6 * HOUR
    assert split.test_cutoff == datetime(2025, 9, 3, 17)
    assert split.validation_cutoff == datetime(2025, 9, 3, 11)
    assert split.train_cutoffs == tuple(START + i * HOUR for i in range(30))  # up to 09-03 05:00
    assert_no_label_window_overlaps_the_next_split(split)


def test_row_order_of_the_cutoffs_does_not_matter() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    shuffled = cutoffs.sample(frac=1.0, random_state=1)

    assert choose_time_split(shuffled) == choose_time_split(cutoffs)


def test_the_fewest_cutoffs_that_work_and_one_less() -> None:
    # Three horizons of 7 daily cutoffs plus one: a single training cutoff.
    split = choose_time_split(make_cutoffs(22, DAY, 7 * DAY))
    assert split.train_cutoffs == (START,)
    assert_no_label_window_overlaps_the_next_split(split)

    with pytest.raises(ValueError, match=r"at least 22 .*there are 21 cutoffs, 14 of them"):
        choose_time_split(make_cutoffs(21, DAY, 7 * DAY))
    with pytest.raises(ValueError, match=r"at least 22 .*there are 5 cutoffs, 0 of them"):
        choose_time_split(make_cutoffs(5, DAY, 7 * DAY))
    with pytest.raises(ValueError, match=r"at least 19 .*there are 18 cutoffs"):
        choose_time_split(make_cutoffs(18, HOUR, 6 * HOUR))


def test_cutoffs_with_different_horizons_are_refused() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    cutoffs.loc[3, "horizon_end"] += DAY
    with pytest.raises(ValueError, match="same horizon"):
        choose_time_split(cutoffs)


def labeled_rows(cutoffs: pd.DataFrame, users_per_cutoff: int = 3) -> LabeledFeatures:
    """`users_per_cutoff` rows per cutoff; feature `cutoff_number` tells where a row came from."""
    rows = []
    for number, (cutoff, complete) in enumerate(
        zip(cutoffs["cutoff_time"], cutoffs["horizon_complete"], strict=True)
    ):
        for user in range(users_per_cutoff):
            rows.append(
                {
                    "user_id": user,
                    "cutoff_time": cutoff,
                    "cutoff_number": float(number),
                    "events_7d": np.nan if user == 0 else float(user),
                    "purchased": int(user == 1),
                    "horizon_complete": bool(complete),
                }
            )
    return LabeledFeatures(frame=pd.DataFrame(rows), feature_columns=["cutoff_number", "events_7d"])


def test_split_by_time_keeps_each_cutoff_in_its_split_and_drops_the_rest() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    data = labeled_rows(cutoffs)
    split = choose_time_split(cutoffs)

    parts = split_by_time(data, split)

    assert sorted(set(parts.X_train["cutoff_number"])) == list(range(0, 9))  # 09-02 .. 09-10
    assert set(parts.X_validation["cutoff_number"]) == {15}  # 09-17
    assert set(parts.X_test["cutoff_number"]) == {22}  # 09-24
    # Gap cutoffs (09-11..09-16, 09-18..09-23) and incomplete ones (09-25..10-01) are dropped.
    assert len(parts.X_train) == 9 * 3 and len(parts.X_validation) == len(parts.X_test) == 3
    assert list(parts.X_train.columns) == ["cutoff_number", "events_7d"]
    assert parts.X_train["events_7d"].isna().sum() == 9  # NaN is left for the models
    assert parts.y_train.dtype == np.int64 and parts.y_train.tolist() == [0, 1, 0] * 9
    assert (parts.keys_test["cutoff_time"] == datetime(2025, 9, 24)).all()
    assert list(parts.keys_test.columns) == ["user_id", "cutoff_time"]
    assert parts.keys_test["user_id"].tolist() == [0, 1, 2]
    assert parts.row_counts() == {
        "train_rows": 27,
        "train_positives": 9,
        "validation_rows": 3,
        "validation_positives": 1,
        "test_rows": 3,
        "test_positives": 1,
    }


def test_split_by_time_drops_rows_whose_horizon_is_incomplete() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    data = labeled_rows(cutoffs)
    split = choose_time_split(cutoffs)
    frame = data.frame.copy()
    late = (frame["cutoff_time"] == split.test_cutoff) & (frame["user_id"] == 2)
    frame.loc[late, "horizon_complete"] = False

    parts = split_by_time(LabeledFeatures(frame, data.feature_columns), split)

    assert parts.keys_test["user_id"].tolist() == [0, 1]
    assert len(parts.y_test) == 2

    frame.loc[frame["cutoff_time"] == split.validation_cutoff, "horizon_complete"] = False
    with pytest.raises(ValueError, match="validation split"):
        split_by_time(LabeledFeatures(frame, data.feature_columns), split)
