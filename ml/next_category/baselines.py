"""What a next-category model has to beat: four rules a shop could run without any model.

Each returns scores (rows, categories) that rank every category for every row, column c the
score of category index c (0 = "no category", never recommended). All but `most_popular` read
only the row's own events before its cutoff (the sequence); `most_popular` and `markov` learn
counts from the training role's rows and targets, nothing later. Every rule breaks ties, and
fills the ranks after the user's own categories, by popularity, so each ranks all categories
and recall@10 is comparable across them.

- most_popular: categories by how many training rows touched them in their label window;
- most_frequent: the user's categories by how often they appear in the user's recent events;
- most_recent: the user's categories by how recently the user last touched them;
- markov: first-order transitions, from the category of the user's newest categorized event
  to the categories touched in the label window, counted on the training rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BASELINES = ("most_popular", "most_frequent", "most_recent", "markov")


def flatten(cells: Sequence[np.ndarray] | pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, position within the row, value) of every element of a list column."""
    arrays = [np.asarray(cell, dtype=np.int64) for cell in cells]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    rows = np.repeat(np.arange(len(arrays)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(len(rows)) - starts
    values = np.concatenate(arrays) if len(rows) else np.empty(0, dtype=np.int64)
    return rows, positions, values


def n_categories_of(*columns: Sequence[np.ndarray] | pd.Series) -> int:
    """Columns a score matrix needs: one more than the largest category index seen."""
    largest = 0
    for column in columns:
        _, _, values = flatten(column)
        if len(values):
            largest = max(largest, int(values.max()))
    return largest + 1


def popularity(train_targets: Sequence[np.ndarray] | pd.Series, n_categories: int) -> np.ndarray:
    """How many training rows touched each category in their label window (index 0 is 0)."""
    _, _, values = flatten(train_targets)
    values = values[(values > 0) & (values < n_categories)]
    return np.bincount(values, minlength=n_categories).astype(np.float64)


def _tie_breaker(counts: np.ndarray) -> np.ndarray:
    """Popularity squeezed into [0, 1): added to integer-valued scores it orders ties only."""
    scaled = counts / (counts.max() + 1.0) if counts.max() > 0 else counts
    scaled = scaled.copy()
    scaled[0] = -1.0  # never recommend "no category"
    return scaled


def most_popular(n_rows: int, counts: np.ndarray) -> np.ndarray:
    return np.tile(_tie_breaker(counts), (n_rows, 1))


def most_frequent(history: Sequence[np.ndarray] | pd.Series, counts: np.ndarray) -> np.ndarray:
    """The number of the user's recent events in each category, ties by popularity."""
    scores = most_popular(len(history), counts)
    rows, _, values = flatten(history)
    keep = (values > 0) & (values < len(counts))
    np.add.at(scores, (rows[keep], values[keep]), 1.0)
    return scores


def most_recent(history: Sequence[np.ndarray] | pd.Series, counts: np.ndarray) -> np.ndarray:
    """1 + the position of the user's newest event in each category (newest highest), ties by
    popularity."""
    scores = most_popular(len(history), counts)
    rows, positions, values = flatten(history)
    keep = (values > 0) & (values < len(counts))
    newest = np.zeros_like(scores)
    np.maximum.at(newest, (rows[keep], values[keep]), positions[keep] + 1.0)
    return scores + newest


def last_category(
    history: Sequence[np.ndarray] | pd.Series,
    event_types: Sequence[np.ndarray] | pd.Series | None = None,
    event_type: int | None = None,
) -> np.ndarray:
    """The category of each row's newest categorized event (of `event_type` only, when given,
    read from the row's `event_types`), 0 when it has none."""
    last = np.zeros(len(history), dtype=np.int64)
    rows, positions, values = flatten(history)
    keep = values > 0
    if event_type is not None:
        if event_types is None:
            raise ValueError("event_type needs the rows' event_types")
        keep &= flatten(event_types)[2] == event_type
    order = np.lexsort((positions[keep], rows[keep]))  # by row, then position: newest last
    last[rows[keep][order]] = values[keep][order]
    return last


def transition_counts(
    train_history: Sequence[np.ndarray] | pd.Series,
    train_targets: Sequence[np.ndarray] | pd.Series,
    n_categories: int,
) -> np.ndarray:
    """(categories, categories): training rows whose newest category is a that touched b."""
    last = last_category(train_history)
    rows, _, values = flatten(train_targets)
    froms = last[rows]
    keep = (froms > 0) & (froms < n_categories) & (values > 0) & (values < n_categories)
    counts = np.zeros((n_categories, n_categories))
    np.add.at(counts, (froms[keep], values[keep]), 1.0)
    return counts


def markov(
    history: Sequence[np.ndarray] | pd.Series, transitions: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Transition counts from the row's newest category, ties (and rows whose newest category
    never led anywhere in training) by popularity."""
    last = np.clip(last_category(history), 0, len(counts) - 1)
    return transitions[last] + most_popular(len(history), counts)


def baseline_scores(
    history: Sequence[np.ndarray] | pd.Series,
    train_history: Sequence[np.ndarray] | pd.Series,
    train_targets: Sequence[np.ndarray] | pd.Series,
    n_categories: int,
) -> dict[str, np.ndarray]:
    """Scores of every baseline for the rows of `history` (their category_indexes), learned
    from the training rows' sequences and targets."""
    counts = popularity(train_targets, n_categories)
    transitions = transition_counts(train_history, train_targets, n_categories)
    return {
        "most_popular": most_popular(len(history), counts),
        "most_frequent": most_frequent(history, counts),
        "most_recent": most_recent(history, counts),
        "markov": markov(history, transitions, counts),
    }
