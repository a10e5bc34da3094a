"""The next-category model: the sequence family's network with one output per category.

It reads what the purchase model reads (the recent events and the static features of
`user_features`, through `ml.families.torch_seq.inputs`) and predicts, for every category, the
probability that the shopper touches it (views, carts, removes or buys an item of it) in the
label window, given that they come back in it: it trains on the training role's rows whose
window holds at least one categorized event (multi-label binary cross-entropy over the
categories), and stops early on the validation role's NDCG@10. The promotion role is never read.

Categories are the warehouse vocabulary's indexes (`marts.categories`); the output width is
fixed when the model is fitted (one past the largest index in the training rows), so a category
first seen later gets no score until the next fit.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from ml.dataset import SEQUENCE_COLUMNS
from ml.evaluation.ranking import has_targets, ranking_values
from ml.families.torch_seq.inputs import FeatureScaler, build_tensors, make_loader
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet
from ml.families.torch_seq.train import (
    compiled,
    configure_device,
    inference_batch_size,
    predict_logits,
    torch_device,
    train_epoch,
    train_with_early_stopping,
)
from ml.next_category.baselines import n_categories_of
from ml.splits import SplitData

# The cart code of dbt_project/seeds/event_types.csv.
CART_CODE = 2
# Target categories kept per training row (the first touched first): a window with more is rare
# (crawlers) and its tail would only add noise to the loss.
MAX_TARGETS = 32
DEFAULT_PARAMS = SeqParams(
    encoder="gru",
    hidden_size=64,
    embedding_dim=16,
    dropout=0.1,
    learning_rate=3e-3,
    batch_size=512,
    max_epochs=4,
    patience=1,
    max_train_rows=15_000,
)


class NextCategoryNet(nn.Module):
    """The sequence network's logits per category, plus a repeat term per (row, category).

    Shoppers mostly come back to categories they already touched: ranking a user's own
    categories by frequency beats popularity by far. A recurrent summary of 64 numbers cannot
    list which of hundreds of categories were in the history, so the repeat term reads them
    directly: per category, log(1 + events in it), log(1 + carts in it) and how recently it was
    touched (1 / events since), through a small layer shared by all categories. The sequence
    network then learns what the counts alone miss.

    Category tokens map back to vocabulary indexes one to one: the model is fitted with
    category_buckets >= n_categories (see `inputs.hash_categories`).
    """

    def __init__(self, n_static: int, params: SeqParams, n_categories: int) -> None:
        super().__init__()
        if params.category_buckets < n_categories:
            raise ValueError(
                f"category_buckets {params.category_buckets} < {n_categories} categories"
            )
        self.n_categories = n_categories
        self.sequence = SequencePropensityNet(n_static, params, n_outputs=n_categories)
        self.repeat = nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 1))

    def history_counts(
        self, event_types: torch.Tensor, categories: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(batch, n_categories, 3): log1p(events), log1p(carts), recency of each category."""
        batch, width = categories.shape
        steps = torch.arange(width, device=categories.device)
        real = steps.unsqueeze(0) < lengths.long().unsqueeze(1)
        # Token t >= 2 is vocabulary index t - 1 (no hashing collisions, see the class doc).
        index = (categories.long() - 1).clamp(min=0)
        index = torch.where(real & (categories.long() >= 2), index, 0)
        index = index.clamp(max=self.n_categories - 1)
        counted = (real & (categories.long() >= 2)).float()
        carts = counted * (event_types.long() == CART_CODE).float()
        since = (lengths.long().unsqueeze(1) - steps.unsqueeze(0)).clamp(min=1).float()
        zeros = torch.zeros((batch, self.n_categories), device=categories.device)
        events_in = zeros.scatter_add(1, index, counted)
        carts_in = zeros.scatter_add(1, index, carts)
        recency = zeros.scatter_reduce(1, index, counted / since, reduce="amax")
        features = torch.stack([events_in.log1p(), carts_in.log1p(), recency], dim=-1)
        features[:, 0] = 0.0  # "no category" collects padding and uncategorized events
        return features

    def forward(
        self,
        event_types: torch.Tensor,
        categories: torch.Tensor,
        continuous: torch.Tensor,
        lengths: torch.Tensor,
        static: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (batch, n_categories); inputs as `SequencePropensityNet.forward`."""
        logits = self.sequence(event_types, categories, continuous, lengths, static)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            history = self.history_counts(event_types, categories, lengths)
            return logits.float() + self.repeat(history).squeeze(-1)


@dataclass
class TrainedCategoryModel:
    """A trained network (best validation epoch) and what scoring needs.

    history: per epoch run, {"epoch", "train_loss", "validation_ndcg_at_10"}.
    """

    net: NextCategoryNet
    scaler: FeatureScaler
    params: SeqParams
    feature_columns: list[str]
    n_categories: int
    best_epoch: int
    best_validation_ndcg: float
    history: list[dict[str, float]]
    device: str
    seconds: float
    train_rows: int = 0


def target_tensor(targets: Sequence[np.ndarray] | pd.Series, n_categories: int) -> torch.Tensor:
    """(rows, MAX_TARGETS) int64 category indexes, -1 for padding; indexes the model has no
    output for (>= n_categories) are dropped."""
    padded = np.full((len(targets), MAX_TARGETS), -1, dtype=np.int64)
    for row, cell in enumerate(targets):
        kept = [int(c) for c in cell if 0 < c < n_categories][:MAX_TARGETS]
        padded[row, : len(kept)] = kept
    return torch.from_numpy(padded)


def multi_hot(padded: torch.Tensor, n_categories: int) -> torch.Tensor:
    """(rows, n_categories) float32 with a 1 at every target of `target_tensor`."""
    hot = torch.zeros((len(padded), n_categories + 1), device=padded.device)
    hot.scatter_(1, torch.where(padded < 0, n_categories, padded), 1.0)
    return hot[:, :n_categories]


def start_from_popularity(net: NextCategoryNet, targets: torch.Tensor, n_categories: int) -> None:
    """Sets the output biases to the log-odds of each category's share of training rows, so
    that training starts from the popularity ranking instead of spending its first epochs
    pushing hundreds of logits from 0 down to the rare rate."""
    share = multi_hot(targets, n_categories).mean(dim=0).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        net.sequence.head[-1].bias.copy_(torch.logit(share))


def rows_to_train_on(targets: pd.Series, max_rows: int, seed: int) -> np.ndarray:
    """Positions of the rows with targets, all of them or a seeded sample of max_rows (kept in
    their original order)."""
    rows = np.flatnonzero(has_targets(targets))
    if 0 < max_rows < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))
    return rows


def train_category_model(
    data: SplitData,
    params: SeqParams = DEFAULT_PARAMS,
    seed: int = 0,
    device: torch.device | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainedCategoryModel:
    """Fits on the train role's rows with targets, early stopping on the validation role's
    NDCG@10; keeps the best epoch's weights. Same seed, data and device (and CPU thread count)
    give the same model."""
    if data.next_categories_train is None or data.next_categories_validation is None:
        raise ValueError(
            "The split has no next-category targets: load it with sequences "
            "(load_split_snapshot(..., with_sequences=True))"
        )
    if data.sequences_train is None or data.sequences_validation is None:
        raise ValueError("The split has no sequences: load it with with_sequences=True")
    device = device or torch_device()
    configure_device(device)
    started = time.perf_counter()
    torch.manual_seed(seed)

    rows = rows_to_train_on(data.next_categories_train, params.max_train_rows, seed)
    if len(rows) == 0:
        raise ValueError("No training row has a category in its label window: nothing to learn")
    train_targets = data.next_categories_train.iloc[rows]
    n_categories = n_categories_of(data.sequences_train["category_indexes"], train_targets)
    # One embedding row per category (no hashing collisions), as NextCategoryNet needs.
    params = replace(params, category_buckets=max(params.category_buckets, n_categories))
    X_train = data.X_train.iloc[rows]
    scaler = FeatureScaler.fit(X_train)
    train = build_tensors(scaler, params, X_train, data.sequences_train.iloc[rows])
    train.labels = target_tensor(train_targets, n_categories)

    validation_rows = np.flatnonzero(has_targets(data.next_categories_validation))
    validation = build_tensors(
        scaler,
        params,
        data.X_validation.iloc[validation_rows],
        data.sequences_validation.iloc[validation_rows],
    )
    validation_targets = list(data.next_categories_validation.iloc[validation_rows])

    net = NextCategoryNet(scaler.n_outputs, params, n_categories)
    start_from_popularity(net, train.labels, n_categories)
    net = net.to(device)
    train, validation = train.to(device), validation.to(device)  # once, not once per batch
    bce = nn.BCEWithLogitsLoss(reduction="sum")

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed over categories, averaged over rows: a mean over hundreds of categories
        would shrink every gradient by their number."""
        return bce(logits, multi_hot(targets, n_categories)) / len(targets)

    optimizer = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    loader = make_loader(train, params.batch_size, device, shuffle_seed=seed)
    step_net = compiled(net)
    best_epoch, best_value, history = train_with_early_stopping(
        net,
        lambda: train_epoch(step_net, loader, optimizer, loss_fn, device, params.grad_clip),
        lambda: _ndcg(
            predict_logits(
                step_net, validation, inference_batch_size(device, params.batch_size), device
            ),
            validation_targets,
        ),
        "validation_ndcg_at_10",
        params,
        on_epoch,
    )
    return TrainedCategoryModel(
        net=net,
        scaler=scaler,
        params=copy.deepcopy(params),
        feature_columns=list(data.feature_columns),
        n_categories=n_categories,
        best_epoch=best_epoch,
        best_validation_ndcg=best_value,
        history=history,
        device=str(device),
        seconds=time.perf_counter() - started,
        train_rows=len(rows),
    )


def _ndcg(logits: np.ndarray, targets: list[np.ndarray]) -> float:
    """Mean NDCG@10; a diverged network (NaN logits) counts as the worst."""
    if not len(targets):
        return 0.0
    if not np.all(np.isfinite(logits)):
        return 0.0
    return float(ranking_values(_masked(logits), targets)["ndcg_at_k"].mean())


def _masked(logits: np.ndarray) -> np.ndarray:
    """Column 0 is "no category": never recommended."""
    logits = np.array(logits, dtype=np.float64)
    logits[:, 0] = -np.inf
    return logits


def predict_category_proba(
    model: TrainedCategoryModel, model_input: pd.DataFrame, batch_size: int = 1024
) -> np.ndarray:
    """(rows, n_categories) probabilities that the shopper touches each category in the label
    window, given that they come back; column 0 ("no category") is 0. `model_input`: the
    feature columns plus SEQUENCE_COLUMNS, as for the purchase model."""
    missing = [c for c in (*model.feature_columns, *SEQUENCE_COLUMNS) if c not in model_input]
    if missing:
        raise ValueError(f"The input lacks the column(s) {missing} the next-category model reads")
    tensors = build_tensors(
        model.scaler, model.params, model_input, model_input[list(SEQUENCE_COLUMNS)]
    )
    logits = _masked(predict_logits(model.net, tensors, batch_size).reshape(len(model_input), -1))
    return 1.0 / (1.0 + np.exp(-logits))
