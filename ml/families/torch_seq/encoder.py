"""The pretrained behaviour encoder as a file: save it, read its architecture, load it into a
purchase model. Kept apart from `pretrain.py` so that training can load an encoder without
importing how one is pretrained."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ml.families.torch_seq.net import SeqParams, SequencePropensityNet

if TYPE_CHECKING:
    from ml.families.torch_seq.pretrain import PretrainedEncoder

# The parts of SequencePropensityNet that pretraining trains (state-dict key prefixes).
ENCODER_PARTS = (
    "event_embedding.",
    "category_embedding.",
    "continuous.",
    "event_input.",
    "encoder.",
)


def save_encoder(encoder: PretrainedEncoder, path: Path, origin: dict[str, str]) -> None:
    """One file: the weights, the architecture and `origin` (snapshot, MLflow version),
    written beside and renamed into place (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(
        {
            "state": encoder.state,
            "architecture": encoder.params.architecture(),
            "origin": dict(origin),
        },
        staging,
    )
    os.replace(staging, path)


def encoder_architecture(path: Path) -> dict[str, int] | None:
    """The saved encoder's size (hidden_size, embedding_dim, num_layers, category_buckets), or
    None when there is no encoder yet."""
    if not Path(path).exists():
        return None
    return dict(torch.load(path, map_location="cpu", weights_only=True)["architecture"])


def load_encoder_into(net: SequencePropensityNet, params: SeqParams, path: Path) -> dict[str, str]:
    """Copies the saved encoder's weights into `net`; returns its origin. Raises when there is
    no encoder or its architecture is not `params`'."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"No pretrained behaviour encoder at {path}: materialize training/behaviour_encoder "
            "first, or search without it (pretrained_choices: [false])"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    wanted = {
        "hidden_size": params.hidden_size,
        "embedding_dim": params.embedding_dim,
        "num_layers": params.num_layers,
        "category_buckets": params.category_buckets,
    }
    if params.encoder != "gru" or saved["architecture"] != wanted:
        raise ValueError(
            f"The pretrained encoder is a GRU {saved['architecture']}; this model is a "
            f"{params.encoder} {wanted}"
        )
    missing, unexpected = net.load_state_dict(saved["state"], strict=False)
    if unexpected or any(key.startswith(ENCODER_PARTS) for key in missing):
        raise ValueError(f"Encoder weights do not fit: missing {missing}, unexpected {unexpected}")
    return dict(saved["origin"])
