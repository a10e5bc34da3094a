"""Roles of time: which cutoffs tune a model, which decide its promotion, and nothing in between.

Why by time and not at random: the model is used to score the next cutoff, so it must be
judged on cutoffs after the ones it learned from. A random split would let the same user's
neighbouring cutoffs (with nearly identical features and overlapping label windows) sit on both
sides at once and make the model look better than it is.

Each window of time has one role, and no role reads another's:

- tuning: the train cutoffs (models learn from them, resampling touches only them) and, later,
  several validation cutoffs pooled (Optuna's objective, early stopping, the decision threshold
  and calibration read them);
- promotion: the latest `n_promotion` cutoffs whose label windows are complete, pooled. Only
  the promotion gate and the final report read them. Every challenger of a night is judged on
  them, so the champion's promotion figure is the best of several tries on that window; the one
  untouched estimate of a deployed model is its served predictions once their labels mature
  (`ml.monitoring`);
- after training: the scoring cutoff and later ones, checked when their labels mature.

Why gaps: the label of a cutoff looks `horizon` ahead. A train cutoff's label window must end
at or before the first validation cutoff, and the last validation label window at or before the
first promotion cutoff; otherwise one role's labels would hold purchases from the next role's
time. Cutoffs in the gaps are left out.

Complete histories: a cutoff's features read `lookback` before it. Cutoffs whose lookback reaches
back before the data starts see less history than the scored cutoff will, so the roles use only
cutoffs with a complete lookback when there are enough; a short file falls back to all cutoffs
and says so (`TimeSplit.history_warning`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ml.dataset import (
    CATEGORY_TARGET_COLUMN,
    KEY_COLUMNS,
    LABEL_COLUMN,
    SEQUENCE_COLUMNS,
    LabeledFeatures,
)

SPLIT_NAMES = ("train", "validation", "promotion")
DEFAULT_VALIDATION_CUTOFFS = 3
DEFAULT_PROMOTION_CUTOFFS = 3


@dataclass(frozen=True)
class TimeSplit:
    """Which cutoffs play which role. Every label window is `horizon` long.

    `history_warning` is empty when every cutoff used has a complete lookback, else it says why
    cutoffs with an incomplete lookback were used.
    """

    train_cutoffs: tuple[datetime, ...]
    validation_cutoffs: tuple[datetime, ...]
    promotion_cutoffs: tuple[datetime, ...]
    horizon: timedelta
    history_warning: str = ""

    @property
    def lookback_complete(self) -> bool:
        return not self.history_warning

    def describe(self) -> dict[str, str]:
        """Plain strings for MLflow tags and Dagster metadata."""
        return {
            "train_cutoffs": _span(self.train_cutoffs),
            "n_train_cutoffs": str(len(self.train_cutoffs)),
            "validation_cutoffs": _span(self.validation_cutoffs),
            "n_validation_cutoffs": str(len(self.validation_cutoffs)),
            "promotion_cutoffs": _span(self.promotion_cutoffs),
            "n_promotion_cutoffs": str(len(self.promotion_cutoffs)),
            "horizon": str(self.horizon),
            "lookback_complete": str(self.lookback_complete).lower(),
        }


def _span(cutoffs: tuple[datetime, ...]) -> str:
    if len(cutoffs) == 1:
        return cutoffs[0].isoformat()
    return f"{cutoffs[0].isoformat()} .. {cutoffs[-1].isoformat()}"


def _to_datetimes(values: pd.Series) -> list[datetime]:
    return [pd.Timestamp(value).to_pydatetime() for value in values]


def choose_time_split(
    cutoffs: pd.DataFrame,
    n_validation: int = DEFAULT_VALIDATION_CUTOFFS,
    n_promotion: int = DEFAULT_PROMOTION_CUTOFFS,
    max_train_cutoffs: int = 0,
) -> TimeSplit:
    """The three roles from `marts.cutoffs` (see `ml.dataset.load_cutoffs`).

    promotion: the latest `n_promotion` cutoffs with a complete label window.
    validation: the latest `n_validation` cutoffs whose label windows end by the first
    promotion cutoff. train: every cutoff whose label window ends by the first validation
    cutoff (the latest `max_train_cutoffs` of them when that is positive).
    Only cutoffs with a complete lookback are used when they can fill all three roles.
    Raises ValueError, saying how many cutoffs are needed, when the data cannot hold them.
    """
    required = {"cutoff_time", "horizon_end", "horizon_complete", "lookback_complete"}
    missing = required - set(cutoffs.columns)
    if missing:
        raise ValueError(f"cutoffs lacks the columns {sorted(missing)}; pass marts.cutoffs.")
    if cutoffs.empty:
        raise ValueError("There are no cutoffs: the warehouse holds no events yet.")
    if n_validation < 1 or n_promotion < 1 or max_train_cutoffs < 0:
        raise ValueError("n_validation and n_promotion must be >= 1, max_train_cutoffs >= 0.")

    ordered = cutoffs.sort_values("cutoff_time")
    times = _to_datetimes(ordered["cutoff_time"])
    horizon_ends = _to_datetimes(ordered["horizon_end"])
    horizons = {end - start for start, end in zip(times, horizon_ends, strict=True)}
    if len(horizons) != 1:
        raise ValueError(f"Every cutoff must have the same horizon, found {sorted(horizons)}.")
    horizon = horizons.pop()
    if horizon <= timedelta(0):
        raise ValueError(f"The horizon must be positive, found {horizon}.")

    label_complete = dict(zip(times, ordered["horizon_complete"].astype(bool), strict=True))
    history_complete = [
        t for t, done in zip(times, ordered["lookback_complete"].astype(bool), strict=True) if done
    ]
    roles = _roles(history_complete, label_complete, horizon, n_validation, n_promotion)
    warning = ""
    if roles is None:
        roles = _roles(times, label_complete, horizon, n_validation, n_promotion)
        if roles is None:
            raise ValueError(
                _too_few_cutoffs_message(
                    times, horizon, sum(label_complete.values()), n_validation, n_promotion
                )
            )
        warning = (
            f"only {len(history_complete)} of {len(times)} cutoffs have a complete lookback, too "
            "few for the tuning and promotion roles: cutoffs that see less history than the "
            "scored cutoff are used (the days_of_history feature tells the model). Ingest more "
            "days of events or use a shorter lookback."
        )
    train, validation, promotion = roles
    if max_train_cutoffs:
        train = train[-max_train_cutoffs:]
    return TimeSplit(
        train_cutoffs=tuple(train),
        validation_cutoffs=tuple(validation),
        promotion_cutoffs=tuple(promotion),
        horizon=horizon,
        history_warning=warning,
    )


def _roles(
    candidates: list[datetime],
    label_complete: dict[datetime, bool],
    horizon: timedelta,
    n_validation: int,
    n_promotion: int,
) -> tuple[list[datetime], list[datetime], list[datetime]] | None:
    """(train, validation, promotion) from `candidates`, or None when they cannot fill all."""
    complete = [t for t in candidates if label_complete[t]]
    if len(complete) < n_promotion:
        return None
    promotion = complete[-n_promotion:]
    validation = [t for t in candidates if t + horizon <= promotion[0]][-n_validation:]
    if len(validation) < n_validation:
        return None
    train = [t for t in candidates if t + horizon <= validation[0]]
    if not train:
        return None
    return train, validation, promotion


def _too_few_cutoffs_message(
    times: list[datetime],
    horizon: timedelta,
    n_complete: int,
    n_validation: int,
    n_promotion: int,
) -> str:
    """How many cutoffs the roles need: one train cutoff, a horizon's gap, the validation
    cutoffs, a gap, the promotion cutoffs, then the cutoffs until their labels are complete."""
    steps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    step = min(steps) if steps else horizon
    per_horizon = max(1, round(horizon / step))
    needed = 1 + per_horizon + (n_validation - 1) + per_horizon + (n_promotion - 1) + per_horizon
    return (
        f"Cannot assign the roles of time: a {horizon} horizon with cutoffs every {step}, "
        f"{n_validation} validation and {n_promotion} promotion cutoffs need at least {needed} "
        f"consecutive cutoffs (train, validation and promotion one horizon apart, then "
        f"{per_horizon} more until the promotion labels are complete); there are {len(times)} "
        f"cutoffs, {n_complete} of them with a complete label window. Ingest more days of "
        f"events, use a shorter horizon, or fewer validation/promotion cutoffs."
    )


@dataclass(frozen=True)
class SplitData:
    """Model inputs per role. X frames hold exactly `feature_columns`; y arrays are int 0/1;
    keys_* hold user_id and cutoff_time row for row (the user is the bootstrap's unit; the
    tuning roles' keys are None in hand-built splits).

    `sequences_*` hold the SEQUENCE_COLUMNS row for row with X when the features were loaded
    with sequences, else None. `model_input` joins the two: the frame every registered model
    family's `predict` accepts. `next_categories_*` hold the next-category target row for row
    (an array of category indexes per row, see ml.dataset.CATEGORY_TARGET_COLUMN) when it was
    loaded, else None.
    """

    X_train: pd.DataFrame
    y_train: np.ndarray
    X_validation: pd.DataFrame
    y_validation: np.ndarray
    X_promotion: pd.DataFrame
    y_promotion: np.ndarray
    keys_promotion: pd.DataFrame
    feature_columns: list[str]
    split: TimeSplit
    sequences_train: pd.DataFrame | None = None
    sequences_validation: pd.DataFrame | None = None
    sequences_promotion: pd.DataFrame | None = None
    next_categories_train: pd.Series | None = None
    next_categories_validation: pd.Series | None = None
    next_categories_promotion: pd.Series | None = None
    keys_train: pd.DataFrame | None = None
    keys_validation: pd.DataFrame | None = None

    def model_input(self, name: str) -> pd.DataFrame:
        """Features and, when loaded, sequences of split `name` (train, validation, promotion)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"Unknown split {name!r}; use one of {SPLIT_NAMES}")
        features = getattr(self, f"X_{name}")
        sequences = getattr(self, f"sequences_{name}")
        return features if sequences is None else pd.concat([features, sequences], axis=1)

    def row_counts(self) -> dict[str, int]:
        """Rows, buyers and (promotion) users per role, for lineage (MLflow, Dagster)."""
        counts: dict[str, int] = {}
        for name in SPLIT_NAMES:
            y = getattr(self, f"y_{name}")
            counts[f"{name}_rows"] = int(len(y))
            counts[f"{name}_positives"] = int(np.sum(y))
        counts["promotion_users"] = int(self.keys_promotion["user_id"].nunique())
        return counts


