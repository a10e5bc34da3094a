"""A study's trials on local worker processes (ml.tuning_workers) with a real Optuna journal
file and a real MLflow store: the budget is met, whatever a killed worker left. The same on
PostgreSQL, with heartbeats and `propensity tune-worker`: tests/postgres/."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from ml.families.base import PARAMS_ATTR
from ml.families.xgboost import FAMILY as XGBOOST
from ml.families.xgboost.search import XGBoostSearch
from ml.splits import save_split_snapshot
from ml.study import STOPPED_REASON_ATTR, WORKER_ATTR, StudyBudget, optuna_storage
from ml.synthetic_split import make_labeled_features
from ml.tuning_workers import (
    ROUND_ATTR,
    NoQueuedTrial,
    NoSuchStudy,
    Round,
    RoundInProgress,
    _wait_for_study,
    open_round,
    run_on_workers,
    work,
)

FINISHED_OK = (TrialState.COMPLETE, TrialState.PRUNED)


def kill_the_first_fitting_worker(storage: str, study_name: str, killed: list) -> None:
    """SIGKILLs the worker of the first trial seen fitting (its MLflow run started)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=study_name, storage=optuna_storage(storage))
        except KeyError:  # not created yet
            time.sleep(0.1)
            continue
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            run = f"tags.optuna_trial = '{trial.number}'"
            if PARAMS_ATTR in trial.user_attrs and len(mlflow.search_runs(filter_string=run)):
                pid = int(trial.user_attrs[WORKER_ATTR].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(trial.number)
                return
        time.sleep(0.1)


def test_local_workers_make_up_the_budget_of_a_killed_one(
    mlflow_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two workers on two cores
    labeled, split = make_labeled_features()
    snapshot_id = save_split_snapshot(labeled, split, tmp_path / "split")
    storage = str(tmp_path / "optuna.journal")
    budget = StudyBudget(n_trials=6, storage=storage, study_name="local-workers", pruning=False)
    # Long trials (no early stop) so that one is killed mid-way.
    search = XGBoostSearch(num_boost_round=300, early_stopping_rounds=300)
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_the_first_fitting_worker, args=(storage, "local-workers", killed)
    )
    killer.start()
    lines: list[str] = []
    with mlflow.start_run(run_name="study") as parent:
        trials = Round(
            XGBOOST,
            budget,
            search,
            tmp_path / "split",
            snapshot_id,
            parent.info.run_id,
            parent.info.experiment_id,
        )
        result = run_on_workers(trials, n_workers=2, log=lines.append)
    killer.join()
    assert len(killed) == 1, "no worker was killed"

    trials = optuna.load_study(study_name="local-workers", storage=optuna_storage(storage)).trials
    failed = trials[killed[0]]
    assert failed.state == TrialState.FAIL
    assert "died" in failed.user_attrs[STOPPED_REASON_ATTR]  # by its pid: a journal has no beat
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state in FINISHED_OK and retry.params == failed.params
    assert sum(t.state in FINISHED_OK for t in trials) == 6
    assert result.n_complete + result.n_pruned == 6 and not result.timed_out
    assert all(t.user_attrs[ROUND_ATTR] == parent.info.run_id for t in trials)
    assert any("was killed" in line for line in lines)
    # Every trial's MLflow run nests under the study's run.
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert sorted(int(run.data.tags["optuna_trial"]) for run in children) == [
        t.number for t in trials
    ]
    # The run the killed worker left RUNNING was ended when its trial was repaired.
    (orphan,) = [run for run in children if run.data.tags["optuna_trial"] == str(failed.number)]
    assert orphan.info.status == "KILLED"


def test_a_worker_that_loses_the_race_for_the_last_queued_trial_adds_no_trial(
    tmp_path: Path,
) -> None:
    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="last-trial", storage=optuna_storage(storage))
    study.enqueue_trial({"x": 1.0}, user_attrs={ROUND_ATTR: "round-1"})
    # Both workers saw one queued trial; the first pops it.
    winner = _wait_for_study("last-trial", storage, wait_s=0)
    loser = _wait_for_study("last-trial", storage, wait_s=0)
    popped = winner.ask()
    with pytest.raises(NoQueuedTrial):
        loser.optimize(lambda trial: trial.suggest_float("x", 0, 2), n_trials=1)
    trials = study.get_trials()
    assert [(t.number, t.state) for t in trials] == [(popped.number, TrialState.RUNNING)]
    assert trials[0].user_attrs[ROUND_ATTR] == "round-1"


def test_a_worker_for_a_study_that_does_not_exist_says_which_do(tmp_path: Path) -> None:
    storage = str(tmp_path / "optuna.journal")
    optuna.create_study(study_name="purchase-propensity-xgb", storage=optuna_storage(storage))
    started = time.monotonic()
    with pytest.raises(NoSuchStudy, match="studies there: purchase-propensity-xgb"):
        work("purchase-propensity-xbg", storage=storage, wait_s=1.5)
    assert time.monotonic() - started >= 1.5  # it looked for the study that long first


def test_a_second_round_waits_for_a_live_one_and_takes_over_a_dead_ones_queue(
    mlflow_store: Path, tmp_path: Path
) -> None:
    labeled, split = make_labeled_features()
    snapshot_id = save_split_snapshot(labeled, split, tmp_path / "split")
    budget = StudyBudget(n_trials=3, storage=str(tmp_path / "optuna.journal"), study_name="r")
    search = XGBoostSearch(num_boost_round=20, early_stopping_rounds=5)
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name("purchase-propensity").experiment_id

    def a_round(run_id: str) -> Round:
        return Round(
            XGBOOST, budget, search, tmp_path / "split", snapshot_id, run_id, experiment_id
        )

    first = client.create_run(experiment_id, run_name="study-r").info.run_id
    study, _, queued = open_round(a_round(first), log=lambda _: None)
    assert queued == 3  # no worker ran them: its coordinator is still "running"

    second = client.create_run(experiment_id, run_name="study-r").info.run_id
    with pytest.raises(RoundInProgress, match=first):
        open_round(a_round(second), log=lambda _: None)

    # The first coordinator died: its run was ended as KILLED (end_orphaned_runs). The next
    # round takes over its three queued trials and queues none more.
    client.set_terminated(first, status="KILLED")
    study, order, queued = open_round(a_round(second), log=lambda _: None)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert queued == 3 and len(waiting) == 3 and order.round_id == second
    assert all(trial.user_attrs[ROUND_ATTR] == second for trial in waiting)
