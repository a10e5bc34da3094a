"""The sequence network and its configuration (what a trial chooses).

Per event it embeds the event type and the hashed category and projects the continuous inputs
of `inputs.py` (log price, price-missing flag, log seconds before the cutoff, log seconds since
the previous event); a GRU (default) or a small Transformer encodes the sequence; the
standardized static features of `user_features` go through their own layer; both are
concatenated and end in one logit. Gradient boosting sees counts; this model sees order (what
was carted last, what was removed, how fast the visits came).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ml.families.torch_seq.inputs import (
    CONTINUOUS_FEATURES,
    EVENT_TYPE_SLOTS,
    category_vocabulary_size,
)

ENCODERS = ("gru", "transformer")


@dataclass
class SeqParams:
    """Architecture and training settings of one sequence model (what a trial chooses).

    target_ratio: positives / negatives the loss weighting aims at, as in `ml.resampling`
    (1.0 = both classes weigh the same in total); the positive weight is never below 1.
    patience: epochs without a better validation PR-AUC before training stops.
    num_heads: attention heads of the Transformer; hidden_size must be a multiple of it.
    max_train_rows: 0 trains on every training row; more caps the rows per epoch by keeping
    every buyer and a seeded random share of the other rows (a speed knob for the CPU; the
    positive weight is computed on the rows kept).
    pretrained: start the event encoder from the behaviour encoder pretrained on next-event
    prediction (`pretrain.py`) instead of random weights; the architecture must be the
    encoder's (a GRU of its size).
    """

    encoder: str = "gru"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    max_length: int = 50
    category_buckets: int = 1024
    max_epochs: int = 20
    patience: int = 3
    embedding_dim: int = 16
    num_heads: int = 4
    target_ratio: float = 0.5
    grad_clip: float = 1.0
    max_train_rows: int = 0
    pretrained: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"Unknown encoder {self.encoder!r}; choose one of {ENCODERS}")
        if self.encoder == "transformer" and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}"
            )
        positive = ("hidden_size", "num_layers", "batch_size", "max_length", "category_buckets")
        for name in (*positive, "max_epochs", "patience", "embedding_dim", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_train_rows < 0:
            raise ValueError(
                f"max_train_rows must be 0 (all) or positive, got {self.max_train_rows}"
            )
        if self.pretrained and self.encoder != "gru":
            raise ValueError("A pretrained encoder is a GRU: pretrained needs encoder='gru'")
        if not 0 < self.target_ratio <= 1:
            raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SeqParams:
        """Known fields only, so parameters stored by an older version still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


class SequencePropensityNet(nn.Module):
    """Event embeddings -> GRU or Transformer encoder, fused with the static features -> logit.

    `forward` takes right-padded batches (see `ml.sequences`) of any padded width: positions at
    or after a row's length never influence its logit. The GRU summary is its output at the
    newest event; the Transformer masks padded keys, numbers positions backwards from the newest
    event (so extra padding shifts nothing) and averages over the real events. A row without
    events gets a zero sequence summary and is scored from its static features.

    `n_outputs` logits per row (default one, the purchase logit; the next-category model uses
    one per category, `ml.next_category`): the output is (batch,) for one, else (batch, n).
    """

    def __init__(self, n_static: int, params: SeqParams, n_outputs: int = 1) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.encoder_type = params.encoder
        embedding, hidden = params.embedding_dim, params.hidden_size
        self.event_embedding = nn.Embedding(EVENT_TYPE_SLOTS, embedding, padding_idx=0)
        self.category_embedding = nn.Embedding(
            category_vocabulary_size(params.category_buckets), embedding, padding_idx=0
        )
        self.continuous = nn.Linear(len(CONTINUOUS_FEATURES), embedding)
        self.event_input = nn.Sequential(nn.Linear(3 * embedding, hidden), nn.LayerNorm(hidden))
        if params.encoder == "gru":
            self.encoder: nn.Module = nn.GRU(
                hidden,
                hidden,
                num_layers=params.num_layers,
                batch_first=True,
                dropout=params.dropout if params.num_layers > 1 else 0.0,
            )
        else:
            self.positions = nn.Embedding(params.max_length, hidden)
            layer = nn.TransformerEncoderLayer(
                hidden,
                params.num_heads,
                dim_feedforward=2 * hidden,
                dropout=params.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, params.num_layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False
            )
        self.static = nn.Sequential(
            nn.Linear(n_static, hidden), nn.GELU(), nn.Dropout(params.dropout)
        )
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.GELU(),
            nn.Dropout(params.dropout),
            nn.Linear(hidden, n_outputs),
        )

    def event_inputs(
        self, event_types: torch.Tensor, categories: torch.Tensor, continuous: torch.Tensor
    ) -> torch.Tensor:
        """(batch, T, hidden): each event's embeddings and continuous inputs, projected."""
        events = torch.cat(
            [
                self.event_embedding(event_types.long()),
                self.category_embedding(categories.long()),
                self.continuous(continuous),
            ],
            dim=-1,
        )
        return self.event_input(events)

    def gru_states(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, T, hidden) float32: the GRU's state after each event (causal: the state at t
        has read events 0..t only). Outside autocast, in float32: on CUDA autocast runs a cuDNN
        GRU in float16 whatever dtype it was asked for, and nothing here scales gradients for
        float16."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            output, _ = self.encoder(x.float())
        return output

    def forward(
        self,
        event_types: torch.Tensor,
        categories: torch.Tensor,
        continuous: torch.Tensor,
        lengths: torch.Tensor,
        static: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (batch,), or (batch, n_outputs) when n_outputs > 1. event_types, categories:
        int (batch, T); continuous: float (batch, T, len(CONTINUOUS_FEATURES)); lengths: int
        (batch,); static: float (batch, n)."""
        return self.score_events(
            self.event_inputs(event_types, categories, continuous), lengths, static
        )

    def score_events(
        self, x: torch.Tensor, lengths: torch.Tensor, static: torch.Tensor
    ) -> torch.Tensor:
        """`forward` from the projected events x = `event_inputs(...)` (batch, T, hidden): what
        integrated gradients differentiate (`explain.event_attributions`)."""
        lengths = lengths.long()
        has_events = (lengths > 0).unsqueeze(1)
        steps = torch.arange(x.shape[1], device=x.device)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)
        if self.encoder_type == "gru":
            output = self.gru_states(x)
            last = (lengths - 1).clamp(min=0)
            summary = output[torch.arange(output.shape[0], device=x.device), last]
        else:
            back = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(min=0)
            x = x + self.positions(back)
            # A row without events would mask every key (NaN): let it attend to its padding.
            attend = mask | (~has_events & (steps.unsqueeze(0) == 0))
            encoded = self.encoder(x, src_key_padding_mask=~attend)
            weights = mask.unsqueeze(-1).to(encoded.dtype)
            summary = (encoded * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        summary = summary * has_events.to(summary.dtype)
        # The head in float32, so that logits (early stopping, logged metrics, the gate's
        # scores) are the same numbers on every device.
        with torch.autocast(device_type=x.device.type, enabled=False):
            fused = torch.cat([summary.float(), self.static(static.float())], dim=-1)
            logits = self.head(fused)
            return logits.squeeze(-1) if self.n_outputs == 1 else logits