def split_by_time(data: LabeledFeatures, split: TimeSplit) -> SplitData:
    """Rows of each role's cutoffs. Only rows with a complete horizon are used: the others have
    labels that may still turn positive. Rows of cutoffs in no role (the gaps) are dropped."""
    frame = data.frame[data.frame["horizon_complete"]]
    cutoff_times = frame["cutoff_time"]

    def rows_at(cutoffs: tuple[datetime, ...], name: str) -> pd.DataFrame:
        rows = frame[cutoff_times.isin(pd.to_datetime(list(cutoffs)))].reset_index(drop=True)
        if rows.empty:
            shown = ", ".join(c.isoformat() for c in cutoffs)
            raise ValueError(f"The {name} role ({shown}) has no rows with a complete horizon.")
        return rows

    train = rows_at(split.train_cutoffs, "train")
    validation = rows_at(split.validation_cutoffs, "validation")
    promotion = rows_at(split.promotion_cutoffs, "promotion")
    columns = list(data.feature_columns)
    has_sequences = all(column in frame.columns for column in SEQUENCE_COLUMNS)

    has_targets = CATEGORY_TARGET_COLUMN in frame.columns

    def sequences(rows: pd.DataFrame) -> pd.DataFrame | None:
        return rows[list(SEQUENCE_COLUMNS)] if has_sequences else None

    def next_categories(rows: pd.DataFrame) -> pd.Series | None:
        return rows[CATEGORY_TARGET_COLUMN] if has_targets else None

    return SplitData(
        X_train=train[columns],
        y_train=train[LABEL_COLUMN].to_numpy(dtype=np.int64),
        X_validation=validation[columns],
        y_validation=validation[LABEL_COLUMN].to_numpy(dtype=np.int64),
        X_promotion=promotion[columns],
        y_promotion=promotion[LABEL_COLUMN].to_numpy(dtype=np.int64),
        keys_promotion=promotion[list(KEY_COLUMNS)],
        feature_columns=columns,
        split=split,
        sequences_train=sequences(train),
        sequences_validation=sequences(validation),
        sequences_promotion=sequences(promotion),
        next_categories_train=next_categories(train),
        next_categories_validation=next_categories(validation),
        next_categories_promotion=next_categories(promotion),
        keys_train=train[list(KEY_COLUMNS)],
        keys_validation=validation[list(KEY_COLUMNS)],
    )


