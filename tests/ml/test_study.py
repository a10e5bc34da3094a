"""The generic study runner (ml.study) on real Optuna journal storage and a real MLflow store,
with the XGBoost family and tiny budgets (tests/ml/test_seq_tuning.py runs the torch family
through the same runner)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from ml.families.xgboost import FAMILY as XGBOOST
from ml.families.xgboost.search import XGBoostSearch
from ml.resampling import STRATEGIES
from ml.splits import SplitData
from ml.study import (
    STOPPED_AT_ATTR,
    STOPPED_REASON_ATTR,
    Deadline,
    StudyBudget,
    TuningResult,
    best_trial_number,
    keep_model,
    load_best_params,
    load_kept_model,
    optuna_storage,
    run_trials,
    tune,
)

pytestmark = pytest.mark.usefixtures("single_thread_xgboost")

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Tiny:
    """A study budget and the XGBoost search settings in one, with tiny round budgets."""

    storage: str
    n_trials: int = 3
    timeout_s: float = 300
    pruning: bool = True
    study_name: str = XGBOOST.study_name
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    num_boost_round: int = 40
    early_stopping_rounds: int = 10


def tiny_config(storage: Path, **changes) -> Tiny:
    return replace(Tiny(storage=str(storage)), **changes)


def tune_xgb(data: SplitData, config: Tiny, log=print, **keep) -> TuningResult:
    budget = StudyBudget(
        n_trials=config.n_trials,
        timeout_s=config.timeout_s,
        study_name=config.study_name,
        storage=config.storage,
        pruning=config.pruning,
    )
    search = XGBoostSearch(
        list(config.strategies), config.num_boost_round, config.early_stopping_rounds
    )
    return tune(XGBOOST, data, budget, search, log=log, **keep)


def load_trials(config: Tiny) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(
        study_name=config.study_name, storage=optuna_storage(config.storage)
    ).trials


class Untouchable:
    """Stands in for the test split: any use at all fails the test."""

    def __getattribute__(self, name: str):
        raise AssertionError(f"tuning touched the test split (.{name})")

    def __len__(self) -> int:
        raise AssertionError("tuning touched the test split (len)")

    def __getitem__(self, key):
        raise AssertionError("tuning touched the test split ([])")

    def __iter__(self):
        raise AssertionError("tuning touched the test split (iter)")

    def __array__(self, *args, **kwargs):
        raise AssertionError("tuning touched the test split (numpy)")


def test_storage_is_a_journal_file_or_an_rdb_url(tmp_path: Path) -> None:
    journal = tmp_path / "new" / "folder" / "optuna.journal"
    assert isinstance(optuna_storage(str(journal)), JournalStorage)
    assert journal.parent.is_dir()
    rdb = optuna_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(rdb, optuna.storages.RDBStorage) and rdb.heartbeat_interval == 60
    with pytest.raises(ValueError):
        optuna_storage("")


def test_a_rerun_continues_the_same_study(
    split_data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path / "optuna.journal", strategies=("none", "random_under"))
    messages: list[str] = []

    first = tune_xgb(split_data, config, log=messages.append)
    second = tune_xgb(split_data, config, log=messages.append)

    assert (first.n_trials_total, first.n_trials_this_run) == (3, 3)
    assert (second.n_trials_total, second.n_trials_this_run) == (6, 3)
    trials = load_trials(config)
    assert [t.number for t in trials] == list(range(6))
    # The rerun explores new points instead of replaying the first run's seeded samples.
    assert trials[0].params != trials[3].params
    assert {t.params["strategy"] for t in trials} <= {"none", "random_under"}
    assert second.best_value >= first.best_value
    assert sum(m.startswith("trial ") for m in messages) == 6


def test_trials_are_pruned_and_each_is_a_nested_mlflow_run(
    split_data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path / "optuna.journal", n_trials=10)
    messages: list[str] = []
    with mlflow.start_run(run_name="tuning") as parent:
        result = tune_xgb(split_data, config, log=messages.append)

    trials = load_trials(config)
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states
    assert result.n_pruned == states.count(TrialState.PRUNED) >= 1
    assert result.n_complete == states.count(TrialState.COMPLETE)
    assert result.n_pruned + result.n_complete == result.n_trials_this_run == 10
    # The count decides: all 10 trials ran, and the (generous) deadline never fired.
    assert (result.n_trials_requested, result.timed_out) == (10, False)
    assert sum(m.startswith("trial ") for m in messages) == 10
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert (result.best_value, result.best_trial_number) == (best.value, best.number)
    assert {"strategy", "target_ratio", "max_depth", "eta"} <= set(result.best_params)
    assert load_best_params(XGBOOST, config.study_name, config.storage) == result.best_params

    runs = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {f"trial-{t.number}" for t in trials}
    for trial in trials:
        run = by_name[f"trial-{trial.number}"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial_state"] == trial.state.name.lower()
        assert run.data.params["strategy"] == trial.params["strategy"]
        if trial.state == TrialState.COMPLETE:
            # validation_pr_auc is the per-round history; the trial's value is its best round.
            assert run.data.metrics["best_validation_pr_auc"] == pytest.approx(trial.value)
            assert run.data.metrics["best_round"] == trial.user_attrs["best_step"]

    # Refitting the best parameters (round budget included) reproduces the best trial's score.
    refit = XGBOOST.fit(split_data, result.best_params)
    assert refit.validation_pr_auc == pytest.approx(result.best_value)


def test_tuning_never_reads_the_test_split(
    split_data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    poisoned = replace(
        split_data, X_promotion=Untouchable(), y_promotion=Untouchable(), keys_promotion=None
    )
    clean_config = tiny_config(tmp_path / "clean.journal", n_trials=4)
    poisoned_config = tiny_config(tmp_path / "poisoned.journal", n_trials=4)

    tune_xgb(split_data, clean_config, log=lambda _: None)
    tune_xgb(poisoned, poisoned_config, log=lambda _: None)

    def outcome(config: Tiny) -> list[tuple]:
        return [(t.params, t.value, t.state) for t in load_trials(config)]

    assert outcome(poisoned_config) == outcome(clean_config)


def test_the_deadline_stops_the_study_and_cuts_the_trial_in_progress_between_rounds(
    split_data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path / "optuna.journal", n_trials=2)
    before = tune_xgb(split_data, config, log=lambda _: None)
    assert before.n_complete == 2 and not before.timed_out
    # Trials that would boost for many minutes (no early stop, no pruning), a 1 s deadline.
    rounds = 1_000_000
    endless = replace(
        config,
        n_trials=5,
        timeout_s=1.0,
        pruning=False,
        num_boost_round=rounds,
        early_stopping_rounds=rounds,
    )
    messages: list[str] = []
    started = time.monotonic()
    with mlflow.start_run(run_name="tuning") as parent:
        result = tune_xgb(split_data, endless, log=messages.append)
    seconds = time.monotonic() - started

    assert seconds < 30
    assert (result.timed_out, result.n_trials_requested) == (True, 5)
    assert (result.n_trials_this_run, result.n_complete, result.n_pruned) == (1, 0, 0)
    assert result.n_trials_total == 3
    assert result.best_trial_number < 2  # the best stays the one the complete trials found
    cut = load_trials(config)[2]
    assert cut.state == TrialState.FAIL
    assert "timeout of 1s reached" in cut.user_attrs[STOPPED_REASON_ATTR]
    # Stopped between rounds after a small fraction of its rounds, not after the whole trial.
    assert 0 <= cut.user_attrs[STOPPED_AT_ATTR] < rounds / 10
    assert "stopped: study timeout" in messages[-2] and "after 1 of 5 trials" in messages[-1]
    (run,) = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "fail"

    # A study whose only trials were cut has no best parameters: that fails loudly.
    with pytest.raises(RuntimeError, match="no complete trial"):
        tune_xgb(split_data, replace(endless, study_name="cut-only"), log=lambda _: None)


def test_no_trial_starts_after_the_deadline(tmp_path: Path) -> None:
    """Between trials too: an objective that never checks the deadline still runs no more
    trials once it has passed."""
    study = optuna.create_study(
        storage=optuna_storage(str(tmp_path / "optuna.journal")), direction="maximize"
    )

    def slow(trial: optuna.Trial, deadline: Deadline) -> float:
        time.sleep(0.2)
        return trial.suggest_float("x", 0, 1)

    run = run_trials(
        study, slow, 100, 0.5, lambda _: None, describe=lambda _: "", step_name="round"
    )
    assert run.timed_out and run.n_requested == 100
    assert 1 <= len(run.trials) <= 3  # 0.2 s each: the deadline passes during the third
    assert all(t.state == TrialState.COMPLETE for t in run.trials)


def test_the_best_trials_model_is_kept_for_the_data_it_was_fitted_on(
    split_data: SplitData, mlflow_store: Path, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path / "optuna.journal", n_trials=4)
    folder = tmp_path / "kept_models" / "kept"
    result = tune_xgb(split_data, config, log=lambda _: None, keep_best_in=folder, data_id="a")
    best = best_trial_number(XGBOOST, config.study_name, config.storage)
    assert best == result.best_trial_number

    kept = load_kept_model(XGBOOST, folder, config.study_name, best, "a")
    assert kept is not None and kept.summary["reused_from_trial"] == best
    assert kept.validation_pr_auc == pytest.approx(result.best_value)
    # The kept model is the refit: same parameters, same seed, same data.
    refit = XGBOOST.fit(split_data, result.best_params)
    np.testing.assert_allclose(
        XGBOOST.predict(kept.model, split_data.X_promotion),
        XGBOOST.predict(refit.model, split_data.X_promotion),
        rtol=1e-6,
    )
    # Other data, another trial or another study: not reused.
    assert load_kept_model(XGBOOST, folder, config.study_name, best, "b") is None
    assert load_kept_model(XGBOOST, folder, config.study_name, best + 1, "a") is None
    assert load_kept_model(XGBOOST, folder, "another", best, "a") is None

    # Replacing it is atomic: a leftover staging folder of a killed writer changes nothing,
    # and the new model replaces the old one whole.
    (folder.parent / "kept.tmp-999").mkdir()
    keep_model(XGBOOST, refit, folder, config.study_name, best + 1, "c")
    assert load_kept_model(XGBOOST, folder, config.study_name, best, "a") is None
    assert load_kept_model(XGBOOST, folder, config.study_name, best + 1, "c") is not None
    assert sorted(p.name for p in folder.parent.iterdir()) == ["kept", "kept.tmp-999"]


KILLED_WORKER = """
import os, signal, sys
import mlflow, optuna
from ml.liveness import this_worker
from ml.study import WORKER_ATTR, optuna_storage
from ml.tracking import WORKER_TAG
storage, uri = sys.argv[1], sys.argv[2]
study = optuna.create_study(study_name="s", storage=optuna_storage(storage),
                            direction="maximize", load_if_exists=True)
