"""Tuning the sequence model through the generic study runner on a real Optuna journal and a
real MLflow store, on the CPU."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from ml.families.torch_seq import TorchSeqFamily
from ml.families.torch_seq.net import SeqParams
from ml.families.torch_seq.search import SeqSearch
from ml.splits import SplitData
from ml.study import (
    STOPPED_AT_ATTR,
    STOPPED_REASON_ATTR,
    StudyBudget,
    TuningResult,
    load_best_params,
    optuna_storage,
    tune,
)
from ml.synthetic_split import make_split_data
from tests.ml.test_study import Untouchable

pytestmark = pytest.mark.usefixtures("single_thread_torch")

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def data() -> SplitData:
    return make_split_data(seed=2, n_train=500, n_eval=300, with_sequences=True)


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_TORCH_DEVICE", "cpu")


class TinyTorchSeq(TorchSeqFamily):
    """The torch family with a pruner that judges early: a family is a class to extend."""

    pruner_startup_trials = 2
    pruner_warmup_steps = 0


FAMILY = TinyTorchSeq()


@dataclass(frozen=True)
class Tiny:
    """A small search space and budget: seconds per trial on one CPU thread."""

    storage: str
    n_trials: int = 3
    timeout_s: float = 300
    pruning: bool = True
    study_name: str = FAMILY.study_name
    search: SeqSearch = field(
        default_factory=lambda: SeqSearch(
            max_epochs=4,
            patience=4,
            category_buckets=64,
            max_train_rows=0,
            hidden_sizes=[8, 16],
            max_layers=2,
            batch_sizes=[64, 128],
            max_lengths=[10, 20],
            pretrained_choices=[False],  # no encoder here: tests/ml/test_pretrain.py has one
        )
    )

    @property
    def max_epochs(self) -> int:
        return self.search.max_epochs


def tiny_config(storage: Path, **changes) -> Tiny:
    return replace(Tiny(storage=str(storage)), **changes)


def tune_sequence_model(data: SplitData, config: Tiny, log=print) -> TuningResult:
    budget = StudyBudget(
        n_trials=config.n_trials,
        timeout_s=config.timeout_s,
        study_name=config.study_name,
        storage=config.storage,
        pruning=config.pruning,
    )
    return tune(FAMILY, data, budget, config.search, log=log)


def load_trials(config: Tiny) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(
        study_name=config.study_name, storage=optuna_storage(config.storage)
    ).trials


def test_a_study_prunes_trials_and_logs_each_as_a_nested_run(
    data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    # The test split is poisoned: any use of it during tuning fails the test.
    poisoned = replace(
        data,
        X_promotion=Untouchable(),
        y_promotion=Untouchable(),
        sequences_promotion=Untouchable(),
    )
    config = tiny_config(tmp_path / "optuna.journal", n_trials=8)
    messages: list[str] = []
    with mlflow.start_run(run_name="seq-tuning") as parent:
        result = tune_sequence_model(poisoned, config, log=messages.append)

    trials = load_trials(config)
    states = [t.state for t in trials]
    assert result.n_pruned == states.count(TrialState.PRUNED) >= 1
    assert result.n_complete == states.count(TrialState.COMPLETE) >= 2
    assert result.n_pruned + result.n_complete == result.n_trials_this_run == 8
    assert (result.n_trials_requested, result.timed_out) == (8, False)
    assert sum(m.startswith("trial ") for m in messages) == 8 and "on cpu" in messages[0]
    for trial in trials:
        # One reported value per epoch run; a pruned trial stopped before max_epochs.
        assert sorted(trial.intermediate_values) == list(range(len(trial.intermediate_values)))
        if trial.state == TrialState.PRUNED:
            assert len(trial.intermediate_values) < config.max_epochs
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert (result.best_value, result.best_trial_number) == (best.value, best.number)
    assert result.best_step == best.user_attrs["best_step"]
    best_params = load_best_params(FAMILY, config.study_name, config.storage)
    assert best_params == result.best_params
    params = SeqParams.from_dict(best_params)
    assert (params.max_epochs, params.category_buckets) == (4, 64)
    assert params.encoder in ("gru", "transformer") and params.hidden_size in (8, 16)

    runs = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {f"trial-{t.number}" for t in trials}
    client = mlflow.MlflowClient()
    for trial in trials:
        run = by_name[f"trial-{trial.number}"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial_state"] == trial.state.name.lower()
        assert run.data.params["encoder"] == trial.params["encoder"]
        history = client.get_metric_history(run.info.run_id, "validation_pr_auc")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == [
            trial.intermediate_values[step] for step in sorted(trial.intermediate_values)
        ]
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["best_validation_pr_auc"] == pytest.approx(trial.value)

    # Retraining the best parameters with the trials' seed reproduces the best trial.
    retrained = FAMILY.fit(data, best_params)
    assert retrained.validation_pr_auc == pytest.approx(result.best_value)

    # A rerun continues the same study, with new samples rather than the first run's again.
    rerun = tune_sequence_model(poisoned, replace(config, n_trials=2), log=lambda _: None)
    assert (rerun.n_trials_total, rerun.n_trials_this_run) == (10, 2)
    trials = load_trials(config)
    assert trials[8].params not in [t.params for t in trials[:8]]
    assert rerun.best_value >= result.best_value


def test_the_deadline_cuts_the_trial_in_progress_between_epochs(
    data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path / "optuna.journal", n_trials=2)
    assert tune_sequence_model(data, config, log=lambda _: None).n_complete == 2
    # Trials that would train for many minutes (no early stop, no pruning), a 1 s deadline.
    epochs = 100_000
    endless = replace(
        config,
        n_trials=3,
        timeout_s=1.0,
        pruning=False,
        search=replace(config.search, max_epochs=epochs, patience=epochs),
    )
    started = time.monotonic()
    with mlflow.start_run(run_name="seq-tuning") as parent:
        result = tune_sequence_model(data, endless, log=lambda _: None)
    seconds = time.monotonic() - started

    assert seconds < 30
    assert (result.timed_out, result.n_trials_requested) == (True, 3)
    assert (result.n_trials_this_run, result.n_complete, result.n_trials_total) == (1, 0, 3)
    cut = load_trials(config)[2]
    assert cut.state == TrialState.FAIL
    assert "timeout of 1s reached" in cut.user_attrs[STOPPED_REASON_ATTR]
    # Stopped between epochs after a small fraction of them, not after the whole trial.
    stopped_at = cut.user_attrs[STOPPED_AT_ATTR]
    assert 0 <= stopped_at < epochs / 10
    (run,) = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert run.info.status == "KILLED"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "validation_pr_auc")
    assert len(history) == stopped_at + 1  # every epoch up to the cut ran to its end
