"""Training and scoring of the sequence network.

BCE with logits with a positive weight (the `class_weight` idea of `ml.resampling`: positives
weigh `target_ratio * negatives / positives` in total), AdamW, gradient clipping, and early
stopping on validation PR-AUC, keeping the best epoch's weights. Only the train and validation
splits are read.

One code path for both devices (`torch_device`). On CUDA, training runs with bf16 autocast
around what is safe in it (the GRU and the head stay in float32, see `net.py`) and TF32
matmuls; scoring runs in exact float32 (`exact_float32`); each split moves to the GPU once,
batches are gathered there, and inference batches are large. On the CPU everything is float32,
seeded, and deterministic for a given seed and thread count. The inputs become tensors once
(`build_tensors`); each batch is a slice of them (one indexing call per tensor, no per-row
work), cut to the longest sequence in the batch. `PROPENSITY_TORCH_COMPILE=1` runs training
and validation through `torch.compile` (off by default; bench/seq_model.py measures it).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from ml import settings
from ml.dataset import SEQUENCE_COLUMNS
from ml.families.torch_seq.encoder import load_encoder_into
from ml.families.torch_seq.inputs import (
    Batches,
    FeatureScaler,
    SequenceTensors,
    build_tensors,
    make_loader,
)
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet
from ml.splits import SplitData

DEVICE_VARIABLE = "PROPENSITY_TORCH_DEVICE"


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


COMPILE_VARIABLE = "PROPENSITY_TORCH_COMPILE"
# Rows per inference batch on a GPU: large enough to keep an H100/H200 busy, small enough for
# its memory (a GRU of 128 units over 50 events holds about 1.7 GB of states at this size).
GPU_INFERENCE_BATCH = 65_536


def inference_batch_size(device: torch.device, batch_size: int) -> int:
    """Rows per batch when scoring: GPU_INFERENCE_BATCH on CUDA, else at least 1,024."""
    return GPU_INFERENCE_BATCH if device.type == "cuda" else max(batch_size, 1024)


def compile_requested() -> bool:
    """Whether PROPENSITY_TORCH_COMPILE asks for torch.compile (1/true/yes; default off)."""
    value = os.environ.get(COMPILE_VARIABLE, "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{COMPILE_VARIABLE} must be 1 or 0, got {value!r}")
    return value in ("1", "true", "yes")


def compiled(net: nn.Module) -> nn.Module:
    """`torch.compile(net)` when compile_requested(), else `net`. The compiled module shares
    the parameters of `net`: train and predict through it, save and load `net`."""
    return torch.compile(net) if compile_requested() else net


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on the CPU (float32)."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 inside: no autocast, and on CUDA no TF32 in matmuls or cuDNN. Scores
    computed on a GPU then equal the CPU pyfunc's (which the gate uses) up to summation order,
    so early stopping and logged metrics read the same numbers as the gate."""
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (Ampere and later); nothing on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def train_epoch(
    net: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    grad_clip: float,
) -> float:
    """One pass over `loader`; returns the mean training loss (one host sync per epoch)."""
    net.train()
    total = torch.zeros((), device=device)
    n_rows = 0
    for *inputs, labels in loader:
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
    net: nn.Module,
    tensors: SequenceTensors,
    batch_size: int,
    device: torch.device | None = None,
) -> np.ndarray:
    """Logits (float64) for every row of `tensors`, in order, in eval mode and in float32
    (`exact_float32`, whatever autocast is active): (rows,), or (rows, n_outputs) for a network
    with several outputs.

    Rows go through the network shortest sequence first, so that each batch is cut to a width
    close to its own rows' lengths (padding is masked, so the order changes no logit)."""
    device = device or next(net.parameters()).device
    net.eval()
    by_length = torch.argsort(tensors.lengths.cpu(), stable=True)
    loader = make_loader(
        SequenceTensors(*tensors.as_tuple()[:5]), batch_size, device, order=by_length
    )
    outputs = []
    with exact_float32(device):
        for batch in loader:
            outputs.append(net(*batch).float())
    if not outputs:
        return np.empty(0, dtype=np.float64)
    logits = torch.empty((len(tensors), *outputs[0].shape[1:]), dtype=torch.float64)
    logits[by_length] = torch.cat(outputs).cpu().double()
    return logits.numpy()


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
    train_rows: int = 0
    # Where the pretrained encoder it started from came from (snapshot, MLflow version); empty
    # when it trained from scratch.
    encoder_origin: dict[str, str] = field(default_factory=dict)

    @property
    def epochs_trained(self) -> int:
        return len(self.history)


def train_with_early_stopping(
    net: nn.Module,
    run_epoch: Callable[[], float],
    validate: Callable[[], float],
    metric: str,
    params: SeqParams,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[int, float, list[dict[str, float]]]:
    """Epochs of `run_epoch` (returns the training loss) until `validate` (higher is better)
    has not improved for `params.patience` epochs or `params.max_epochs` ran; leaves `net`
    with the best epoch's weights, in eval mode. Returns the best epoch, its value and one
    history entry per epoch ({"epoch", "train_loss", metric}). `on_epoch(epoch, value)` may
    raise (Optuna's pruning), which propagates."""
    best_epoch, best_value, best_state = -1, -math.inf, None
    history: list[dict[str, float]] = []
    for epoch in range(params.max_epochs):
        train_loss = run_epoch()
        value = validate()
        history.append({"epoch": epoch, "train_loss": train_loss, metric: value})
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
    return best_epoch, best_value, history


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
    encoder: Path | None = None,
) -> TrainedSequenceModel:
    """Trains on the train split with early stopping on validation PR-AUC.

    With `params.pretrained` the event encoder starts from the pretrained behaviour encoder
    (the file `encoder`, default `ml.settings.encoder_path()`), the rest from random weights.

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
    train, validation = train.to(device), validation.to(device)  # once, not once per batch
    net = SequencePropensityNet(scaler.n_outputs, params)
    encoder_origin: dict[str, str] = {}
    if params.pretrained:
        encoder_origin = load_encoder_into(net, params, encoder or settings.encoder_path())
    net = net.to(device)
    weight = positive_weight(y_train, params.target_ratio)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weight, device=device))
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    loader = make_loader(train, params.batch_size, device, shuffle_seed=seed)
    step_net = compiled(net)

    best_epoch, best_value, history = train_with_early_stopping(
        net,
        lambda: train_epoch(step_net, loader, optimizer, loss_fn, device, params.grad_clip),
        lambda: _pr_auc(
            data.y_validation,
            predict_logits(
                step_net, validation, inference_batch_size(device, params.batch_size), device
            ),
        ),
        "validation_pr_auc",
        params,
        on_epoch,
    )
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
        train_rows=len(rows),
        encoder_origin=encoder_origin,
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
    return _sigmoid(predict_logits(model.net, input_tensors(model, model_input), batch_size))


def input_tensors(model: TrainedSequenceModel, model_input: pd.DataFrame) -> SequenceTensors:
    missing = [c for c in SEQUENCE_COLUMNS if c not in model_input.columns]
    if missing:
        raise ValueError(
            f"The input lacks the sequence column(s) {missing} the sequence model reads; pass "
            "features and sequences together (SplitData.model_input or load_scoring_frame)"
        )
    return build_tensors(
        model.scaler, model.params, model_input, model_input[list(SEQUENCE_COLUMNS)]
    )
