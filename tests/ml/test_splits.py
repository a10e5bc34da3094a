"""The roles of time: which cutoffs tune (train, validation) and which decide promotion, and that
no label window reaches into the next role. Cutoff tables are made by hand with the same rule as
dbt's marts.cutoffs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.dataset import LabeledFeatures
from ml.splits import (
    TimeSplit,
    choose_time_split,
    load_split_snapshot,
    save_split_snapshot,
    split_by_time,
)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
START = datetime(2025, 9, 2)


def make_cutoffs(
    n: int,
    step: timedelta,
    horizon: timedelta,
    start: datetime = START,
    lookback_complete_from: int | None = None,
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
            "lookback_complete": [
                lookback_complete_from is not None and i >= lookback_complete_from for i in range(n)
            ],
            "horizon_complete": [t + horizon <= times[-1] for t in times],
            "is_latest": [i == n - 1 for i in range(n)],
        }
    )


def assert_roles_apart(split: TimeSplit) -> None:
    """No label window of one role reaches the next role, and the roles share no cutoff."""
    assert max(split.train_cutoffs) + split.horizon <= min(split.validation_cutoffs)
    assert max(split.validation_cutoffs) + split.horizon <= min(split.promotion_cutoffs)
    everything = split.train_cutoffs + split.validation_cutoffs + split.promotion_cutoffs
    assert len(set(everything)) == len(everything)
    for role in (split.train_cutoffs, split.validation_cutoffs, split.promotion_cutoffs):
        assert list(role) == sorted(role)


def days(*numbers: int) -> tuple[datetime, ...]:
    return tuple(datetime(2025, 9, d) for d in numbers)


def test_daily_cutoffs_with_a_seven_day_horizon() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)  # 2025-09-02 .. 2025-10-01

    split = choose_time_split(cutoffs)

    assert split.horizon == 7 * DAY
    # 09-24 + 7 days = 10-01, the last cutoff: the latest complete label window.
    assert split.promotion_cutoffs == days(22, 23, 24)
    assert split.validation_cutoffs == days(13, 14, 15)  # 09-15 + 7 days = 09-22
    assert split.train_cutoffs == days(2, 3, 4, 5, 6)  # 09-06 + 7 days = 09-13
    assert_roles_apart(split)
    assert split.describe() == {
        "train_cutoffs": "2025-09-02T00:00:00 .. 2025-09-06T00:00:00",
        "n_train_cutoffs": "5",
        "validation_cutoffs": "2025-09-13T00:00:00 .. 2025-09-15T00:00:00",
        "n_validation_cutoffs": "3",
        "promotion_cutoffs": "2025-09-22T00:00:00 .. 2025-09-24T00:00:00",
        "n_promotion_cutoffs": "3",
        "horizon": "7 days, 0:00:00",
        "lookback_complete": "false",
    }
    assert "complete lookback" in split.history_warning


def test_only_cutoffs_with_a_complete_lookback_when_there_are_enough() -> None:
    cutoffs = make_cutoffs(40, DAY, 7 * DAY, lookback_complete_from=10)  # 09-12 onwards

    split = choose_time_split(cutoffs)

    assert split.history_warning == "" and split.lookback_complete
    assert split.train_cutoffs == days(12, 13, 14, 15, 16)
    assert split.promotion_cutoffs[-1] == datetime(2025, 10, 4)
    assert_roles_apart(split)

    # Too few complete histories for all three roles: every cutoff is used, with a warning.
    fallback = choose_time_split(make_cutoffs(40, DAY, 7 * DAY, lookback_complete_from=20))
    assert fallback.train_cutoffs[0] == START
    assert not fallback.lookback_complete
    assert "only 20 of 40 cutoffs have a complete lookback" in fallback.history_warning


def test_hourly_cutoffs_with_a_six_hour_horizon() -> None:
    cutoffs = make_cutoffs(48, HOUR, 6 * HOUR)  # 2025-09-02 00:00 .. 2025-09-03 23:00

    split = choose_time_split(cutoffs)

    assert split.horizon == 6 * HOUR
    assert split.promotion_cutoffs == tuple(datetime(2025, 9, 3, h) for h in (15, 16, 17))
    assert split.validation_cutoffs == tuple(datetime(2025, 9, 3, h) for h in (7, 8, 9))
    assert split.train_cutoffs == tuple(START + i * HOUR for i in range(26))  # to 09-03 01:00
    assert_roles_apart(split)


@pytest.mark.parametrize(
    ("step", "horizon", "n_validation", "n_promotion"),
    [(DAY, 7 * DAY, 3, 3), (DAY, DAY, 2, 4), (HOUR, 6 * HOUR, 3, 3), (DAY, 3 * DAY, 1, 1)],
)
def test_the_roles_never_overlap_label_windows_included(
    step: timedelta, horizon: timedelta, n_validation: int, n_promotion: int
) -> None:
    for n in range(10, 70):
        for complete_from in (None, 5, 20):
            cutoffs = make_cutoffs(n, step, horizon, lookback_complete_from=complete_from)
            try:
                split = choose_time_split(
                    cutoffs, n_validation=n_validation, n_promotion=n_promotion
                )
            except ValueError as error:
                assert "Cannot assign the roles of time" in str(error)
                continue
            assert_roles_apart(split)
            assert len(split.validation_cutoffs) == n_validation
            assert len(split.promotion_cutoffs) == n_promotion
            complete = cutoffs.set_index("cutoff_time")["horizon_complete"]
            assert all(complete[pd.Timestamp(t)] for t in split.promotion_cutoffs)


def test_row_order_of_the_cutoffs_does_not_matter() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    shuffled = cutoffs.sample(frac=1.0, random_state=1)

    assert choose_time_split(shuffled) == choose_time_split(cutoffs)


def test_the_fewest_cutoffs_that_work_and_one_less() -> None:
    # 1 train cutoff + 7 gap + 3 validation + 7 gap + 3 promotion + 7 to complete - 2 overlaps.
    split = choose_time_split(make_cutoffs(26, DAY, 7 * DAY))
    assert split.train_cutoffs == (START,)
    assert_roles_apart(split)

    with pytest.raises(ValueError, match=r"at least 26 .*there are 25 cutoffs, 18 of them"):
        choose_time_split(make_cutoffs(25, DAY, 7 * DAY))
    with pytest.raises(ValueError, match=r"at least 26 .*there are 5 cutoffs, 0 of them"):
        choose_time_split(make_cutoffs(5, DAY, 7 * DAY))
    with pytest.raises(ValueError, match=r"at least 23 .*there are 22 cutoffs"):
        choose_time_split(make_cutoffs(22, HOUR, 6 * HOUR))
    # Fewer validation and promotion cutoffs fit a shorter file.
    short = choose_time_split(make_cutoffs(22, DAY, 7 * DAY), n_validation=1, n_promotion=1)
    assert_roles_apart(short)


def test_max_train_cutoffs_keeps_the_latest() -> None:
    split = choose_time_split(make_cutoffs(40, DAY, 7 * DAY), max_train_cutoffs=4)
    full = choose_time_split(make_cutoffs(40, DAY, 7 * DAY))
    assert split.train_cutoffs == full.train_cutoffs[-4:]
    assert split.promotion_cutoffs == full.promotion_cutoffs


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


def test_split_by_time_keeps_each_cutoff_in_its_role_and_drops_the_rest() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    data = labeled_rows(cutoffs)
    split = choose_time_split(cutoffs)

    parts = split_by_time(data, split)

    assert sorted(set(parts.X_train["cutoff_number"])) == list(range(0, 5))  # 09-02 .. 09-06
    assert set(parts.X_validation["cutoff_number"]) == {11, 12, 13}  # 09-13 .. 09-15
    assert set(parts.X_promotion["cutoff_number"]) == {20, 21, 22}  # 09-22 .. 09-24
    # Gap cutoffs and incomplete ones (09-25..10-01) are dropped.
    assert len(parts.X_train) == 5 * 3 and len(parts.X_validation) == len(parts.X_promotion) == 9
    assert list(parts.X_train.columns) == ["cutoff_number", "events_7d"]
    assert parts.X_train["events_7d"].isna().sum() == 5  # NaN is left for the models
    assert parts.y_train.dtype == np.int64 and parts.y_train.tolist() == [0, 1, 0] * 5
    assert list(parts.keys_promotion.columns) == ["user_id", "cutoff_time"]
    assert parts.keys_promotion["user_id"].tolist() == [0, 1, 2] * 3
    assert parts.row_counts() == {
        "train_rows": 15,
        "train_positives": 5,
        "validation_rows": 9,
        "validation_positives": 3,
        "promotion_rows": 9,
        "promotion_positives": 3,
        "promotion_users": 3,
    }


def test_split_by_time_drops_rows_whose_horizon_is_incomplete() -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    data = labeled_rows(cutoffs)
    split = choose_time_split(cutoffs)
    frame = data.frame.copy()
    late = (frame["cutoff_time"] == split.promotion_cutoffs[-1]) & (frame["user_id"] == 2)
    frame.loc[late, "horizon_complete"] = False

    parts = split_by_time(LabeledFeatures(frame, data.feature_columns), split)

    assert parts.keys_promotion["user_id"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert len(parts.y_promotion) == 8

    validation = frame["cutoff_time"].isin(pd.to_datetime(list(split.validation_cutoffs)))
    frame.loc[validation, "horizon_complete"] = False
    with pytest.raises(ValueError, match="validation role"):
        split_by_time(LabeledFeatures(frame, data.feature_columns), split)


def test_a_snapshot_holds_exactly_the_roles_and_replaces_the_last_one_whole(
    tmp_path: Path,
) -> None:
    cutoffs = make_cutoffs(30, DAY, 7 * DAY)
    data = labeled_rows(cutoffs)
    frame = data.frame.assign(
        event_type_codes=[np.array([1, 2], dtype=np.uint8)] * len(data.frame),
        category_indexes=[np.array([0, 3])] * len(data.frame),
        prices=[np.array([np.nan, 2.5])] * len(data.frame),
        seconds_before_cutoff=[np.array([60.0, 5.0])] * len(data.frame),
    )
    data = LabeledFeatures(frame, data.feature_columns)
    split = choose_time_split(cutoffs)
    folder = tmp_path / "split"
    with pytest.raises(FileNotFoundError, match="time_split"):
        load_split_snapshot(folder)

    first = save_split_snapshot(data, split, folder)
    loaded, snapshot_id = load_split_snapshot(folder, with_sequences=True)
    expected = split_by_time(data, split)
    assert snapshot_id == first and loaded.split == split
    pd.testing.assert_frame_equal(loaded.X_train, expected.X_train)
    pd.testing.assert_frame_equal(loaded.keys_promotion, expected.keys_promotion)
    np.testing.assert_array_equal(loaded.y_promotion, expected.y_promotion)
    cell = loaded.sequences_validation["event_type_codes"].iloc[0]
    assert cell.dtype == np.uint8 and cell.tolist() == [1, 2]
    assert np.isnan(loaded.sequences_train["prices"].iloc[0][0])
    # Only the roles' cutoffs are stored; gap cutoffs and the scoring cutoff stay out.
    stored = pd.read_parquet(folder / first / "rows.parquet")
    assert stored["cutoff_time"].nunique() == 5 + 3 + 3
    without, _ = load_split_snapshot(folder, with_sequences=False)
    assert without.sequences_train is None

    # A killed writer's half snapshot is never pointed at; the next save removes it and keeps
    # the newest two complete ones.
    (folder / "00000000T000000-deadbeef").mkdir()
    second = save_split_snapshot(data, split, folder)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted([first, second])
    third = save_split_snapshot(data, split, folder)
    assert load_split_snapshot(folder)[1] == third
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted([second, third])
