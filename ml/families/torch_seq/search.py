"""The sequence model's search space: architecture and training settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from ml import settings
from ml.families.torch_seq.encoder import encoder_architecture
from ml.families.torch_seq.net import ENCODERS, SeqParams
from ml.families.torch_seq.pretrain import PretrainParams


@dataclass
class SeqSearch:
    """The search settings of a sequence-model study.

    Searched: `encoders`, `hidden_sizes`, 1..`max_layers` layers, dropout 0..0.4, learning rate
    1e-4..1e-2 and weight decay 1e-6..1e-2 (log scale), `batch_sizes`, `max_lengths`, and the
    loss weighting's target_ratio 0.1..1, and whether the encoder starts from the pretrained
    behaviour encoder (`pretrained_choices`; a pretrained trial takes the encoder's size and
    searches the rest). Fixed per study: `max_epochs`, `patience`, `category_buckets` and
    `max_train_rows` (see SeqParams). A new study's first two trials are one pretrained and
    one from scratch (`first_trials`), so that even a 3-trial study tries both.

    The defaults fit the demo on a CPU: max_train_rows caps the training rows (every buyer is
    kept, non-buyers are sampled) and max_epochs is small; max_train_rows 0 trains on the whole
    train role, as a GPU can afford.
    """

    max_epochs: int = 4
    patience: int = 3
    category_buckets: int = 1024
    max_train_rows: int = 10_000
    encoders: list[str] = field(default_factory=lambda: list(ENCODERS))
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128])
    max_layers: int = 3
    batch_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    max_lengths: list[int] = field(default_factory=lambda: [10, 20, 30, 50])
    pretrained_choices: list[bool] = field(default_factory=lambda: [True, False])


def first_trials(search: SeqSearch) -> list[dict[str, Any]]:
    """What a new study tries first: each pretrained choice once."""
    return [{"pretrained": choice} for choice in search.pretrained_choices]


def suggest_params(trial: optuna.Trial, search: SeqSearch) -> dict[str, Any]:
    """One point of the search space, as a complete SeqParams dict."""
    pretrained = trial.suggest_categorical("pretrained", list(search.pretrained_choices))
    if pretrained:
        # The encoder's own size: the one saved, else the size pretraining uses by default.
        size = encoder_architecture(settings.encoder_path()) or PretrainParams().architecture()
        architecture = {"encoder": "gru", **size}
    else:
        architecture = {
            "encoder": trial.suggest_categorical("encoder", list(search.encoders)),
            "hidden_size": trial.suggest_categorical("hidden_size", list(search.hidden_sizes)),
            "num_layers": trial.suggest_int("num_layers", 1, search.max_layers),
            "category_buckets": search.category_buckets,
        }
    return SeqParams(
        **architecture,
        pretrained=pretrained,
        dropout=trial.suggest_float("dropout", 0.0, 0.4),
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", list(search.batch_sizes)),
        max_length=trial.suggest_categorical("max_length", list(search.max_lengths)),
        target_ratio=trial.suggest_float("target_ratio", 0.1, 1.0),
        max_train_rows=search.max_train_rows,
        max_epochs=search.max_epochs,
        patience=search.patience,
    ).to_dict()
