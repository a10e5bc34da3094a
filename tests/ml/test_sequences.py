"""Padding event sequences into arrays: against a plain per-row reference and by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ml.dataset import SEQUENCE_COLUMNS
from ml.families.torch_seq.inputs import NO_CATEGORY, _Batches, hash_categories, pad_sequences
from ml.splits import SplitData


def frame(*rows: tuple[list, list, list, list]) -> pd.DataFrame:
    """Rows of (event codes, category indexes, prices, seconds), as the warehouse's dtypes."""
    dtypes = (np.uint8, np.int32, np.float64, np.float64)
    return pd.DataFrame(
        {
            column: [np.asarray(row[i], dtype=dtype) for row in rows]
            for i, (column, dtype) in enumerate(zip(SEQUENCE_COLUMNS, dtypes, strict=True))
        }
    )


def reference_pad(sequences: pd.DataFrame, max_length: int, buckets: int) -> dict:
    """The obvious per-row loop, to check the vectorized version against."""
    n = len(sequences)
    out = {
        "event_types": np.zeros((n, max_length), np.int64),
        "categories": np.zeros((n, max_length), np.int64),
        "continuous": np.zeros((n, max_length, 4), np.float32),
        "mask": np.zeros((n, max_length), bool),
    }
    for i, row in enumerate(sequences.itertuples(index=False)):
        codes, categories, prices, seconds = (np.asarray(v)[-max_length:] for v in row)
        for j in range(len(codes)):
            out["event_types"][i, j] = codes[j]
            out["categories"][i, j] = 1 if categories[j] == 0 else 2 + (categories[j] - 1) % buckets
            price = prices[j]
            gap = 0.0 if j == 0 else seconds[j - 1] - seconds[j]
            out["continuous"][i, j] = [
                0.0 if np.isnan(price) else np.log1p(price),
                float(np.isnan(price)),
                np.log1p(seconds[j]),
                np.log1p(gap),
            ]
            out["mask"][i, j] = True
    return out


def test_matches_a_per_row_reference_on_realistic_sequences(
    sequence_split_data: SplitData,
) -> None:
    sequences = sequence_split_data.sequences_train
    assert (sequences["event_type_codes"].map(len) == 0).any()  # empty rows are covered
    for max_length, buckets in [(50, 1024), (7, 16)]:
        padded = pad_sequences(sequences, max_length, buckets)
        expected = reference_pad(sequences, max_length, buckets)
        np.testing.assert_array_equal(padded.event_types, expected["event_types"])
        np.testing.assert_array_equal(padded.categories, expected["categories"])
        np.testing.assert_array_equal(padded.mask, expected["mask"])
        np.testing.assert_allclose(padded.continuous, expected["continuous"], rtol=1e-6)
        np.testing.assert_array_equal(padded.lengths, padded.mask.sum(axis=1))
        assert padded.event_types.dtype == np.int64 and padded.continuous.dtype == np.float32
        assert padded.lengths.max() == min(max_length, sequences["prices"].map(len).max())


def test_keeps_the_most_recent_events_first_aligned_with_padding_after() -> None:
    sequences = frame(
        ([1, 2, 3, 2], [10, 0, 10, 11], [5.0, np.nan, 7.0, 8.0], [400.0, 300.0, 100.0, 40.0]),
        ([], [], [], []),
        ([4], [3], [1.0], [9.0]),
    )
    padded = pad_sequences(sequences, max_length=3, category_buckets=1000)

    np.testing.assert_array_equal(padded.event_types, [[2, 3, 2], [0, 0, 0], [4, 0, 0]])
    np.testing.assert_array_equal(padded.lengths, [3, 0, 1])
    np.testing.assert_array_equal(padded.categories[0], [NO_CATEGORY, 11, 12])
    # log price (NaN -> 0), price missing, log seconds before the cutoff, log gap to the previous
    np.testing.assert_allclose(
        padded.continuous[0],
        [
            [0.0, 1.0, np.log1p(300.0), 0.0],
            [np.log1p(7.0), 0.0, np.log1p(100.0), np.log1p(200.0)],
            [np.log1p(8.0), 0.0, np.log1p(40.0), np.log1p(60.0)],
        ],
        rtol=1e-6,
    )
    assert not padded.continuous[1].any() and not padded.continuous[2, 1:].any()


def test_categories_hash_into_buckets_apart_from_padding_and_no_category() -> None:
    tokens = hash_categories(np.array([0, 1, 2, 1000, 1001, 123_456_789]), category_buckets=1000)
    np.testing.assert_array_equal(tokens[:5], [NO_CATEGORY, 2, 3, 1001, 2])
    assert 2 <= tokens[5] <= 1001
    with pytest.raises(ValueError):
        hash_categories(np.array([1]), category_buckets=0)


def test_accepts_lists_with_none_as_mlflow_hands_them_over() -> None:
    as_arrays = frame(([1, 2], [5, 6], [3.0, np.nan], [20.0, 10.0]))
    # JSON input: lists, null inside a list, and a whole cell null (no events).
    as_lists = pd.DataFrame(
        {
            "event_type_codes": [[1, 2], None],
            "category_indexes": [[5, 6], None],
            "prices": [[3.0, None], None],
            "seconds_before_cutoff": [[20.0, 10.0], None],
        }
    )

    a = pad_sequences(as_arrays, 4, 8)
    b = pad_sequences(as_lists, 4, 8)
    np.testing.assert_array_equal(b.lengths, [2, 0])
    for field in ("event_types", "categories", "continuous", "mask"):
        np.testing.assert_array_equal(getattr(a, field)[0], getattr(b, field)[0])


def test_missing_columns_and_ragged_rows_are_errors() -> None:
    sequences = frame(([1, 2], [5, 6], [3.0, 4.0], [20.0, 10.0]))
    with pytest.raises(ValueError, match="prices"):
        pad_sequences(sequences.drop(columns=["prices"]), 4, 8)
    ragged = sequences.assign(prices=[np.array([1.0])])
    with pytest.raises(ValueError, match="Row 0: event_type_codes has 2 events but prices has 1"):
        pad_sequences(ragged, 4, 8)
    with pytest.raises(ValueError, match="max_length"):
        pad_sequences(sequences, 0, 8)


def test_training_batches_cover_every_row_once_and_hold_rows_of_similar_length() -> None:
    lengths = torch.randint(1, 51, (5_000,), generator=torch.Generator().manual_seed(0))
    batches = list(_Batches(lengths, 64, torch.Generator().manual_seed(3)))
    again = list(_Batches(lengths, 64, torch.Generator().manual_seed(3)))

    assert sorted(torch.cat(batches).tolist()) == list(range(5_000))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # seeded
    # A batch is padded to its longest row: random batches of 64 would nearly all be padded
    # to about 50, twice the mean length; bucketed ones waste little.
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    assert padded < 1.15 * int(lengths.sum())
