"""Padding event sequences into arrays: against a plain per-row reference and by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ml.dataset import SEQUENCE_COLUMNS
from ml.families.torch_seq.inputs import (
    NO_CATEGORY,
    WIDTH_STEP,
    SequenceTensors,
    batch_rows,
    hash_categories,
    make_loader,
    pad_sequences,
)
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
    batches = batch_rows(lengths, 64, torch.Generator().manual_seed(3))
    again = batch_rows(lengths, 64, torch.Generator().manual_seed(3))

    assert sorted(torch.cat(batches).tolist()) == list(range(5_000))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # seeded
    # A batch is padded to its longest row: random batches of 64 would nearly all be padded
    # to about 50, twice the mean length; bucketed ones waste little.
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    assert padded < 1.15 * int(lengths.sum())


def test_a_loader_gathers_batches_on_the_device_cut_to_a_few_widths() -> None:
    """Each batch is the rows batch_rows chose, taken from the tensors on the device, cut to its
    longest sequence rounded up to WIDTH_STEP (few shapes for torch.compile); a new pass is a
    new shuffle."""
    generator = torch.Generator().manual_seed(0)
    n, width = 1_000, 50
    lengths = torch.randint(0, width + 1, (n,), generator=generator)
    tensors = SequenceTensors(
        event_types=torch.randint(1, 6, (n, width), generator=generator).to(torch.uint8),
        categories=torch.randint(1, 9, (n, width), generator=generator).to(torch.int32),
        continuous=torch.randn(n, width, 4, generator=generator),
        lengths=lengths,
        static=torch.randn(n, 3, generator=generator),
        labels=torch.arange(n, dtype=torch.float32),  # each row's label is its position
    )
    loader = make_loader(tensors, 64, torch.device("cpu"), shuffle_seed=1)
    first_pass, second_pass = list(loader), list(loader)

    rows = torch.cat([batch[5] for batch in first_pass]).long()
    assert sorted(rows.tolist()) == list(range(n))
    assert not torch.equal(rows, torch.cat([batch[5] for batch in second_pass]).long())
    widths = set()
    for event_types, categories, continuous, batch_lengths, static, labels in first_pass:
        at = labels.long()
        longest = int(lengths[at].max())
        expected = min(width, max(WIDTH_STEP, -(-longest // WIDTH_STEP) * WIDTH_STEP))
        assert event_types.shape[1] == categories.shape[1] == continuous.shape[1] == expected
        assert torch.equal(event_types, tensors.event_types[at, :expected])
        assert torch.equal(batch_lengths, lengths[at])
        assert torch.equal(static, tensors.static[at])
        widths.add(expected)
    assert widths <= set(range(WIDTH_STEP, width + 1, WIDTH_STEP)) | {width}


def test_a_loader_over_no_rows_yields_no_batch() -> None:
    """A role can hold no row with a target (the category model's validation on a tiny file)."""
    empty = SequenceTensors(
        event_types=torch.zeros((0, 50), dtype=torch.uint8),
        categories=torch.zeros((0, 50), dtype=torch.int32),
        continuous=torch.zeros((0, 50, 4)),
        lengths=torch.zeros(0, dtype=torch.int64),
        static=torch.zeros((0, 3)),
    )
    assert list(make_loader(empty, 64, torch.device("cpu"))) == []
    assert list(make_loader(empty, 64, torch.device("cpu"), shuffle_seed=0)) == []