# A frozen copy of the roles' rows. Training reads this copy rather than the warehouse: every
# study, final model and gate of a run then sees the same rows, none of them holds the
# warehouse's lock, so they can run side by side, and a study's kept model can be matched with
# the exact data it was fitted on (the snapshot id).
SNAPSHOT_POINTER = "current.json"
SNAPSHOT_ROWS = "rows.parquet"
SNAPSHOT_ROLES = "roles.json"
SNAPSHOTS_KEPT = 2


def save_split_snapshot(labeled: LabeledFeatures, split: TimeSplit, folder: Path) -> str:
    """Writes the rows of the roles' cutoffs and the roles themselves into a new snapshot under
    `folder`, then points `folder/current.json` at it; returns the snapshot's id.

    Crash-safe: the pointer is replaced atomically once the snapshot is complete, so a reader
    sees the old snapshot or the new one; a half-written snapshot is never pointed at and is
    removed by a later save, which keeps the newest SNAPSHOTS_KEPT.
    """
    role_cutoffs = pd.to_datetime(
        [*split.train_cutoffs, *split.validation_cutoffs, *split.promotion_cutoffs]
    )
    frame = labeled.frame[labeled.frame["cutoff_time"].isin(role_cutoffs)]
    snapshot_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    target = Path(folder) / snapshot_id
    target.mkdir(parents=True)
    frame.to_parquet(target / SNAPSHOT_ROWS, index=False)
    roles = {
        "snapshot_id": snapshot_id,
        "train_cutoffs": [c.isoformat() for c in split.train_cutoffs],
        "validation_cutoffs": [c.isoformat() for c in split.validation_cutoffs],
        "promotion_cutoffs": [c.isoformat() for c in split.promotion_cutoffs],
        "horizon_seconds": split.horizon.total_seconds(),
        "history_warning": split.history_warning,
        "feature_columns": list(labeled.feature_columns),
    }
    (target / SNAPSHOT_ROLES).write_text(json.dumps(roles, indent=2))
    pointer = Path(folder) / SNAPSHOT_POINTER
    staging = pointer.with_name(f"{SNAPSHOT_POINTER}.tmp-{os.getpid()}")
    staging.write_text(json.dumps({"snapshot_id": snapshot_id}))
    os.replace(staging, pointer)
    others = [p for p in Path(folder).iterdir() if p.is_dir() and p.name != snapshot_id]
    complete = sorted(
        (p for p in others if (p / SNAPSHOT_ROLES).exists()), key=lambda p: p.stat().st_mtime_ns
    )
    kept = complete[len(complete) - (SNAPSHOTS_KEPT - 1) :] if SNAPSHOTS_KEPT > 1 else []
    for stale in others:
        if stale not in kept:
            shutil.rmtree(stale, ignore_errors=True)
    return snapshot_id


