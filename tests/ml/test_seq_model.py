"""The PyTorch sequence model on the CPU: padding, learning, early stopping, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch
from sklearn.metrics import average_precision_score

from ml.families.torch_seq.inputs import FeatureScaler, build_tensors
from ml.families.torch_seq.net import SeqParams, SequencePropensityNet
from ml.families.torch_seq.train import (
    COMPILE_VARIABLE,
    TrainedSequenceModel,
    compile_requested,
    compiled,
    predict_logits,
    predict_proba,
    torch_device,
    train_sequence_model,
    training_rows,
)
from ml.splits import SplitData
from ml.synthetic_split import make_split_data
from tests.ml.test_study import Untouchable

pytestmark = pytest.mark.usefixtures("single_thread_torch")

CPU = torch.device("cpu")
SMALL = SeqParams(
    hidden_size=16,
    embedding_dim=8,
    batch_size=128,
    max_length=20,
    category_buckets=64,
    max_epochs=3,
    learning_rate=5e-3,
)


@pytest.fixture(scope="module")
def small_data() -> SplitData:
    return make_split_data(seed=1, n_train=600, n_eval=300, with_sequences=True)


@pytest.fixture(scope="module")
def small_model(small_data: SplitData, single_thread_torch: None) -> TrainedSequenceModel:
    return train_sequence_model(small_data, SMALL, seed=0, device=CPU)


def scores(model: TrainedSequenceModel, data: SplitData, split: str = "validation") -> np.ndarray:
    return predict_proba(model, data.model_input(split))


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_more_padding_gives_the_same_logit(encoder: str, sequence_split_data: SplitData) -> None:
    data = sequence_split_data
    params = replace(SMALL, encoder=encoder, hidden_size=32, max_length=20, num_layers=2)
    scaler = FeatureScaler.fit(data.X_train)
    rows = slice(0, 64)
    tensors = build_tensors(
        scaler, params, data.X_validation[rows], data.sequences_validation[rows]
    )
    assert (tensors.lengths == 0).any() and (tensors.lengths == 20).any()
    torch.manual_seed(0)
    net = SequencePropensityNet(scaler.n_outputs, params).eval()

    inputs = tensors.as_tuple()
    extra = 25  # the same events with 25 more padded steps after them
    widened = (
        torch.cat([inputs[0], torch.zeros(64, extra, dtype=inputs[0].dtype)], dim=1),
        torch.cat([inputs[1], torch.zeros(64, extra, dtype=inputs[1].dtype)], dim=1),
        torch.cat([inputs[2], torch.zeros(64, extra, inputs[2].shape[2])], dim=1),
        *inputs[3:],
    )
    with torch.no_grad():
        logits = net(*inputs).numpy()
        logits_widened = net(*widened).numpy()
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits_widened, logits, rtol=1e-5, atol=1e-5)
    # Batches cut to their longest row, down to each row alone: still the same logits.
    for batch_size in (64, 7, 1):
        np.testing.assert_allclose(
            predict_logits(net, tensors, batch_size), logits, rtol=1e-5, atol=1e-5
        )

    # The padding is ignored, the events are not: changing a row's last event moves its logit.
    row = int(torch.argmax(tensors.lengths))
    changed = inputs[0].clone()
    changed[row, tensors.lengths[row] - 1] = 3 if changed[row, tensors.lengths[row] - 1] != 3 else 2
    with torch.no_grad():
        moved = net(changed, *inputs[1:]).numpy()
    assert abs(moved[row] - logits[row]) > 1e-4
    np.testing.assert_allclose(np.delete(moved, row), np.delete(logits, row), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_scoring_is_float32_whatever_autocast_is_active(
    encoder: str, sequence_split_data: SplitData
) -> None:
    """Scores (early stopping, logged metrics, the gate) are float32 numbers on every device:
    predict_logits under an active bf16 autocast gives exactly the logits without it."""
    data = sequence_split_data
    params = replace(SMALL, encoder=encoder, hidden_size=16, max_length=20)
    scaler = FeatureScaler.fit(data.X_train)
    tensors = build_tensors(scaler, params, data.X_train[:200], data.sequences_train[:200])
    net = SequencePropensityNet(scaler.n_outputs, params)
    plain = predict_logits(net, tensors, 64)
    autocast_inside: list[bool] = []
    net.event_input.register_forward_pre_hook(
        lambda module, args: autocast_inside.append(torch.is_autocast_enabled("cpu"))
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        under_autocast = predict_logits(net, tensors, 64)
    assert autocast_inside and not any(autocast_inside)
    np.testing.assert_array_equal(under_autocast, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_trained_on_the_gpu_scores_there_as_on_the_cpu(
    sequence_split_data: SplitData,
) -> None:
    """What the GPU's early stopping reads is what the CPU pyfunc (the gate's) computes."""
    model = train_sequence_model(
        sequence_split_data, replace(SMALL, max_epochs=1), device=torch.device("cuda")
    )
    frame = sequence_split_data.model_input("validation")
    on_gpu = predict_proba(model, frame)
    model.net.to(CPU)
    np.testing.assert_allclose(predict_proba(model, frame), on_gpu, atol=1e-5)


def test_compilation_is_an_option_that_is_off_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = SequencePropensityNet(3, replace(SMALL, hidden_size=8))
    monkeypatch.delenv(COMPILE_VARIABLE, raising=False)
    assert not compile_requested() and compiled(net) is net
    monkeypatch.setenv(COMPILE_VARIABLE, "1")
    step_net = compiled(net)
    assert step_net is not net and step_net._orig_mod is net  # shares the parameters
    monkeypatch.setenv(COMPILE_VARIABLE, "maybe")
    with pytest.raises(ValueError, match=COMPILE_VARIABLE):
        compile_requested()


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_the_gru_and_the_head_run_in_float32_under_autocast(
    encoder: str, sequence_split_data: SplitData
) -> None:
    """Mixed precision may speed up the rest, not these: autocast would run a cuDNN GRU in
    float16 (no gradient scaler here) and hand back low-precision logits. Checked on the CPU
    with bf16 autocast, where the same code paths decide."""
    data = sequence_split_data
    params = replace(SMALL, encoder=encoder, hidden_size=16, max_length=20)
    scaler = FeatureScaler.fit(data.X_train)
    tensors = build_tensors(scaler, params, data.X_train[:32], data.sequences_train[:32])
    net = SequencePropensityNet(scaler.n_outputs, params)
    autocast_in_gru: list[bool] = []
    net.encoder.register_forward_pre_hook(
        lambda module, args: autocast_in_gru.append(torch.is_autocast_enabled("cpu"))
    )

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(*tensors.as_tuple())

    assert logits.dtype == torch.float32
    assert autocast_in_gru == [encoder != "gru"]  # the Transformer may use bf16
    logits.sum().backward()  # and it trains through both precisions
    assert all(p.grad is not None for p in net.head.parameters())


def test_overfits_a_tiny_dataset() -> None:
    tiny = make_split_data(seed=5, n_train=48, n_eval=10, with_sequences=True)
    # Random labels: only memorizing the 48 rows can fit them. Validation = train here.
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1], 24))
    tiny = replace(
        tiny,
        y_train=labels,
        X_validation=tiny.X_train,
        y_validation=labels,
        sequences_validation=tiny.sequences_train,
    )
    params = SeqParams(
        hidden_size=32,
        batch_size=16,
        dropout=0.0,
        weight_decay=0.0,
        learning_rate=1e-2,
        max_epochs=100,
        patience=10,
        target_ratio=1.0,
        category_buckets=64,
    )
    model = train_sequence_model(tiny, params, device=CPU)

    losses = [h["train_loss"] for h in model.history]
    assert losses[-1] < 0.05 < 0.5 < losses[0]
    assert model.best_validation_pr_auc == pytest.approx(1.0)
    probabilities = scores(model, tiny, "train")
    assert probabilities[labels == 1].min() > probabilities[labels == 0].max()


def test_early_stopping_keeps_the_best_epochs_weights(small_data: SplitData) -> None:
    params = replace(SMALL, max_epochs=12, patience=2, learning_rate=2e-2)
    reported: list[tuple[int, float]] = []
    model = train_sequence_model(
        small_data, params, device=CPU, on_epoch=lambda e, v: reported.append((e, v))
    )

    values = [h["validation_pr_auc"] for h in model.history]
    assert reported == [(h["epoch"], h["validation_pr_auc"]) for h in model.history]
    assert model.best_epoch == int(np.argmax(values))
    assert model.best_validation_pr_auc == max(values)
    stopped_early = model.epochs_trained < params.max_epochs
    assert not stopped_early or model.epochs_trained == model.best_epoch + params.patience + 1
    # The returned network is the best epoch's, not the last one's.
    rescored = average_precision_score(small_data.y_validation, scores(model, small_data))
    assert rescored == pytest.approx(model.best_validation_pr_auc, rel=1e-6)


def test_a_pruning_callback_stops_training(small_data: SplitData) -> None:
    def prune_at_epoch_one(epoch: int, value: float) -> None:
        if epoch == 1:
            raise optuna.TrialPruned("stop")

    with pytest.raises(optuna.TrialPruned):
        train_sequence_model(small_data, SMALL, device=CPU, on_epoch=prune_at_epoch_one)


def test_the_same_seed_gives_the_same_model_on_the_cpu(
    small_data: SplitData, small_model: TrainedSequenceModel
) -> None:
    again = train_sequence_model(small_data, SMALL, seed=0, device=CPU)
    other_seed = train_sequence_model(small_data, SMALL, seed=1, device=CPU)

    np.testing.assert_array_equal(scores(again, small_data), scores(small_model, small_data))
    assert again.history == small_model.history
    assert not np.array_equal(scores(other_seed, small_data), scores(small_model, small_data))


def test_training_never_reads_the_test_split(
    small_data: SplitData, small_model: TrainedSequenceModel
) -> None:
    poisoned = replace(
        small_data,
        X_promotion=Untouchable(),
        y_promotion=Untouchable(),
        sequences_promotion=Untouchable(),
        keys_promotion=None,
    )
    model = train_sequence_model(poisoned, SMALL, seed=0, device=CPU)

    for name, tensor in model.net.state_dict().items():
        assert torch.equal(tensor, small_model.net.state_dict()[name]), name
    np.testing.assert_array_equal(scores(model, small_data), scores(small_model, small_data))


def test_predict_needs_features_and_sequences_and_ignores_other_columns(
    small_data: SplitData, small_model: TrainedSequenceModel
) -> None:
    frame = small_data.model_input("promotion")
    expected = predict_proba(small_model, frame)
    assert expected.shape == (len(frame),) and ((expected > 0) & (expected < 1)).all()

    with_keys = frame.assign(user_id=np.arange(len(frame)), purchased=small_data.y_promotion)
    np.testing.assert_array_equal(predict_proba(small_model, with_keys), expected)
    with pytest.raises(ValueError, match="prices"):
        predict_proba(small_model, frame.drop(columns=["prices"]))
    with pytest.raises(ValueError, match="carts_7d"):
        predict_proba(small_model, frame.drop(columns=["carts_7d"]))
    with pytest.raises(ValueError, match="sequence"):
        train_sequence_model(make_split_data(n_train=50, n_eval=20), SMALL, device=CPU)


def test_feature_scaler_uses_train_statistics_and_flags_missing_values(
    small_data: SplitData,
) -> None:
    scaler = FeatureScaler.fit(small_data.X_train)
    assert scaler.missing_columns == ["hours_since_last_cart"]
    train = scaler.transform(small_data.X_train)
    n = len(scaler.columns)
    assert train.shape == (len(small_data.X_train), n + 1) and np.isfinite(train).all()
    assert np.abs(train[:, :n].mean(axis=0)).max() < 0.05
    np.testing.assert_array_equal(
        train[:, n], small_data.X_train["hours_since_last_cart"].isna().to_numpy()
    )
    # Validation is scaled with the training statistics, not its own.
    shifted = small_data.X_validation + 1000.0
    assert scaler.transform(shifted)[:, :n].mean() > 1.0
    restored = FeatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(restored.transform(small_data.X_train), train)


def test_device_is_cuda_only_when_available_and_can_be_forced_to_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROPENSITY_TORCH_DEVICE", raising=False)
    assert torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("PROPENSITY_TORCH_DEVICE", "cpu")
    assert torch_device() == CPU
    monkeypatch.setenv("PROPENSITY_TORCH_DEVICE", "tpu")
    with pytest.raises(ValueError, match="cpu or cuda"):
        torch_device()


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="encoder"):
        SeqParams(encoder="lstm")
    with pytest.raises(ValueError, match="num_heads"):
        SeqParams(encoder="transformer", hidden_size=30, num_heads=4)
    assert SeqParams.from_dict({**SMALL.to_dict(), "removed_field": 1}) == SMALL


def test_max_train_rows_keeps_every_buyer_and_samples_the_rest(small_data: SplitData) -> None:
    y = small_data.y_train
    rows = training_rows(y, max_rows=200, seed=0)
    assert len(rows) == 200 and (np.diff(rows) > 0).all()
    assert y[rows].sum() == y.sum()
    np.testing.assert_array_equal(rows, training_rows(y, 200, seed=0))
    np.testing.assert_array_equal(training_rows(y, 0, seed=0), np.arange(len(y)))
    model = train_sequence_model(
        small_data, replace(SMALL, max_train_rows=200, max_epochs=1, target_ratio=1.0), device=CPU
    )
    # The loss weighting sees the rows kept: target_ratio 1 balances those.
    assert model.positive_weight == pytest.approx((200 - y.sum()) / y.sum())
