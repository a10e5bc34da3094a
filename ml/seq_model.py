"""A PyTorch sequence model: each shopper's recent events in order, fused with the static features.

Gradient boosting sees counts; this model sees order (what was carted last, what was removed,
how fast the visits came). Per event it embeds the event type and the hashed category and
projects the continuous inputs of `ml.sequences` (log price, price-missing flag, log seconds
before the cutoff, log seconds since the previous event); a GRU (default) or a small Transformer
encodes the sequence; the standardized static features of `user_features` go through their own
layer; both are concatenated and end in one logit.

Training: BCE with logits with a positive weight (the `class_weight` idea of `ml.resampling`:
positives weigh `target_ratio * negatives / positives` in total), AdamW, gradient clipping, and
early stopping on validation PR-AUC, keeping the best epoch's weights. Only the train and
validation splits are read.

One code path for both devices (`torch_device`): on CUDA with bf16 autocast, TF32 matmuls,
pinned host memory and non-blocking copies; on the CPU in float32, seeded, and deterministic
for a given seed and thread count. The inputs become tensors once (`build_tensors`); each
batch is a slice of them (one fancy-indexing call per batch, no per-row work), cut to the
longest sequence in the batch.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ml.dataset import SEQUENCE_COLUMNS
from ml.propensity_model import select_features
from ml.sequences import (
    CONTINUOUS_FEATURES,
    EVENT_TYPE_SLOTS,
    category_vocabulary_size,
    pad_sequences,
)
from ml.splits import SplitData

DEVICE_VARIABLE = "PROPENSITY_TORCH_DEVICE"
ENCODERS = ("gru", "transformer")
# Standardized static features are clipped to this many standard deviations.
STATIC_CLIP = 5.0


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
        if not 0 < self.target_ratio <= 1:
            raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SeqParams:
        """Known fields only, so parameters stored by an older version still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def torch_device() -> torch.device:
    """CUDA when a GPU is usable, else the CPU; PROPENSITY_TORCH_DEVICE=cpu forces the CPU (and
    =cuda insists on a GPU)."""
    wanted = os.environ.get(DEVICE_VARIABLE, "").strip().lower()
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_VARIABLE}=cuda but torch sees no CUDA GPU")
    if wanted not in ("", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_VARIABLE} must be cpu or cuda, got {wanted!r}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class SequencePropensityNet(nn.Module):
    """Event embeddings -> GRU or Transformer encoder, fused with the static features -> logit.

    `forward` takes right-padded batches (see `ml.sequences`) of any padded width: positions at
    or after a row's length never influence its logit. The GRU summary is its output at the
    newest event; the Transformer masks padded keys, numbers positions backwards from the newest
    event (so extra padding shifts nothing) and averages over the real events. A row without
    events gets a zero sequence summary and is scored from its static features.
    """

    def __init__(self, n_static: int, params: SeqParams) -> None:
        super().__init__()
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
            nn.Linear(hidden, 1),
        )

    def forward(
        self,
        event_types: torch.Tensor,
        categories: torch.Tensor,
        continuous: torch.Tensor,
        lengths: torch.Tensor,
        static: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (batch,). event_types, categories: int (batch, T); continuous: float
        (batch, T, len(CONTINUOUS_FEATURES)); lengths: int (batch,); static: float (batch, n)."""
        events = torch.cat(
            [
                self.event_embedding(event_types.long()),
                self.category_embedding(categories.long()),
                self.continuous(continuous),
            ],
            dim=-1,
        )
        x = self.event_input(events)
        lengths = lengths.long()
        has_events = (lengths > 0).unsqueeze(1)
        steps = torch.arange(x.shape[1], device=x.device)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)
        if self.encoder_type == "gru":
            # float32 in: the GRU is not on autocast's list, its weights stay float32.
            output, _ = self.encoder(x.float())
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
        fused = torch.cat([summary.to(x.dtype), self.static(static).to(x.dtype)], dim=-1)
        return self.head(fused).squeeze(-1)


@dataclass
class SequenceTensors:
    """Model inputs as CPU tensors, built once: compact dtypes, widened on the device."""

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


class _Batches(Sampler[torch.Tensor]):
    """Yields whole batches of row indices (a shuffled permutation split in chunks), so the
    DataLoader fetches each batch with one indexing call instead of row by row."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.generator is None:
            order = torch.arange(self.n)
        else:
            order = torch.randperm(self.n, generator=self.generator)
        yield from order.split(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def make_loader(
    tensors: SequenceTensors,
    batch_size: int,
    device: torch.device,
    shuffle_seed: int | None = None,
) -> DataLoader:
    """Batches of `tensors`, shuffled by a seeded generator when `shuffle_seed` is given, with
    pinned memory on CUDA so that host-to-device copies can be asynchronous."""
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(
        TensorDataset(*tensors.as_tuple()),
        sampler=_Batches(len(tensors), batch_size, generator),
        batch_size=None,
        pin_memory=device.type == "cuda",
    )


def _to_device(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Cuts a batch to its longest sequence and moves it to `device`."""
    event_types, categories, continuous, lengths, static, *rest = batch
    width = max(1, int(lengths.max()))
    parts = (event_types[:, :width], categories[:, :width], continuous[:, :width], lengths, static)
    return tuple(t.to(device, non_blocking=True) for t in (*parts, *rest))


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on the CPU (float32)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (Ampere and later); nothing on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def train_epoch(
    net: SequencePropensityNet,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    grad_clip: float,
) -> float:
    """One pass over `loader`; returns the mean training loss (one host sync per epoch)."""
    net.train()
    total = torch.zeros((), device=device)
    n_rows = 0
    for batch in loader:
        *inputs, labels = _to_device(batch, device)
        with _autocast(device):
            logits = net(*inputs)
        loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
        total += loss.detach() * len(labels)
        n_rows += len(labels)
    return float(total) / max(n_rows, 1)


@torch.inference_mode()
def predict_logits(
    net: SequencePropensityNet,
    tensors: SequenceTensors,
    batch_size: int,
    device: torch.device | None = None,
) -> np.ndarray:
    """Logits (float64) for every row of `tensors`, in order, in eval mode."""
    device = device or next(net.parameters()).device
    net.eval()
    loader = make_loader(
        SequenceTensors(*tensors.as_tuple()[:5]), batch_size, device, shuffle_seed=None
    )
    outputs = []
    for batch in loader:
        with _autocast(device):
            outputs.append(net(*_to_device(batch, device)).float())
    if not outputs:
        return np.empty(0, dtype=np.float64)
    return torch.cat(outputs).cpu().numpy().astype(np.float64)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


@dataclass
class TrainedSequenceModel:
    """A trained network (best validation epoch's weights) and everything needed to score.

    history: one entry per epoch run, {"epoch", "train_loss", "validation_pr_auc"}.
    """

    net: SequencePropensityNet
    scaler: FeatureScaler
    params: SeqParams
    feature_columns: list[str]
    best_epoch: int
    best_validation_pr_auc: float
    history: list[dict[str, float]]
    device: str
    seconds: float
    positive_weight: float

    @property
    def epochs_trained(self) -> int:
        return len(self.history)


def positive_weight(y_train: np.ndarray, target_ratio: float) -> float:
    """Weight of a positive row: positives then weigh target_ratio * negatives in total (not
    below 1, so data already that balanced is left as it is)."""
    y = np.asarray(y_train)
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0:
        raise ValueError("The training split has no positives: there is nothing to learn")
    return max(1.0, target_ratio * negatives / positives)


def training_rows(y_train: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Positions of the training rows to use, in their original order: all of them, or (when
    0 < max_rows < rows) every positive and a seeded random sample of negatives up to max_rows."""
    y = np.asarray(y_train)
    everything = np.arange(len(y))
    if max_rows <= 0 or max_rows >= len(y):
        return everything
    positives, negatives = everything[y == 1], everything[y != 1]
    n_negatives = max(0, max_rows - len(positives))
    sampled = np.random.default_rng(seed).choice(negatives, size=n_negatives, replace=False)
    return np.sort(np.concatenate([positives, sampled]))


def train_sequence_model(
    data: SplitData,
    params: SeqParams,
    seed: int = 0,
    device: torch.device | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainedSequenceModel:
    """Trains on the train split with early stopping on validation PR-AUC.

    Keeps the weights of the best epoch. `on_epoch(epoch, validation_pr_auc)` is called after
    every epoch (epochs count from 0); Optuna's pruning raises optuna.TrialPruned from it, which
    propagates. Reads only the train and validation splits. Same seed, data and device (and,
    on the CPU, thread count) give the same model.
    """
    if data.sequences_train is None or data.sequences_validation is None:
        raise ValueError(
            "The split has no sequences: load it with load_labeled_features(..., "
            "with_sequences=True)"
        )
    device = device or torch_device()
    configure_device(device)
    started = time.perf_counter()
    torch.manual_seed(seed)

    rows = training_rows(data.y_train, params.max_train_rows, seed)
    X_train, y_train = data.X_train.iloc[rows], data.y_train[rows]
    scaler = FeatureScaler.fit(X_train)
    train = build_tensors(scaler, params, X_train, data.sequences_train.iloc[rows], y_train)
    validation = build_tensors(scaler, params, data.X_validation, data.sequences_validation)
    net = SequencePropensityNet(scaler.n_outputs, params).to(device)
    weight = positive_weight(y_train, params.target_ratio)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, device=device))
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    loader = make_loader(train, params.batch_size, device, shuffle_seed=seed)

    best_epoch, best_value, best_state = -1, -math.inf, None
    history: list[dict[str, float]] = []
    for epoch in range(params.max_epochs):
        train_loss = train_epoch(net, loader, optimizer, loss_fn, device, params.grad_clip)
        scores = predict_logits(net, validation, max(params.batch_size, 1024), device)
        value = _pr_auc(data.y_validation, scores)
        history.append({"epoch": epoch, "train_loss": train_loss, "validation_pr_auc": value})
        if value > best_value:
            best_epoch, best_value = epoch, value
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, value)
        if epoch - best_epoch >= params.patience:
            break
    assert best_state is not None  # max_epochs >= 1
    net.load_state_dict(best_state)
    net.eval()
    return TrainedSequenceModel(
        net=net,
        scaler=scaler,
        params=copy.deepcopy(params),
        feature_columns=list(data.feature_columns),
        best_epoch=best_epoch,
        best_validation_pr_auc=best_value,
        history=history,
        device=str(device),
        seconds=time.perf_counter() - started,
        positive_weight=weight,
    )


def _pr_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Validation PR-AUC; NaN scores (a diverged network) count as the worst possible."""
    if not np.all(np.isfinite(scores)):
        return 0.0
    return float(average_precision_score(y, scores))


def predict_proba(
    model: TrainedSequenceModel, model_input: pd.DataFrame, batch_size: int = 1024
) -> np.ndarray:
    """Purchase probabilities (float64), one per row of `model_input`: the feature columns plus
    the SEQUENCE_COLUMNS (`SplitData.model_input`); other columns are ignored. A missing column
    raises ValueError naming it."""
    return _sigmoid(predict_logits(model.net, _input_tensors(model, model_input), batch_size))


def _input_tensors(model: TrainedSequenceModel, model_input: pd.DataFrame) -> SequenceTensors:
    missing = [c for c in SEQUENCE_COLUMNS if c not in model_input.columns]
    if missing:
        raise ValueError(
            f"The input lacks the sequence column(s) {missing} the sequence model reads; pass "
            "features and sequences together (SplitData.model_input or load_scoring_frame)"
        )
    return build_tensors(
        model.scaler, model.params, model_input, model_input[list(SEQUENCE_COLUMNS)]
    )


def feature_contributions(
    model: TrainedSequenceModel, model_input: pd.DataFrame, batch_size: int = 1024
) -> pd.DataFrame:
    """Per row and static feature: how much the feature moved the logit, by occlusion.

    A feature's contribution is the row's logit minus its logit with that feature set to the
    training average (standardized 0, "not missing"), everything else and the events unchanged.
    So the intervention list can name the features behind a sequence model's score too, in the
    same sign convention as XGBoost's SHAP values (larger = pushed the score up). One forward
    pass per feature over the given rows: meant for the top-k list, not for every user.
    """
    tensors = _input_tensors(model, model_input)
    base = predict_logits(model.net, tensors, batch_size)
    scaler = model.scaler
    n_columns = len(scaler.columns)
    contributions = np.empty((len(model_input), n_columns), dtype=np.float64)
    for position, column in enumerate(scaler.columns):
        occluded = tensors.static.clone()
        occluded[:, position] = 0.0
        if column in scaler.missing_columns:
            occluded[:, n_columns + scaler.missing_columns.index(column)] = 0.0
        replaced = SequenceTensors(*tensors.as_tuple()[:4], static=occluded)
        contributions[:, position] = base - predict_logits(model.net, replaced, batch_size)
    return pd.DataFrame(contributions, columns=scaler.columns, index=model_input.index)
