"""Pretraining the sequence family's event encoder on next-event prediction: no labels needed.

The encoder (event and category embeddings, the projection of the continuous inputs and the
GRU of `net.SequencePropensityNet`) reads a shopper's events oldest first; after each event its
state predicts the next event's type and category (two softmax heads, causal: the GRU's state
at t has read events 0..t only). Every shopper's sequence teaches it, buyer or not, which is
most of what a shop has.

Point in time: it reads only the sequences of the tuning roles (train and validation cutoffs),
whose events all lie before their cutoffs, so nothing at or after the last validation cutoff:
no event of the promotion window or later. It reads no label. A tenth of the users (by a hash
of the user id) are held out for the curves (next-type accuracy and next-category top-10
accuracy after each epoch).

The purchase model fine-tunes it (`SeqParams.pretrained`): `encoder.load_encoder_into` copies these
weights into a SequencePropensityNet of the same size, whose head and static layer start fresh.
The encoder is saved as one file (`encoder.save_encoder`): its weights, its architecture and
where it came from, replaced atomically, so a study never reads a half-written one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ml.dataset import SEQUENCE_COLUMNS
from ml.families.torch_seq.encoder import ENCODER_PARTS
from ml.families.torch_seq.inputs import (
    EVENT_TYPE_SLOTS,
    FeatureScaler,
    SequenceTensors,
    build_tensors,
    category_vocabulary_size,
    make_loader,
)
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet
from ml.families.torch_seq.train import configure_device, torch_device
from ml.splits import SplitData


@dataclass
class PretrainParams:
    """The encoder's size (a purchase-model trial with pretrained=True takes the same) and the
    pretraining budget: max_epochs passes over at most max_rows sequences (0: all of them)."""

    hidden_size: int = 64
    embedding_dim: int = 16
    num_layers: int = 1
    category_buckets: int = 1024
    max_length: int = 50
    batch_size: int = 256
    learning_rate: float = 3e-3
    max_epochs: int = 2
    max_rows: int = 10_000
    seed: int = 0

    def seq_params(self) -> SeqParams:
        """The SequencePropensityNet settings with this encoder's architecture."""
        return SeqParams(
            encoder="gru",
            hidden_size=self.hidden_size,
            embedding_dim=self.embedding_dim,
            num_layers=self.num_layers,
            category_buckets=self.category_buckets,
            max_length=self.max_length,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
        )

    def architecture(self) -> dict[str, int]:
        return {
            "hidden_size": self.hidden_size,
            "embedding_dim": self.embedding_dim,
            "num_layers": self.num_layers,
            "category_buckets": self.category_buckets,
        }


