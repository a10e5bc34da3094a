"""Event sequences as padded arrays: the input of the sequence model, built once per frame.

`marts.user_sequences` gives each (user, cutoff) row four 1-D arrays, oldest event first (see
`ml.dataset.SEQUENCE_COLUMNS`). A neural network wants rectangles instead: `pad_sequences` keeps
the most recent `max_length` events of every row, left-aligned (oldest kept event at position 0,
padding after the newest), with a mask. It works on all rows at once: every column is
concatenated into one flat array and the kept events are scattered into the rectangle by their
offsets, so there is no Python loop over rows or events (the cost is one `np.concatenate` of the
cells, which runs in C).

Why left-aligned with padding at the end: a GRU reading oldest to newest then ends on the newest
event at position `length - 1`, and extra padding after it cannot change anything before it; the
padded rectangle can also be cut to the longest row of a batch.

Encodings (0 is always padding):
- event types: the codes of `dbt_project/seeds/event_types.csv` (1..5), clipped into
  `EVENT_TYPE_SLOTS`;
- categories: 1 = no category (vocabulary index 0), else 2 + (index - 1) % category_buckets, so
  the embedding table has `category_buckets + 2` rows whatever the shop's vocabulary size. The
  vocabulary numbers categories in order of first appearance, so the modulo hash is
  collision-free up to `category_buckets` categories and spreads the rest evenly;
- continuous (float32, `CONTINUOUS_FEATURES`): log1p(price) with NaN -> 0, a price-missing flag,
  log1p(seconds before the cutoff), and log1p(seconds since the previous event) ("how fast the
  visits came"; 0 for the first kept event).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml.dataset import SEQUENCE_COLUMNS

PADDING = 0
# Event type codes 1..5 exist today; room for more without retraining the embedding's shape.
EVENT_TYPE_SLOTS = 16
# Category token of an event without a category; hashed categories start after it.
NO_CATEGORY = 1
CONTINUOUS_FEATURES = ("log_price", "price_missing", "log_seconds_before_cutoff", "log_gap_seconds")


@dataclass(frozen=True)
class PaddedSequences:
    """Rectangular sequences, one row per input row, events left-aligned, padding at the end.

    event_types, categories: int64 (n, max_length), 0 = padding.
    continuous: float32 (n, max_length, len(CONTINUOUS_FEATURES)), 0 at padding.
    mask: bool (n, max_length), True where there is an event.
    lengths: int64 (n,), the number of kept events (mask.sum(axis=1)).
    """

    event_types: np.ndarray
    categories: np.ndarray
    continuous: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


def category_vocabulary_size(category_buckets: int) -> int:
    """Rows of the category embedding: padding, "no category" and the buckets."""
    return category_buckets + 2


def hash_categories(indexes: np.ndarray, category_buckets: int) -> np.ndarray:
    """Vocabulary indexes (0 = no category) to tokens in [1, category_buckets + 1]."""
    if category_buckets < 1:
        raise ValueError(f"category_buckets must be at least 1, got {category_buckets}")
    indexes = np.asarray(indexes, dtype=np.int64)
    hashed = 2 + np.mod(indexes - 1, category_buckets)
    return np.where(indexes <= 0, NO_CATEGORY, hashed)


def pad_sequences(
    sequences: pd.DataFrame, max_length: int, category_buckets: int
) -> PaddedSequences:
    """Pads the SEQUENCE_COLUMNS of `sequences` into arrays, keeping the last `max_length` events.

    Raises ValueError naming any missing sequence column, or when the four arrays of a row have
    different lengths.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    missing = [column for column in SEQUENCE_COLUMNS if column not in sequences.columns]
    if missing:
        raise ValueError(
            f"The input lacks the sequence column(s) {missing}; a sequence model needs "
            f"{list(SEQUENCE_COLUMNS)} (see ml.splits.SplitData.model_input)"
        )
    n = len(sequences)
    columns = {column: _cells(sequences[column]) for column in SEQUENCE_COLUMNS}
    lengths_by_column = [_cell_lengths(cells) for cells in columns.values()]
    lengths = lengths_by_column[0]
    for column, other in zip(SEQUENCE_COLUMNS[1:], lengths_by_column[1:], strict=True):
        if not np.array_equal(lengths, other):
            row = int(np.flatnonzero(lengths != other)[0])
            raise ValueError(
                f"Row {row}: {SEQUENCE_COLUMNS[0]} has {lengths[row]} events but {column} has "
                f"{other[row]}; every sequence column must have one value per event"
            )

    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, max_length)
    total = int(kept.sum())
    rows = np.repeat(np.arange(n), kept)
    # Position of each kept event inside its row, and where it sits in the flat arrays.
    first_of_row = np.repeat(np.cumsum(kept) - kept, kept)
    positions = np.arange(total) - first_of_row
    flat_index = np.repeat(ends - kept, kept) + positions

    codes = _concatenate(columns["event_type_codes"], np.int64)[flat_index]
    categories = _concatenate(columns["category_indexes"], np.int64)[flat_index]
    prices = _concatenate(columns["prices"], np.float64)[flat_index]
    seconds = _concatenate(columns["seconds_before_cutoff"], np.float64)[flat_index]

    seconds = np.nan_to_num(np.maximum(seconds, 0.0), nan=0.0)
    # The previous event is older, so it has more seconds before the cutoff.
    gaps = np.zeros(total, dtype=np.float64)
    if total > 1:
        gaps[1:] = np.maximum(seconds[:-1] - seconds[1:], 0.0)
    gaps[positions == 0] = 0.0
    price_missing = np.isnan(prices)
    log_price = np.log1p(np.maximum(np.where(price_missing, 0.0, prices), 0.0))

    event_types = np.zeros((n, max_length), dtype=np.int64)
    event_types[rows, positions] = np.clip(codes, 1, EVENT_TYPE_SLOTS - 1)
    category_tokens = np.zeros((n, max_length), dtype=np.int64)
    category_tokens[rows, positions] = hash_categories(categories, category_buckets)
    continuous = np.zeros((n, max_length, len(CONTINUOUS_FEATURES)), dtype=np.float32)
    continuous[rows, positions] = np.stack(
        [log_price, price_missing.astype(np.float64), np.log1p(seconds), np.log1p(gaps)], axis=1
    )
    mask = np.zeros((n, max_length), dtype=bool)
    mask[rows, positions] = True
    return PaddedSequences(
        event_types=event_types,
        categories=category_tokens,
        continuous=continuous,
        mask=mask,
        lengths=kept.astype(np.int64),
    )


