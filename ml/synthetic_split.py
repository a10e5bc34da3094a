"""A SplitData shaped like `ml.splits.split_by_time` returns, without a warehouse: synthetic
shoppers whose labels depend on their features and, only through the order of their last
events, on their sequences. For tests and for benchmarks on machines without the warehouse
(bench/seq_study.py on a GPU machine)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from ml.dataset import LABEL_COLUMN, LabeledFeatures
from ml.splits import SplitData, TimeSplit

FEATURES = ["carts_7d", "views_7d", "hours_since_last_cart", "purchases_lookback", "noise_a"]


def synthetic_rows(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Float64 features with NaN (never carted) and labels that depend on them (~10% buyers)."""
    carts = rng.poisson(0.6, n).astype(float)
    views = carts * 3 + rng.poisson(4, n)
    hours = np.where(carts > 0, rng.exponential(48, n), np.nan)
    purchases = rng.poisson(0.3, n).astype(float)
    noise = rng.normal(size=n)
    recency = np.where(np.isnan(hours), 0.0, np.exp(-np.nan_to_num(hours) / 48))
    logit = -3.2 + 0.9 * carts + 1.2 * recency + 0.6 * purchases
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    X = pd.DataFrame(
        {
            "carts_7d": carts,
            "views_7d": views.astype(float),
            "hours_since_last_cart": hours,
            "purchases_lookback": purchases,
            "noise_a": noise,
        }
    )
    return X, y


def synthetic_sequences(y: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """SEQUENCE_COLUMNS shaped like marts.user_sequences (oldest first, 0 to 30 events, some
    empty, some prices NaN) with a signal only the order of events shows: most buyers' last two
    events are "removed, then carted (within the hour)", many non-buyers' are "carted, then
    removed". The static features of `synthetic_rows` know nothing of it."""
    n = len(y)
    buyer = np.asarray(y) == 1
    lengths = rng.integers(0, 31, n)
    lengths[buyer] = np.maximum(lengths[buyer], 2)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    codes = rng.choice([1, 2, 3, 4, 5], size=total, p=[0.72, 0.14, 0.06, 0.03, 0.05])
    categories = np.where(rng.random(total) < 0.1, 0, rng.integers(1, 400, total))
    prices = np.where(rng.random(total) < 0.05, np.nan, rng.lognormal(3.0, 1.0, total))
    # Seconds before the cutoff fall from the oldest event to the newest within each row.
    gaps = rng.exponential(20_000.0, total)
    newest = rng.exponential(40_000.0, n)
    after = np.cumsum(gaps[::-1])[::-1]  # sum of the gaps from each event to the very end
    row_of = np.repeat(np.arange(n), lengths)
    seconds = after - np.concatenate([[0.0], after])[ends][row_of] + newest[row_of]
    signal = buyer & (rng.random(n) < 0.8)
    decoy = ~buyer & (lengths >= 2) & (rng.random(n) < 0.3)
    last, before_last = ends - 1, ends - 2
    codes[last[signal]], codes[before_last[signal]] = 2, 3
    codes[last[decoy]], codes[before_last[decoy]] = 3, 2
    within_the_hour = rng.uniform(60, 3_600, int(signal.sum()))
    seconds[last[signal]] = np.minimum(within_the_hour, seconds[before_last[signal]])
    split_at = ends[:-1]
    return pd.DataFrame(
        {
            "event_type_codes": np.split(codes.astype(np.uint8), split_at),
            "category_indexes": np.split(categories.astype(np.int32), split_at),
            "prices": np.split(prices, split_at),
            "seconds_before_cutoff": np.split(seconds, split_at),
        }
    )


def make_split_data(
    seed: int = 0, n_train: int = 2000, n_eval: int = 800, with_sequences: bool = False
) -> SplitData:
    """SplitData shaped like `ml.splits.split_by_time` returns, without a warehouse.

    `with_sequences` adds `synthetic_sequences` for every split (the features and labels stay
    the same as without).
    """
    rng = np.random.default_rng(seed)
    X_train, y_train = synthetic_rows(n_train, rng)
    X_validation, y_validation = synthetic_rows(n_eval, rng)
    X_promotion, y_promotion = synthetic_rows(n_eval, rng)
    sequences: dict[str, pd.DataFrame | None] = dict.fromkeys(("train", "validation", "promotion"))
    if with_sequences:
        sequence_rng = np.random.default_rng(seed + 1_000)
        for name, y in (
            ("train", y_train),
            ("validation", y_validation),
            ("promotion", y_promotion),
        ):
            sequences[name] = synthetic_sequences(y, sequence_rng)
    start = datetime(2025, 9, 1)
    split = TimeSplit(
        train_cutoffs=tuple(start + timedelta(days=d) for d in range(5)),
        validation_cutoffs=tuple(start + timedelta(days=d) for d in (8, 9)),
        promotion_cutoffs=tuple(start + timedelta(days=d) for d in (12, 13)),
        horizon=timedelta(days=3),
    )
    # The promotion rows are two cutoffs of the same n_eval / 2 users, as in the warehouse.
    half = n_eval // 2
    keys_promotion = pd.DataFrame(
        {
            "user_id": np.tile(np.arange(half), 2)[:n_eval],
            "cutoff_time": np.repeat(split.promotion_cutoffs, [half, n_eval - half]),
        }
    )
    return SplitData(
        X_train=X_train,
        y_train=y_train,
        X_validation=X_validation,
        y_validation=y_validation,
        X_promotion=X_promotion,
        y_promotion=y_promotion,
        keys_promotion=keys_promotion,
        feature_columns=list(FEATURES),
        split=split,
        sequences_train=sequences["train"],
        sequences_validation=sequences["validation"],
        sequences_promotion=sequences["promotion"],
    )


def make_labeled_features(
    seed: int = 0, n_train: int = 2000, n_eval: int = 800, with_sequences: bool = False
) -> tuple[LabeledFeatures, TimeSplit]:
    """The rows of `make_split_data` as `ml.splits.save_split_snapshot` takes them (one frame
    with keys, features, label and complete horizons) and their TimeSplit: a snapshot on disk
    without a warehouse, for tuning workers in tests and benches."""
    data = make_split_data(seed, n_train, n_eval, with_sequences)
    frames = []
    for name in ("train", "validation", "promotion"):
        X = getattr(data, f"X_{name}")
        cutoffs = list(getattr(data.split, f"{name}_cutoffs"))
        frame = X.copy()
        frame.insert(0, "user_id", [f"u{i % 500}" for i in range(len(X))])
        times = [cutoffs[i % len(cutoffs)] for i in range(len(X))]
        frame.insert(1, "cutoff_time", pd.to_datetime(times))
        frame[LABEL_COLUMN] = getattr(data, f"y_{name}")
        frame["horizon_complete"] = True
        sequences = getattr(data, f"sequences_{name}")
        if sequences is not None:
            frame = pd.concat([frame, sequences.reset_index(drop=True)], axis=1)
        frames.append(frame)
    labeled = LabeledFeatures(pd.concat(frames, ignore_index=True), list(data.feature_columns))
    return labeled, data.split