trial = study.ask()
trial.set_user_attr(WORKER_ATTR, this_worker())
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("e")
mlflow.start_run(run_name="trial-0", tags={WORKER_TAG: this_worker()})
os.kill(os.getpid(), signal.SIGKILL)  # mid-trial, mid-run: nothing gets ended
"""


def test_a_killed_workers_trial_and_run_are_ended_by_the_next_study(
    mlflow_store: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from ml.liveness import this_worker
    from ml.study import STOPPED_REASON_ATTR, WORKER_ATTR, open_study
    from ml.tracking import WORKER_TAG, end_orphaned_runs

    storage, uri = str(tmp_path / "optuna.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = subprocess.run([sys.executable, "-c", KILLED_WORKER, storage, uri], check=False)
    assert killed.returncode == -9
    # A trial of a live worker (this process) is in progress at the same time.
    live_study = optuna.load_study(study_name="s", storage=optuna_storage(storage))
    live = live_study.ask()
    live.set_user_attr(WORKER_ATTR, this_worker())

    messages: list[str] = []
    study = open_study("s", storage, seed=0, log=messages.append)

    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING}
    assert "worker process" in study.trials[0].user_attrs[STOPPED_REASON_ATTR]
    assert messages and "trial 0" in messages[0]
    assert best_trial_number_or_none(study) is None  # a failed trial is never a result

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("e")
    with mlflow.start_run(run_name="live", tags={WORKER_TAG: this_worker()}) as live_run:
        (ended,) = end_orphaned_runs()
        statuses = {
            run.info.run_name: run.info.status
            for run in mlflow.search_runs(experiment_names=["e"], output_format="list")
        }
    assert statuses == {"trial-0": "KILLED", "live": "RUNNING"}
    assert ended != live_run.info.run_id
    assert end_orphaned_runs() == []  # nothing left to repair: a rerun changes nothing


def best_trial_number_or_none(study: optuna.Study) -> int | None:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value).number if complete else None