def _cells(column: pd.Series) -> np.ndarray:
    """The cells of a list column as an object array; a missing cell (None/NaN) becomes empty."""
    cells = column.to_numpy(dtype=object)
    missing = np.flatnonzero(pd.isna(cells))
    if len(missing):
        cells = cells.copy()
        for row in missing:  # rare: load_labeled_features already coalesces to empty lists
            cells[row] = []
    return cells


def _cell_lengths(cells: np.ndarray) -> np.ndarray:
    """Events per row (`map(len)` runs in C, without a Python-level loop body)."""
    return np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))


def _concatenate(cells: np.ndarray, dtype: type) -> np.ndarray:
    """One flat array of every cell of a column. Cells may be numpy arrays or lists (what MLflow
    hands over after schema enforcement or from JSON); None inside a list becomes NaN."""
    if len(cells) == 0:
        return np.empty(0, dtype=dtype)
    flat = np.concatenate(cells)
    if flat.dtype == object:
        flat = pd.to_numeric(pd.Series(flat), errors="coerce").to_numpy(dtype=np.float64)
    if np.issubdtype(dtype, np.integer) and np.issubdtype(flat.dtype, np.floating):
        flat = np.nan_to_num(flat, nan=0.0)
    return flat.astype(dtype, copy=False)
