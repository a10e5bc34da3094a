"""Read the training data out of the warehouse.

The warehouse already holds point-in-time features (`marts.user_features`) and labels
(`marts.labels`), one row per (user, cutoff). This module only reads them, through a read-only
connection, so training can never change the warehouse and can run while nothing else writes it.
Every feature comes back as float64 with NaN where the warehouse has NULL (e.g.
`hours_since_last_cart` of a user who never carted), which is what scikit-learn and XGBoost expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

KEY_COLUMNS = ("user_id", "cutoff_time")
LABEL_COLUMN = "purchased"


@dataclass(frozen=True)
class LabeledFeatures:
    """Features joined to their labels.

    `frame` holds the keys, the feature columns (float64, NaN for NULL), `purchased` (int 0/1)
    and `horizon_complete` (bool; rows whose label window is not over yet must not be used for
    training or evaluation). `feature_columns` lists every `user_features` column except the
    keys, in table order.
    """

    frame: pd.DataFrame
    feature_columns: list[str]


def _connect(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection; fails with a clear message when the warehouse is missing."""
    if not Path(warehouse).exists():
        raise FileNotFoundError(
            f"No warehouse at {warehouse}: build it first (`make run` or materialize the assets)."
        )
    return duckdb.connect(str(warehouse), read_only=True)


def _feature_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every column of marts.user_features except the keys, in table order."""
    rows = con.sql(
        "select column_name from information_schema.columns "
        "where table_schema = 'marts' and table_name = 'user_features' "
        "order by ordinal_position"
    ).fetchall()
    if not rows:
        raise ValueError("The warehouse has no marts.user_features table: run dbt first.")
    return [name for (name,) in rows if name not in KEY_COLUMNS]


def _features_select(feature_columns: list[str], table_alias: str) -> str:
    """Casts every feature to DOUBLE: counts are HUGEINT in DuckDB, models want float64."""
    return ",\n".join(
        f'cast({table_alias}."{column}" as double) as "{column}"' for column in feature_columns
    )


def load_labeled_features(warehouse: Path) -> LabeledFeatures:
    """Features inner-joined to labels, ordered by cutoff then user so results are reproducible."""
    with _connect(warehouse) as con:
        feature_columns = _feature_columns(con)
        frame = con.sql(
            f"""
            select
                f.user_id,
                f.cutoff_time,
                {_features_select(feature_columns, "f")},
                cast(l.purchased as integer) as purchased,
                l.horizon_complete
            from marts.user_features as f
            inner join marts.labels as l using (user_id, cutoff_time)
            order by f.cutoff_time, f.user_id
            """
        ).df()
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype("int64")
    frame["horizon_complete"] = frame["horizon_complete"].astype(bool)
    return LabeledFeatures(frame=frame, feature_columns=feature_columns)


def load_scoring_frame(warehouse: Path) -> tuple[pd.DataFrame, datetime]:
    """Keys and features of the latest cutoff (`marts.cutoffs.is_latest`), and that cutoff.

    These are the users to score now: their label window has not even started.
    """
    with _connect(warehouse) as con:
        latest = con.sql("select cutoff_time from marts.cutoffs where is_latest").fetchall()
        if len(latest) != 1:
            raise ValueError(f"Expected one latest cutoff in marts.cutoffs, found {len(latest)}.")
        cutoff: datetime = latest[0][0]
        feature_columns = _feature_columns(con)
        frame = con.sql(
            f"""
            select f.user_id, f.cutoff_time, {_features_select(feature_columns, "f")}
            from marts.user_features as f
            where f.cutoff_time = $cutoff
            order by f.user_id
            """,
            params={"cutoff": cutoff},
        ).df()
    return frame, cutoff


def load_cutoffs(warehouse: Path) -> pd.DataFrame:
    """`marts.cutoffs` ordered by time: the input of `ml.splits.choose_time_split`."""
    with _connect(warehouse) as con:
        return con.sql("select * from marts.cutoffs order by cutoff_time").df()
