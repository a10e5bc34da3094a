"""Next-category prediction: ranking metrics on hand-made cases, the baselines, the repeat
term, and a model that learns what only the order of events shows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ml.evaluation.ranking import (
    bootstrap_means,
    has_targets,
    paired_mean_differences,
    ranking_values,
)
from ml.families.torch_seq.net import SeqParams
from ml.next_category.baselines import (
    baseline_scores,
    last_category,
    most_frequent,
    most_recent,
    popularity,
    transition_counts,
)
from ml.next_category.evaluation import evaluate_against_baselines
from ml.next_category.model import (
    NextCategoryNet,
    multi_hot,
    predict_category_proba,
    target_tensor,
    train_category_model,
)
from ml.next_category.serving import choose_actions, newest_cart_category
from ml.splits import SplitData
from ml.synthetic_split import make_split_data
from tests.ml.test_study import Untouchable

pytestmark = pytest.mark.usefixtures("single_thread_torch")

CPU = torch.device("cpu")


def cells(*lists: list[int]) -> pd.Series:
    return pd.Series([np.array(values, dtype=np.int64) for values in lists])


def test_ranking_metrics_on_a_hand_made_case() -> None:
    # Columns are categories 0..4; row 0 ranks 3, 1, 4, 2, 0; row 1 ranks 2, 4, 3, 1, 0.
    scores = np.array([[0.0, 0.8, 0.2, 0.9, 0.5], [0.0, 0.1, 0.9, 0.3, 0.6]])
    targets = cells([1, 2], [1])
    values = ranking_values(scores, targets, k=2)
    # Row 0: category 1 at rank 2 (in the top 2), category 2 at rank 4 (not).
    assert values["recall_at_k"] == pytest.approx([0.5, 0.0])
    ideal_row_0 = 1.0 + 1.0 / np.log2(3)
    assert values["ndcg_at_k"] == pytest.approx([(1.0 / np.log2(3)) / ideal_row_0, 0.0])
    # The first hit: rank 2 in row 0, rank 4 (outside the top k, still counted) in row 1.
    assert values["mrr"] == pytest.approx([0.5, 0.25])


def test_ties_are_ranked_by_index_and_unknown_categories_rank_last() -> None:
    scores = np.array([[0.0, 1.0, 1.0, 1.0]])
    # Equal scores: category 1 first. Category 7 has no column: never a hit.
    values = ranking_values(scores, cells([3, 7]), k=2)
    assert values["recall_at_k"] == pytest.approx([0.0])
    assert values["mrr"] == pytest.approx([1.0 / 3])
    with pytest.raises(ValueError, match="at least one target"):
        ranking_values(scores, cells([]), k=2)
    assert list(has_targets(cells([], [1]))) == [False, True]


def test_intervals_resample_users_and_paired_differences_cancel_what_is_shared() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 3)
    a = {"recall_at_k": rng.random(600)}
    b = {"recall_at_k": a["recall_at_k"] - 0.05}
    interval = bootstrap_means(a, users, n_resamples=300)["recall_at_k"]
    assert interval.low < interval.estimate < interval.high
    difference = paired_mean_differences(a, b, users, n_resamples=300)["recall_at_k"]
    # Every row differs by exactly 0.05: so does every resample's mean.
    assert difference.estimate == pytest.approx(0.05)
    assert difference.low == pytest.approx(0.05) and difference.high == pytest.approx(0.05)
    assert difference.lower_bound > 0


def test_baselines_rank_as_their_rules_say() -> None:
    history = cells([3, 1, 1, 2], [])
    counts = popularity(cells([4], [4], [2]), n_categories=5)
    assert list(counts) == [0, 0, 1, 0, 2]
    frequent = most_frequent(history, counts)
    # Row 0: category 1 twice, then 2 and 3 once (2 is more popular), then 4 by popularity.
    assert list(np.argsort(-frequent[0], kind="stable")[:4]) == [1, 2, 3, 4]
    # A row without history falls back to popularity; "no category" is always last.
    assert list(np.argsort(-frequent[1], kind="stable")[:2]) == [4, 2]
    assert np.argmin(frequent[0]) == 0
    recent = most_recent(history, counts)
    assert list(np.argsort(-recent[0], kind="stable")[:3]) == [2, 1, 3]
    assert list(last_category(cells([3, 0, 2, 0], [0], []))) == [2, 0, 0]
    transitions = transition_counts(cells([1, 2], [2], [3]), cells([4], [4, 1], [1]), 5)
    assert transitions[2, 4] == 2 and transitions[2, 1] == 1 and transitions[3, 1] == 1
    scores = baseline_scores(cells([5, 2]), cells([1, 2], [2]), cells([4], [4, 1]), 6)
    assert np.argmax(scores["markov"][0]) == 4


def test_targets_become_a_multi_hot_matrix() -> None:
    padded = target_tensor(cells([2, 3], [], [9, 1]), n_categories=5)
    assert padded.shape[0] == 3
    hot = multi_hot(padded, 5)
    assert hot.tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]]


def test_the_repeat_term_counts_each_category_of_the_history() -> None:
    params = SeqParams(hidden_size=8, embedding_dim=4, max_length=6, category_buckets=8)
    net = NextCategoryNet(n_static=1, params=params, n_categories=5)
    # Tokens are index + 1; one row: categories 2, 2, 4 (carted), then padding.
    tokens = torch.tensor([[3, 3, 5, 0, 0, 0]])
    types = torch.tensor([[1, 1, 2, 0, 0, 0]])
    history = net.history_counts(types, tokens, torch.tensor([3]))
    assert history[0, :, 0].tolist() == pytest.approx([0, 0, np.log(3), 0, np.log(2)])
    assert history[0, :, 1].tolist() == pytest.approx([0, 0, 0, 0, np.log(2)])
    # Recency: 1 / events since (the newest counts 1), the best per category.
    assert history[0, :, 2].tolist() == pytest.approx([0, 0, 0.5, 0, 1.0])


N_CATEGORIES = 12


def next_of(category: np.ndarray) -> np.ndarray:
    """The toy shop's rule: a shopper moves on to a fixed other category."""
    return (category * 5) % (N_CATEGORIES - 1) + 1