class NextEventNet(nn.Module):
    """The encoder of a SequencePropensityNet and two heads on its state after each event."""

    def __init__(self, params: PretrainParams, n_category_tokens: int | None = None) -> None:
        super().__init__()
        # n_static=1: the static layer and head exist but are not used (nor trained) here.
        self.net = SequencePropensityNet(1, params.seq_params())
        self.next_type = nn.Linear(params.hidden_size, EVENT_TYPE_SLOTS)
        # One output per category token that occurs (not per bucket): the head over every
        # position is most of pretraining's cost.
        tokens = n_category_tokens or category_vocabulary_size(params.category_buckets)
        self.next_category = nn.Linear(params.hidden_size, tokens)

    def forward(
        self, event_types: torch.Tensor, categories: torch.Tensor, continuous: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the next event's type (batch, T, slots) and category token
        (batch, T, tokens), from the state after each event."""
        states = self.net.gru_states(self.net.event_inputs(event_types, categories, continuous))
        return self.next_type(states), self.next_category(states)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (CPU), keyed as in SequencePropensityNet."""
        return {
            key: value.detach().cpu().clone()
            for key, value in self.net.state_dict().items()
            if key.startswith(ENCODER_PARTS)
        }


def next_event_loss(
    model: NextEventNet,
    event_types: torch.Tensor,
    categories: torch.Tensor,
    continuous: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy of the next type plus the next category over every position that has
    a next event; also the counts of correct next types and of next categories in the top 10."""
    type_logits, category_logits = model(event_types, categories, continuous)
    width = event_types.shape[1]
    steps = torch.arange(width - 1, device=event_types.device)
    has_next = steps.unsqueeze(0) < (lengths.long() - 1).unsqueeze(1)
    type_logits = type_logits[:, :-1][has_next].float()
    category_logits = category_logits[:, :-1][has_next].float()
    next_types = event_types[:, 1:][has_next].long()
    next_categories = categories[:, 1:][has_next].long()
    loss = nn.functional.cross_entropy(type_logits, next_types) + nn.functional.cross_entropy(
        category_logits, next_categories
    )
    top10 = category_logits.topk(min(10, category_logits.shape[1]), dim=1).indices
    counts = {
        "positions": torch.tensor(float(len(next_types)), device=loss.device),
        "type_correct": (type_logits.argmax(dim=1) == next_types).float().sum(),
        "category_top10": (top10 == next_categories.unsqueeze(1)).any(dim=1).float().sum(),
    }
    return loss, counts


@dataclass
class PretrainedEncoder:
    """A pretrained encoder and its curves (one entry per epoch)."""

    state: dict[str, torch.Tensor]
    params: PretrainParams
    history: list[dict[str, float]] = field(default_factory=list)
    train_rows: int = 0
    held_out_rows: int = 0
    device: str = "cpu"
    seconds: float = 0.0


def held_out_users(users: np.ndarray) -> np.ndarray:
    """A fixed tenth of the users (by a hash of the id), the same whatever the rows."""
    return (pd.util.hash_array(np.asarray(users, dtype=np.int64)) % 10) == 0


def pretraining_sequences(data: SplitData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pretraining rows, held-out rows): the tuning roles' sequences with at least two events,
    split by user. Reads the train and validation roles only."""
    if data.sequences_train is None or data.sequences_validation is None:
        raise ValueError("The split has no sequences: load it with with_sequences=True")
    frames = []
    for keys, sequences in (
        (data.keys_train, data.sequences_train),
        (data.keys_validation, data.sequences_validation),
    ):
        frame = sequences.reset_index(drop=True).copy()
        # Without keys (a hand-built split) every row is its own user.
        users = np.arange(len(frame)) if keys is None else keys["user_id"].to_numpy()
        frame["user_key"] = users
        frames.append(frame)
    pooled = pd.concat(frames, ignore_index=True)
    lengths = pooled["event_type_codes"].map(len).to_numpy()
    pooled = pooled[lengths >= 2].reset_index(drop=True)
    held_out = held_out_users(pooled["user_key"].to_numpy())
    return pooled[~held_out].reset_index(drop=True), pooled[held_out].reset_index(drop=True)


def sequence_tensors(sequences: pd.DataFrame, params: SeqParams) -> SequenceTensors:
    """Tensors of the SEQUENCE_COLUMNS alone (no static features): what the encoder reads."""
    empty = pd.DataFrame(index=range(len(sequences)))
    return build_tensors(
        FeatureScaler.fit(empty),
        params,
        empty,
        sequences[list(SEQUENCE_COLUMNS)].reset_index(drop=True),
    )


def pretrain_encoder(
    data: SplitData, params: PretrainParams | None = None, device: torch.device | None = None
) -> PretrainedEncoder:
    """Trains NextEventNet on the tuning roles' sequences (at most params.max_rows, a seeded
    sample) and returns the encoder's weights after the last epoch with the curves."""
    params = params or PretrainParams()
    device = device or torch_device()
    configure_device(device)
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    train_rows, held_out_rows = pretraining_sequences(data)
    if len(train_rows) == 0:
        raise ValueError("No sequence of two events or more in the tuning roles: nothing to learn")
    rng = np.random.default_rng(params.seed)
    if 0 < params.max_rows < len(train_rows):
        keep = np.sort(rng.choice(len(train_rows), size=params.max_rows, replace=False))
        train_rows = train_rows.iloc[keep].reset_index(drop=True)
    if params.max_rows > 0:  # 0: every sequence, held-out users' ones included
        held_out_rows = held_out_rows.head(max(params.max_rows // 5, 1))
    train = sequence_tensors(train_rows, params.seq_params())
    held_out = sequence_tensors(held_out_rows, params.seq_params()).to(device)
    held_out_max = int(held_out.categories.max()) if len(held_out) else 0
    n_tokens = max(int(train.categories.max()), held_out_max) + 1
    model = NextEventNet(params, n_tokens).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate)
    loader = make_loader(train, params.batch_size, device, shuffle_seed=params.seed)
    history: list[dict[str, float]] = []
    for epoch in range(params.max_epochs):
        model.train()
        total = torch.zeros((), device=device)  # summed on the device: no sync per batch
        for event_types, categories, continuous, lengths, _ in loader:
            loss, _ = next_event_loss(model, event_types, categories, continuous, lengths)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.detach()
        history.append({"epoch": epoch, "train_loss": float(total) / max(len(loader), 1)})
        history[-1].update(evaluate_next_event(model, held_out, params.batch_size, device))
    return PretrainedEncoder(
        state=model.encoder_state(),
        params=params,
        history=history,
        train_rows=len(train_rows),
        held_out_rows=len(held_out_rows),
        device=str(device),
        seconds=time.perf_counter() - started,
    )


@torch.inference_mode()
def evaluate_next_event(
    model: NextEventNet, tensors: Any, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Held-out loss, next-type accuracy and next-category top-10 accuracy."""
    model.eval()
    loader = make_loader(tensors, max(batch_size, 1024), device)
    names = ("loss_sum", "positions", "type_correct", "category_top10")
    sums = dict.fromkeys(names, torch.zeros((), device=device))
    for event_types, categories, continuous, lengths, _ in loader:
        loss, counts = next_event_loss(model, event_types, categories, continuous, lengths)
        counts["loss_sum"] = loss.detach() * counts["positions"]
        sums = {name: sums[name] + counts[name] for name in names}
    totals = {name: float(value) for name, value in sums.items()}
    loss_sum, positions = totals["loss_sum"], max(totals["positions"], 1.0)
    return {
        "held_out_loss": loss_sum / positions if totals["positions"] else math.nan,
        "held_out_next_type_accuracy": totals["type_correct"] / positions,
        "held_out_next_category_top10": totals["category_top10"] / positions,
    }


def encoder_summary(encoder: PretrainedEncoder) -> dict[str, Any]:
    return {
        **asdict(encoder.params),
        "pretrain_rows": encoder.train_rows,
        "held_out_rows": encoder.held_out_rows,
        "trained_on": encoder.device,
        "seconds": round(encoder.seconds, 1),
    }
