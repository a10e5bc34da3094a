"""Split the labeled rows by time: train on the past, choose settings on later data, test last.

Why by time and not at random: the model is used to score the next cutoff, so it must be
judged on cutoffs after the ones it learned from. A random split would let the same user's
neighbouring cutoffs (with nearly identical features and overlapping label windows) sit in
train and test at once and make the model look better than it is.

Why gaps: the label of a cutoff looks `horizon` ahead. If a training cutoff's label window
reached past the validation cutoff, training labels would contain purchases that happen after
the validation cutoff, i.e. in validation's future. So every training label window ends at or
before the validation cutoff, and the validation label window ends at or before the test cutoff.
Cutoffs in between are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from ml.dataset import KEY_COLUMNS, LABEL_COLUMN, SEQUENCE_COLUMNS, LabeledFeatures


@dataclass(frozen=True)
class TimeSplit:
    """Which cutoffs go where. Every label window is `horizon` long."""

    train_cutoffs: tuple[datetime, ...]
    validation_cutoff: datetime
    test_cutoff: datetime
    horizon: timedelta

    def describe(self) -> dict[str, str]:
        """Plain strings for MLflow tags and Dagster metadata."""
        return {
            "train_cutoffs": (
                f"{self.train_cutoffs[0].isoformat()} .. {self.train_cutoffs[-1].isoformat()}"
            ),
            "n_train_cutoffs": str(len(self.train_cutoffs)),
            "validation_cutoff": self.validation_cutoff.isoformat(),
            "test_cutoff": self.test_cutoff.isoformat(),
            "horizon": str(self.horizon),
        }


def _to_datetimes(values: pd.Series) -> list[datetime]:
    return [pd.Timestamp(value).to_pydatetime() for value in values]


def choose_time_split(cutoffs: pd.DataFrame) -> TimeSplit:
    """Train, validation and test cutoffs from `marts.cutoffs` (see `ml.dataset.load_cutoffs`).

    test: the latest cutoff whose horizon is complete (its labels are final).
    validation: the latest cutoff with validation + horizon <= test.
    train: every cutoff with cutoff + horizon <= validation.
    Raises ValueError when the cutoffs cannot hold all three.
    """
    required = {"cutoff_time", "horizon_end", "horizon_complete"}
    missing = required - set(cutoffs.columns)
    if missing:
        raise ValueError(f"cutoffs lacks the columns {sorted(missing)}; pass marts.cutoffs.")
    if cutoffs.empty:
        raise ValueError("There are no cutoffs: the warehouse holds no events yet.")

    ordered = cutoffs.sort_values("cutoff_time")
    times = _to_datetimes(ordered["cutoff_time"])
    horizon_ends = _to_datetimes(ordered["horizon_end"])
    horizons = {end - start for start, end in zip(times, horizon_ends, strict=True)}
    if len(horizons) != 1:
        raise ValueError(f"Every cutoff must have the same horizon, found {sorted(horizons)}.")
    horizon = horizons.pop()
    if horizon <= timedelta(0):
        raise ValueError(f"The horizon must be positive, found {horizon}.")

    complete = [t for t, done in zip(times, ordered["horizon_complete"], strict=True) if done]
    too_few = _too_few_cutoffs_message(times, horizon, n_complete=len(complete))
    if not complete:
        raise ValueError(too_few)
    test = max(complete)
    before_test = [t for t in times if t + horizon <= test]
    if not before_test:
        raise ValueError(too_few)
    validation = max(before_test)
    train = tuple(t for t in times if t + horizon <= validation)
    if not train:
        raise ValueError(too_few)
    return TimeSplit(
        train_cutoffs=train, validation_cutoff=validation, test_cutoff=test, horizon=horizon
    )


def _too_few_cutoffs_message(times: list[datetime], horizon: timedelta, n_complete: int) -> str:
    """How many cutoffs a split needs: one train, validation and test cutoff, each one horizon
    after the one before, plus the cutoffs after test whose horizon is still open."""
    steps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    step = min(steps) if steps else horizon
    steps_per_horizon = max(1, round(horizon / step))
    needed = 3 * steps_per_horizon + 1
    return (
        f"Cannot split by time: a {horizon} horizon with cutoffs every {step} needs at least "
        f"{needed} consecutive cutoffs (train, validation and test one horizon apart, then "
        f"{steps_per_horizon} more until the test labels are complete); there are {len(times)} "
        f"cutoffs, {n_complete} of them with a complete horizon. Ingest more days of events or "
        f"use a shorter horizon."
    )


@dataclass(frozen=True)
class SplitData:
    """Model inputs per split. X frames hold exactly `feature_columns`; y arrays are int 0/1.

    `sequences_*` hold the SEQUENCE_COLUMNS row for row with X when the features were loaded
    with sequences, else None. `model_input` joins the two: the frame every registered model
    family's `predict` accepts.
    """

    X_train: pd.DataFrame
    y_train: np.ndarray
    X_validation: pd.DataFrame
    y_validation: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray
    keys_test: pd.DataFrame
    feature_columns: list[str]
    split: TimeSplit
    sequences_train: pd.DataFrame | None = None
    sequences_validation: pd.DataFrame | None = None
    sequences_test: pd.DataFrame | None = None

    def model_input(self, name: str) -> pd.DataFrame:
        """Features and, when loaded, sequences of split `name` ("train", "validation", "test")."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"Unknown split {name!r}; use train, validation or test")
        features = getattr(self, f"X_{name}")
        sequences = getattr(self, f"sequences_{name}")
        return features if sequences is None else pd.concat([features, sequences], axis=1)

    def row_counts(self) -> dict[str, int]:
        """Rows and positives per split, for lineage (MLflow params, Dagster metadata)."""
        counts: dict[str, int] = {}
        for name, y in [
            ("train", self.y_train),
            ("validation", self.y_validation),
            ("test", self.y_test),
        ]:
            counts[f"{name}_rows"] = int(len(y))
            counts[f"{name}_positives"] = int(np.sum(y))
        return counts