def with_order_targets(data: SplitData, seed: int = 0) -> SplitData:
    """Sequences over N_CATEGORIES - 1 categories whose label window holds next_of(the newest
    event's category) and, for some, a random other: what only the order of events tells."""
    rng = np.random.default_rng(seed)

    def fill(sequences: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
        sequences = sequences.copy()
        categories, targets = [], []
        for cell in sequences["event_type_codes"]:
            row = rng.integers(1, N_CATEGORIES, len(cell)).astype(np.int32)
            categories.append(row)
            if len(row) == 0:
                targets.append(np.array([], dtype=np.int64))
                continue
            target = [int(next_of(np.array(row[-1])))]
            if rng.random() < 0.3:
                target.append(int(rng.integers(1, N_CATEGORIES)))
            targets.append(np.unique(target))
        sequences["category_indexes"] = categories
        return sequences, pd.Series(targets)

    parts = {}
    for name in ("train", "validation", "promotion"):
        sequences, targets = fill(getattr(data, f"sequences_{name}"))
        parts[f"sequences_{name}"] = sequences
        parts[f"next_categories_{name}"] = targets
    return replace(data, **parts)


TOY = SeqParams(
    hidden_size=32,
    embedding_dim=16,
    batch_size=128,
    max_length=10,
    category_buckets=16,
    max_epochs=6,
    patience=2,
    learning_rate=1e-2,
    max_train_rows=0,
)


@pytest.fixture(scope="module")
def toy_data() -> SplitData:
    data = make_split_data(seed=3, n_train=1500, n_eval=600, with_sequences=True)
    return with_order_targets(data)


def test_the_model_learns_what_only_the_order_shows_and_beats_the_baselines(
    toy_data: SplitData,
) -> None:
    model = train_category_model(toy_data, TOY, seed=0, device=CPU)
    evaluation = evaluate_against_baselines(
        toy_data, lambda frame: predict_category_proba(model, frame), n_resamples=200
    )
    recall = evaluation.metrics["model"]["recall_at_k"]
    # Top 10 of 11 categories is too easy to tell anything: MRR is the telling figure here.
    mrr = evaluation.metrics["model"]["mrr"]
    assert mrr.estimate > 0.7, evaluation.markdown()
    assert recall.estimate > 0.9
    # Markov knows the rule too (from the training rows), the others do not.
    for baseline in ("most_popular", "most_frequent", "most_recent"):
        assert evaluation.differences[baseline]["mrr"].low > 0, evaluation.markdown()
    assert "model minus it" in evaluation.markdown()


def test_training_never_reads_the_promotion_role(toy_data: SplitData) -> None:
    blind = replace(
        toy_data,
        X_promotion=Untouchable(),
        y_promotion=Untouchable(),
        sequences_promotion=Untouchable(),
        next_categories_promotion=Untouchable(),
        keys_promotion=Untouchable(),
    )
    train_category_model(blind, replace(TOY, max_epochs=1), seed=0, device=CPU)


def test_probabilities_cover_every_category_but_none(toy_data: SplitData) -> None:
    model = train_category_model(toy_data, replace(TOY, max_epochs=1), seed=0, device=CPU)
    frame = toy_data.model_input("promotion").head(20)
    probabilities = predict_category_proba(model, frame)
    assert probabilities.shape == (20, model.n_categories)
    assert (probabilities[:, 0] == 0).all()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    with pytest.raises(ValueError, match="lacks"):
        predict_category_proba(model, frame.drop(columns=["category_indexes"]))
    # The same rows give the same probabilities whatever else is in the batch.
    again = predict_category_proba(model, toy_data.model_input("promotion").head(5))
    np.testing.assert_allclose(again, probabilities[:5], rtol=1e-5, atol=1e-7)


def test_actions_follow_the_cart_the_purchase_history_and_the_prediction() -> None:
    frame = pd.DataFrame(
        {
            "has_open_cart": [1.0, 0.0, 0.0, 0.0],
            "purchases_lookback": [0.0, 2.0, 1.0, 0.0],
            "hours_since_last_purchase": [np.nan, 200.0, 5.0, np.nan],
            "event_type_codes": cells([1, 2, 1], [4], [4], [1]),
            "category_indexes": cells([7, 8, 9], [3], [3], [5]),
        }
    )
    actions = choose_actions(frame, top_category=np.array([1, 2, 3, 4]))
    assert list(actions["action"]) == [
        "win_back_cart",
        "reengage_lapsing_buyer",
        "offer_in_category",
        "offer_in_category",
    ]
    # The open cart's category is the carted item's (8), not the prediction.
    assert list(actions["action_category_idx"]) == [8, 2, 3, 4]
    assert list(newest_cart_category(cells([2, 1, 2], []), cells([4, 5, 6], []))) == [6, 0]
