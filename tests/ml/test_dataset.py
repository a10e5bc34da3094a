"""Reading features and labels out of a real warehouse built by the real dbt CLI.

`build_small_warehouse` is shared with the resampling and baseline tests: it builds one small
synthetic warehouse per test session (about 8 s) and hands out the same file afterwards.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from ml.data.ingest import ingest_paths
from ml.data.synthetic import SyntheticConfig, generate_events
from ml.dataset import (
    KEY_COLUMNS,
    LABEL_COLUMN,
    SEQUENCE_COLUMNS,
    load_cutoffs,
    load_labeled_features,
    load_scoring_frame,
)
from tests.conftest import query, run_dbt

# 14 days with a 3-day horizon: 14 daily cutoffs, enough for train, validation and test.
SMALL_SHOP = SyntheticConfig(n_users=3_000, days=14, seed=3)
SMALL_DBT_VARS = {"horizon": "3 days", "lookback": "14 days"}
_built: dict[str, Path] = {}


def build_small_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic warehouse, built on first use in this test session."""
    if "small" not in _built:
        root = tmp_path_factory.mktemp("small_warehouse")
        warehouse = root / "warehouse.duckdb"
        generate_events(root / "landing", SMALL_SHOP)
        ingest_paths(warehouse, [root / "landing"], "synthetic")
        marts = "+user_features +labels +user_sequences +category_labels +categories"
        run_dbt(warehouse, "run", SMALL_DBT_VARS, select=marts)
        _built["small"] = warehouse
    return _built["small"]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_warehouse(tmp_path_factory)


def table_columns(warehouse: Path, table: str) -> list[str]:
    return [row[0] for row in query(warehouse, f"describe marts.{table}")]


def test_labeled_features_hold_every_feature_as_float_with_nan_for_null(warehouse: Path) -> None:
    data = load_labeled_features(warehouse)
    frame = data.frame

    expected_features = [
        c for c in table_columns(warehouse, "user_features") if c not in KEY_COLUMNS
    ]
    assert data.feature_columns == expected_features
    assert len(expected_features) > 30
    assert list(frame.columns) == [
        *KEY_COLUMNS,
        *expected_features,
        LABEL_COLUMN,
        "horizon_complete",
    ]
    assert all(frame[c].dtype == np.float64 for c in expected_features)
    assert frame[LABEL_COLUMN].dtype == np.int64
    assert set(frame[LABEL_COLUMN].unique()) == {0, 1}
    assert frame["horizon_complete"].dtype == bool

    # Same rows as the inner join, NULL became NaN, labels match.
    ((n_rows, n_never_carted, n_purchased),) = query(
        warehouse,
        "select count(*), count(*) filter (where f.hours_since_last_cart is null), "
        "count(*) filter (where l.purchased) "
        "from marts.user_features f join marts.labels l using (user_id, cutoff_time)",
    )
    assert len(frame) == n_rows
    assert frame["hours_since_last_cart"].isna().sum() == n_never_carted > 0
    assert frame[LABEL_COLUMN].sum() == n_purchased > 0
    assert not frame.duplicated(list(KEY_COLUMNS)).any()
    assert frame["cutoff_time"].is_monotonic_increasing


def test_scoring_frame_is_the_latest_cutoff(warehouse: Path) -> None:
    frame, cutoff = load_scoring_frame(warehouse)

    ((latest, n_rows),) = query(
        warehouse,
        "select c.cutoff_time, count(f.user_id) from marts.cutoffs c "
        "join marts.user_features f using (cutoff_time) where c.is_latest group by 1",
    )
    assert cutoff == latest
    assert len(frame) == n_rows > 0
    assert (frame["cutoff_time"] == cutoff).all()
    features = [c for c in table_columns(warehouse, "user_features") if c not in KEY_COLUMNS]
    assert list(frame.columns) == [*KEY_COLUMNS, *features, *SEQUENCE_COLUMNS]
    assert LABEL_COLUMN not in frame.columns


def test_sequences_come_row_for_row_with_the_features(warehouse: Path) -> None:
    frame = load_labeled_features(warehouse, with_sequences=True).frame
    plain = load_labeled_features(warehouse).frame

    assert len(frame) == len(plain)
    assert frame[list(KEY_COLUMNS)].equals(plain[list(KEY_COLUMNS)])
    assert (frame["event_type_codes"].map(len) > 0).all()
    row = frame.iloc[len(frame) // 2]
    ((codes, seconds),) = query(
        warehouse,
        "select event_type_codes, seconds_before_cutoff from marts.user_sequences "
        f"where user_id = {row['user_id']} and cutoff_time = '{row['cutoff_time']}'",
    )
    assert list(row["event_type_codes"]) == codes
    assert list(row["seconds_before_cutoff"]) == seconds


def test_only_the_cutoffs_asked_for_are_read(warehouse: Path) -> None:
    everything = load_labeled_features(warehouse, with_sequences=True).frame
    chosen = sorted(everything["cutoff_time"].unique())[2:5:2]
    some = load_labeled_features(warehouse, with_sequences=True, cutoffs=chosen).frame
    expected = everything[everything["cutoff_time"].isin(chosen)].reset_index(drop=True)
    assert sorted(some["cutoff_time"].unique()) == chosen and len(some) == len(expected) > 0
    assert some[["user_id", "cutoff_time", "purchased"]].equals(
        expected[["user_id", "cutoff_time", "purchased"]]
    )
    assert [len(s) for s in some["event_type_codes"]] == [
        len(s) for s in expected["event_type_codes"]
    ]


def test_cutoffs_come_ordered_by_time(warehouse: Path) -> None:
    cutoffs = load_cutoffs(warehouse)

    assert len(cutoffs) == query(warehouse, "select count(*) from marts.cutoffs")[0][0]
    assert cutoffs["cutoff_time"].is_monotonic_increasing
    assert cutoffs["is_latest"].sum() == 1 and cutoffs["is_latest"].iloc[-1]


def test_reads_through_a_read_only_connection(warehouse: Path) -> None:
    # DuckDB refuses a second connection to an open file with a different configuration, so
    # these calls fail if they ever open the warehouse for writing.
    with duckdb.connect(str(warehouse), read_only=True):
        assert len(load_labeled_features(warehouse).frame) > 0
        assert len(load_scoring_frame(warehouse)[0]) > 0
        assert len(load_cutoffs(warehouse)) > 0


def test_missing_warehouse_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make run"):
        load_labeled_features(tmp_path / "nowhere.duckdb")