def split_by_time(data: LabeledFeatures, split: TimeSplit) -> SplitData:
    """Rows of each split's cutoffs. Only rows with a complete horizon are used: the others have
    labels that may still turn positive. Rows of cutoffs in no split (the gaps) are dropped."""
    frame = data.frame[data.frame["horizon_complete"]]
    cutoff_times = frame["cutoff_time"]

    def rows_at(cutoffs: list[datetime], name: str) -> pd.DataFrame:
        rows = frame[cutoff_times.isin(pd.to_datetime(cutoffs))].reset_index(drop=True)
        if rows.empty:
            shown = ", ".join(c.isoformat() for c in cutoffs)
            raise ValueError(f"The {name} split ({shown}) has no rows with a complete horizon.")
        return rows

    train = rows_at(list(split.train_cutoffs), "train")
    validation = rows_at([split.validation_cutoff], "validation")
    test = rows_at([split.test_cutoff], "test")
    columns = list(data.feature_columns)
    has_sequences = all(column in frame.columns for column in SEQUENCE_COLUMNS)

    def sequences(rows: pd.DataFrame) -> pd.DataFrame | None:
        return rows[list(SEQUENCE_COLUMNS)] if has_sequences else None

    return SplitData(
        X_train=train[columns],
        y_train=train[LABEL_COLUMN].to_numpy(dtype=np.int64),
        X_validation=validation[columns],
        y_validation=validation[LABEL_COLUMN].to_numpy(dtype=np.int64),
        X_test=test[columns],
        y_test=test[LABEL_COLUMN].to_numpy(dtype=np.int64),
        keys_test=test[list(KEY_COLUMNS)],
        feature_columns=columns,
        split=split,
        sequences_train=sequences(train),
        sequences_validation=sequences(validation),
        sequences_test=sequences(test),
    )
