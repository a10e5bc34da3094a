"""Pretraining the event encoder on next-event prediction, and fine-tuning it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch

from ml import settings
from ml.families.torch_seq.encoder import (
    ENCODER_PARTS,
    encoder_architecture,
    load_encoder_into,
    save_encoder,
)
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet
from ml.families.torch_seq.pretrain import (
    NextEventNet,
    PretrainParams,
    pretrain_encoder,
    pretraining_sequences,
)
from ml.families.torch_seq.search import SeqSearch, first_trials
from ml.families.torch_seq.train import train_sequence_model
from ml.splits import SplitData
from ml.study import StudyBudget, optuna_storage, tune
from ml.synthetic_split import make_split_data
from tests.ml.test_seq_tuning import TinyTorchSeq
from tests.ml.test_study import Untouchable

pytestmark = pytest.mark.usefixtures("single_thread_torch")

CPU = torch.device("cpu")
SMALL = PretrainParams(
    hidden_size=16, embedding_dim=8, category_buckets=64, max_length=20, batch_size=128,
    max_epochs=3, max_rows=0, learning_rate=1e-2,
)  # fmt: skip


@pytest.fixture(scope="module")
def data() -> SplitData:
    return make_split_data(seed=5, n_train=800, n_eval=300, with_sequences=True)


@pytest.fixture(scope="module")
def encoder(data: SplitData, single_thread_torch: None):  # noqa: ANN201
    return pretrain_encoder(data, SMALL, device=CPU)


def test_pretraining_reads_no_label_and_nothing_of_the_promotion_role(data: SplitData) -> None:
    blind = replace(
        data,
        y_train=Untouchable(),
        y_validation=Untouchable(),
        X_promotion=Untouchable(),
        y_promotion=Untouchable(),
        sequences_promotion=Untouchable(),
        keys_promotion=Untouchable(),
    )
    encoder = pretrain_encoder(blind, replace(SMALL, max_epochs=1), device=CPU)
    assert encoder.train_rows > 0 and encoder.held_out_rows > 0


def test_the_state_after_an_event_never_reads_a_later_event(data: SplitData) -> None:
    """Causal: what predicts event t + 1 has read events 0..t only, so changing the events
    after t changes nothing at t."""
    torch.manual_seed(0)
    model = NextEventNet(SMALL).eval()
    types = torch.randint(1, 5, (4, 12))
    categories = torch.randint(2, 60, (4, 12))
    continuous = torch.rand(4, 12, 4)
    type_logits, category_logits = model(types, categories, continuous)
    later_types, later_categories = types.clone(), categories.clone()
    later_types[:, 7:] = torch.randint(1, 5, (4, 5))
    later_categories[:, 7:] = torch.randint(2, 60, (4, 5))
    later_continuous = continuous.clone()
    later_continuous[:, 7:] = torch.rand(4, 5, 4)
    again_types, again_categories = model(later_types, later_categories, later_continuous)
    torch.testing.assert_close(again_types[:, :7], type_logits[:, :7])
    torch.testing.assert_close(again_categories[:, :7], category_logits[:, :7])
    assert not torch.allclose(again_types[:, 7:], type_logits[:, 7:])


def test_held_out_users_are_never_pretrained_on(data: SplitData) -> None:
    train_rows, held_out = pretraining_sequences(data)
    assert set(train_rows["user_key"]).isdisjoint(held_out["user_key"])
    assert len(held_out) > 0 and (train_rows["event_type_codes"].map(len) >= 2).all()


def test_pretraining_learns_the_next_event(encoder) -> None:  # noqa: ANN001
    first, last = encoder.history[0], encoder.history[-1]
    assert last["held_out_loss"] < first["held_out_loss"]
    assert {"held_out_next_type_accuracy", "held_out_next_category_top10"} <= set(last)


def test_the_encoder_loads_into_a_purchase_model_of_its_size(encoder, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "encoder.pt"
    save_encoder(encoder, path, {"snapshot_id": "s1", "version": "3"})
    assert encoder_architecture(path) == SMALL.architecture()
    params = replace(SMALL.seq_params(), pretrained=True)
    net = SequencePropensityNet(5, params)
    assert load_encoder_into(net, params, path) == {"snapshot_id": "s1", "version": "3"}
    for key, value in net.state_dict().items():
        if key.startswith(ENCODER_PARTS):
            torch.testing.assert_close(value, encoder.state[key])
    with pytest.raises(ValueError, match="GRU"):
        bigger = replace(params, hidden_size=32)
        load_encoder_into(SequencePropensityNet(5, bigger), bigger, path)
    with pytest.raises(FileNotFoundError, match="behaviour_encoder"):
        load_encoder_into(net, params, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="gru"):
        SeqParams(encoder="transformer", pretrained=True)


def test_a_pretrained_purchase_model_starts_from_the_encoder(
    encoder,  # noqa: ANN001
    data: SplitData,
    tmp_path: Path,
) -> None:
    path = tmp_path / "encoder.pt"
    save_encoder(encoder, path, {"snapshot_id": "s1", "version": "3"})
    params = replace(SMALL.seq_params(), pretrained=True, max_epochs=1, batch_size=256)
    trained = train_sequence_model(data, params, seed=0, device=CPU, encoder=path)
    assert trained.encoder_origin == {"snapshot_id": "s1", "version": "3"}
    scratch = train_sequence_model(data, replace(params, pretrained=False), seed=0, device=CPU)
    assert scratch.encoder_origin == {}


def test_a_new_study_tries_pretrained_and_from_scratch_first() -> None:
    assert first_trials(SeqSearch()) == [{"pretrained": True}, {"pretrained": False}]
    assert first_trials(SeqSearch(pretrained_choices=[False])) == [{"pretrained": False}]


def test_a_new_study_fine_tunes_the_encoder_in_one_trial_and_not_in_the_other(
    encoder,  # noqa: ANN001
    data: SplitData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_store: Path,
) -> None:
    monkeypatch.setenv("PROPENSITY_TRAINING_DIR", str(tmp_path / "training"))
    monkeypatch.setenv("PROPENSITY_TORCH_DEVICE", "cpu")
    save_encoder(encoder, settings.encoder_path(), {"snapshot_id": "s1", "version": "1"})
    storage = str(tmp_path / "optuna.journal")
    budget = StudyBudget(n_trials=2, timeout_s=300, study_name="pretrain", storage=storage)
    search = SeqSearch(
        max_epochs=1, max_train_rows=0, hidden_sizes=[8], max_layers=1, batch_sizes=[256],
        max_lengths=[20], category_buckets=64,
    )  # fmt: skip
    tune(TinyTorchSeq(), data, budget, search, log=lambda _: None)
    trials = optuna.load_study(study_name="pretrain", storage=optuna_storage(storage)).trials
    params = sorted((t.user_attrs["params"] for t in trials), key=lambda p: p["pretrained"])
    assert [p["pretrained"] for p in params] == [False, True]
    # The pretrained trial takes the encoder's size, the other one the search's.
    assert params[1]["hidden_size"] == SMALL.hidden_size and params[0]["hidden_size"] == 8
