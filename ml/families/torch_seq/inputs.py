"""The sequence model's inputs: event sequences as padded arrays, the static features scaled,
both as tensors built once per frame and sliced into batches.

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

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ml.dataset import SEQUENCE_COLUMNS, select_features

if TYPE_CHECKING:
    from ml.families.torch_seq.net import SeqParams

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


STATIC_CLIP = 5.0


@dataclass
class FeatureScaler:
    """Static features to network inputs, fitted on the training split only.

    Counts, hours and prices are heavy-tailed, so each value goes through sign(x)*log1p(|x|)
    first, then is standardized and clipped to +-STATIC_CLIP; NaN becomes 0 (the mean) and every
    column that had NaN in training gets a 0/1 "missing" input, so "never carted" stays distinct
    from "carted an average time ago".
    """

    columns: list[str]
    center: list[float]
    scale: list[float]
    missing_columns: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, X: pd.DataFrame) -> FeatureScaler:
        values = _signed_log(X.to_numpy(dtype=np.float64))
        observed = ~np.isnan(values)
        counts = observed.sum(axis=0)
        filled = np.where(observed, values, 0.0)
        center = filled.sum(axis=0) / np.maximum(counts, 1)
        variance = np.where(observed, (values - center) ** 2, 0.0).sum(axis=0) / np.maximum(
            counts, 1
        )
        scale = np.sqrt(variance)
        scale = np.where(scale > 1e-12, scale, 1.0)
        has_nan = ~observed.all(axis=0)
        missing = [str(c) for c, flag in zip(X.columns, has_nan, strict=True) if flag]
        return cls(
            columns=[str(c) for c in X.columns],
            center=center.tolist(),
            scale=scale.tolist(),
            missing_columns=missing,
        )

    @property
    def n_outputs(self) -> int:
        return len(self.columns) + len(self.missing_columns)

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """float32 (n, n_outputs): the scaled features, then the missing flags."""
        values = _signed_log(select_features(X, self.columns).to_numpy(dtype=np.float64))
        scaled = (values - np.asarray(self.center)) / np.asarray(self.scale)
        scaled = np.clip(np.nan_to_num(scaled, nan=0.0), -STATIC_CLIP, STATIC_CLIP)
        positions = [self.columns.index(c) for c in self.missing_columns]
        flags = np.isnan(values[:, positions]).astype(np.float64)
        return np.concatenate([scaled, flags], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureScaler:
        return cls(**values)


def _signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass
class SequenceTensors:
    """Model inputs as tensors, built once on the CPU in compact dtypes (widened inside the
    network), and moved to the training device once (`to`)."""

    event_types: torch.Tensor  # uint8 (n, max_length)
    categories: torch.Tensor  # int32 (n, max_length)
    continuous: torch.Tensor  # float32 (n, max_length, len(CONTINUOUS_FEATURES))
    lengths: torch.Tensor  # int64 (n,)
    static: torch.Tensor  # float32 (n, n_static)
    labels: torch.Tensor | None = None  # float32 (n,)

    def __len__(self) -> int:
        return len(self.lengths)

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        inputs = (self.event_types, self.categories, self.continuous, self.lengths, self.static)
        return inputs if self.labels is None else (*inputs, self.labels)

    def to(self, device: torch.device) -> SequenceTensors:
        """The same tensors on `device` (themselves when they are there already)."""
        return SequenceTensors(*(t.to(device) for t in self.as_tuple()))


def build_tensors(
    scaler: FeatureScaler,
    params: SeqParams,
    features: pd.DataFrame,
    sequences: pd.DataFrame,
    labels: np.ndarray | None = None,
) -> SequenceTensors:
    """Pads the sequences and scales the features of one split, once, in vectorized code."""
    if len(features) != len(sequences):
        raise ValueError(f"{len(features)} feature rows but {len(sequences)} sequence rows")
    padded = pad_sequences(sequences, params.max_length, params.category_buckets)
    return SequenceTensors(
        event_types=torch.from_numpy(padded.event_types.astype(np.uint8)),
        categories=torch.from_numpy(padded.categories.astype(np.int32)),
        continuous=torch.from_numpy(padded.continuous),
        lengths=torch.from_numpy(padded.lengths),
        static=torch.from_numpy(scaler.transform(features)),
        labels=None if labels is None else torch.from_numpy(np.asarray(labels, np.float32)),
    )


# Rows of this many batches are sorted by length together before they are cut into batches.
BUCKET_BATCHES = 32
# A batch is cut to its longest sequence rounded up to a multiple of this: few distinct widths,
# so a compiled network (`PROPENSITY_TORCH_COMPILE`) compiles a handful of shapes, not fifty.
WIDTH_STEP = 8


def batch_rows(
    lengths: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    order: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Row indices (CPU) of each batch of one pass.

    Shuffled (a seeded `generator`): a random permutation, cut into buckets of BUCKET_BATCHES
    batches whose rows are sorted by sequence length and then cut into batches, the batches in
    random order. Each batch then holds rows of similar length and is padded (and computed) to
    little more than they need; the rows of a batch are still a random draw from its bucket.
    Not shuffled: `order` (a permutation), or the rows as they are.
    """
    if len(lengths) == 0:
        return []
    if generator is None:
        rows = order if order is not None else torch.arange(len(lengths))
        return list(rows.split(batch_size))
    shuffled = torch.randperm(len(lengths), generator=generator)
    batches: list[torch.Tensor] = []
    for bucket in shuffled.split(batch_size * BUCKET_BATCHES):
        by_length = bucket[torch.argsort(lengths[bucket], stable=True)]
        batches.extend(by_length.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class Batches:
    """Batches of `tensors` on `device`, each cut to its rows' longest sequence (rounded up to
    WIDTH_STEP); a fresh pass (a new shuffle) every time it is iterated.

    The tensors move to the device once (`SequenceTensors.to`), and every batch is gathered
    there: each pass sends one index tensor to the device and takes the batch widths from a CPU
    copy of the lengths, so the host never waits for the GPU between batches.
    """

    def __init__(
        self,
        tensors: SequenceTensors,
        batch_size: int,
        device: torch.device,
        shuffle_seed: int | None = None,
        order: torch.Tensor | None = None,
    ) -> None:
        self.tensors = tensors.to(device)
        self.lengths = tensors.lengths.cpu()
        self.batch_size, self.device, self.order = batch_size, device, order
        self.generator = (
            None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        )
        self.full_width = int(tensors.event_types.shape[1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        batches = batch_rows(self.lengths, self.batch_size, self.generator, self.order)
        if not batches:
            return
        widths = [self._width(int(self.lengths[rows].max())) for rows in batches]
        all_rows = torch.cat(batches).to(self.device, non_blocking=True)
        start = 0
        for rows_cpu, width in zip(batches, widths, strict=True):
            rows = all_rows[start : start + len(rows_cpu)]
            start += len(rows_cpu)
            event_types, categories, continuous, lengths, static, *rest = (
                t.index_select(0, rows) for t in self.tensors.as_tuple()
            )
            yield (
                event_types[:, :width],
                categories[:, :width],
                continuous[:, :width],
                lengths,
                static,
                *rest,
            )

    def _width(self, longest: int) -> int:
        return min(self.full_width, max(WIDTH_STEP, math.ceil(longest / WIDTH_STEP) * WIDTH_STEP))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def make_loader(
    tensors: SequenceTensors,
    batch_size: int,
    device: torch.device,
    shuffle_seed: int | None = None,
    order: torch.Tensor | None = None,
) -> Batches:
    """Batches of `tensors` on `device`, shuffled by a seeded generator when `shuffle_seed` is
    given, or in the row order `order` (a permutation)."""
    return Batches(tensors, batch_size, device, shuffle_seed, order)