def load_split_snapshot(
    folder: Path, with_sequences: bool = False, snapshot_id: str = ""
) -> tuple[SplitData, str]:
    """The current snapshot's roles (or snapshot `snapshot_id`'s) as SplitData (sequences and
    the next-category target only when asked for) and its id.

    Raises FileNotFoundError with what to materialize when there is no such snapshot.
    """
    pointer = Path(folder) / SNAPSHOT_POINTER
    if not snapshot_id:
        if not pointer.exists():
            raise FileNotFoundError(
                f"No split snapshot in {folder}: materialize training/time_split first"
            )
        snapshot_id = json.loads(pointer.read_text())["snapshot_id"]
    target = Path(folder) / snapshot_id
    if not (target / SNAPSHOT_ROLES).exists():
        raise FileNotFoundError(
            f"Split snapshot {snapshot_id} is not in {folder} (only the newest "
            f"{SNAPSHOTS_KEPT} are kept): materialize training/time_split again"
        )
    roles = json.loads((target / SNAPSHOT_ROLES).read_text())
    columns = None
    if not with_sequences:
        names = pq.read_schema(target / SNAPSHOT_ROWS).names
        skipped = (*SEQUENCE_COLUMNS, CATEGORY_TARGET_COLUMN)
        columns = [name for name in names if name not in skipped]
    frame = pd.read_parquet(target / SNAPSHOT_ROWS, columns=columns)
    split = TimeSplit(
        train_cutoffs=tuple(datetime.fromisoformat(c) for c in roles["train_cutoffs"]),
        validation_cutoffs=tuple(datetime.fromisoformat(c) for c in roles["validation_cutoffs"]),
        promotion_cutoffs=tuple(datetime.fromisoformat(c) for c in roles["promotion_cutoffs"]),
        horizon=timedelta(seconds=roles["horizon_seconds"]),
        history_warning=roles["history_warning"],
    )
    labeled = LabeledFeatures(frame=frame, feature_columns=list(roles["feature_columns"]))
    return split_by_time(labeled, split), snapshot_id
