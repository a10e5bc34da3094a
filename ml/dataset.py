"""Read the training data out of the warehouse.

The warehouse already holds point-in-time features (`marts.user_features`) and labels
(`marts.labels`), one row per (user, cutoff). This module only reads them, through a read-only
connection, so training can never change the warehouse and can run while nothing else writes it.
Every feature comes back as float64 with NaN where the warehouse has NULL (e.g.
`hours_since_last_cart` of a user who never carted), which is what scikit-learn and XGBoost expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

KEY_COLUMNS = ("user_id", "cutoff_time")
LABEL_COLUMN = "purchased"
# The list columns of marts.user_sequences a sequence model reads (oldest event first). Each
# cell is a 1-D numpy array; a row without a sequence gets empty arrays.
SEQUENCE_COLUMNS = ("event_type_codes", "category_indexes", "prices", "seconds_before_cutoff")
# The next-category target (marts.category_labels): the categories touched in the label window,
# in order of first touch, as a 1-D numpy array per row (empty when none). Loaded with sequences.
CATEGORY_TARGET_COLUMN = "horizon_category_indexes"


@dataclass(frozen=True)
class LabeledFeatures:
    """Features joined to their labels.

    `frame` holds the keys, the feature columns (float64, NaN for NULL), `purchased` (int 0/1)
    and `horizon_complete` (bool; rows whose label window is not over yet must not be used for
    training or evaluation), plus the SEQUENCE_COLUMNS and CATEGORY_TARGET_COLUMN when loaded
    with sequences.
    `feature_columns` lists every `user_features` column except the keys, in table order.
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


def _sequences_select(with_sequences: bool) -> tuple[str, str]:
    """Select list and join for the sequence columns, or nothing.

    Left join: a user_features row always has events in its lookback, so it should have a
    sequence; if one is ever missing the row keeps empty lists rather than disappearing.
    """
    if not with_sequences:
        return "", ""
    columns = "".join(f",\n coalesce(s.{column}, []) as {column}" for column in SEQUENCE_COLUMNS)
    return columns, "left join marts.user_sequences as s using (user_id, cutoff_time)"


def _category_target_select(with_targets: bool) -> tuple[str, str]:
    """Select list and join for the next-category target, or nothing."""
    if not with_targets:
        return "", ""
    column = f",\n coalesce(c.{CATEGORY_TARGET_COLUMN}, []) as {CATEGORY_TARGET_COLUMN}"
    return column, "left join marts.category_labels as c using (user_id, cutoff_time)"


def _to_frame(relation: duckdb.DuckDBPyRelation) -> pd.DataFrame:
    """Through Arrow: list columns become numpy arrays per cell, far faster than `.df()`."""
    return relation.to_arrow_table().to_pandas()


def load_labeled_features(
    warehouse: Path, with_sequences: bool = False, cutoffs: Sequence[datetime] | None = None
) -> LabeledFeatures:
    """Features inner-joined to labels, ordered by cutoff then user so results are reproducible.

    `with_sequences` adds the SEQUENCE_COLUMNS of marts.user_sequences for the same rows, and the
    next-category target (CATEGORY_TARGET_COLUMN of marts.category_labels).
    `cutoffs` reads only those cutoffs' rows (the roles of a split), None every row: the cutoffs
    in the gaps between roles are most of the warehouse, and their sequences are the costly
    part to load.
    """
    sequence_columns, sequence_join = _sequences_select(with_sequences)
    target_column, target_join = _category_target_select(with_sequences)
    where = "" if cutoffs is None else "where f.cutoff_time in (select unnest($cutoffs))"
    params = (
        None if cutoffs is None else {"cutoffs": [pd.Timestamp(c).to_pydatetime() for c in cutoffs]}
    )
    with _connect(warehouse) as con:
        feature_columns = _feature_columns(con)
        frame = _to_frame(
            con.sql(
                f"""
                select
                    f.user_id,
                    f.cutoff_time,
                    {_features_select(feature_columns, "f")},
                    cast(l.purchased as integer) as purchased,
                    l.horizon_complete
                    {sequence_columns}
                    {target_column}
                from marts.user_features as f
                inner join marts.labels as l using (user_id, cutoff_time)
                {sequence_join}
                {target_join}
                {where}
                order by f.cutoff_time, f.user_id
                """,
                params=params,
            )
        )
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype("int64")
    frame["horizon_complete"] = frame["horizon_complete"].astype(bool)
    return LabeledFeatures(frame=frame, feature_columns=feature_columns)


def load_scoring_frame(warehouse: Path) -> tuple[pd.DataFrame, datetime]:
    """Keys, features and sequences of the latest cutoff (`marts.cutoffs.is_latest`), and that
    cutoff. These are the users to score now: their label window has not even started.

    The sequences come along so that whichever family is champion finds its inputs.
    """
    with _connect(warehouse) as con:
        latest = con.sql("select cutoff_time from marts.cutoffs where is_latest").fetchall()
        if len(latest) != 1:
            raise ValueError(f"Expected one latest cutoff in marts.cutoffs, found {len(latest)}.")
        cutoff: datetime = latest[0][0]
        return scoring_frame(con, cutoff), cutoff


def scoring_frame(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> pd.DataFrame:
    """The model input at `cutoff` from a database laid out like the warehouse: the batch
    scoring's (the warehouse) and the scoring service's (one shopper's tables, ml.serving)
    alike, so both hand the models the same columns built the same way."""
    sequence_columns, sequence_join = _sequences_select(True)
    feature_columns = _feature_columns(con)
    return _to_frame(
        con.sql(
            f"""
            select
                f.user_id, f.cutoff_time, {_features_select(feature_columns, "f")}
                {sequence_columns}
            from marts.user_features as f
            {sequence_join}
            where f.cutoff_time = $cutoff
            order by f.user_id
            """,
            params={"cutoff": cutoff},
        )
    )


def load_cutoffs(warehouse: Path) -> pd.DataFrame:
    """`marts.cutoffs` ordered by time: the input of `ml.splits.choose_time_split`."""
    with _connect(warehouse) as con:
        return con.sql("select * from marts.cutoffs order by cutoff_time").df()


def select_features(model_input: pd.DataFrame, feature_columns: Sequence[str]) -> pd.DataFrame:
    """Exactly the model's feature columns, in training order, as float64.

    Extra columns (keys, labels) are ignored; a missing feature is an error, because silently
    scoring it as "missing" would give wrong probabilities without anyone noticing.
    """
    missing = [column for column in feature_columns if column not in model_input.columns]
    if missing:
        raise ValueError(
            f"The input lacks {len(missing)} feature column(s) the model was trained on: {missing}"
        )
    return model_input[list(feature_columns)].astype(np.float64)


def load_category_names(warehouse: Path) -> dict[int, str]:
    """category_idx -> the name a shop manager reads (`marts.categories`)."""
    with _connect(warehouse) as con:
        rows = con.execute("select category_idx, category_name from marts.categories").fetchall()
    return {int(index): str(name) for index, name in rows}
