"""Tuning workers sharing one study in a real PostgreSQL database: `propensity tune-worker`
processes, as one starts them on other machines, each running queued trials with heartbeats,
their trials' MLflow runs in a PostgreSQL tracking store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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
from ml.tracking import KILLED_REASON_TAG
from ml.tuning_workers import Round, open_round

PROPENSITY = Path(sys.executable).parent / "propensity"
FINISHED_OK = (TrialState.COMPLETE, TrialState.PRUNED)
# What a storage under contention reports; none may appear in a worker's output.
LOCK_ERRORS = re.compile(
    r"deadlock|could not obtain lock|lock timeout|database is locked|could not serialize", re.I
)


def prepare_round(
    tmp_path: Path,
    make_database: Callable[[str], str],
    study_name: str,
    budget: StudyBudget,
    search: XGBoostSearch,
) -> tuple[dict[str, str], optuna.Study, str]:
    """A snapshot on disk, a PostgreSQL Optuna storage and MLflow store, a RUNNING parent run
    and a queued round: what the study asset leaves before workers start. Returns the workers'
    environment, the study and the parent run's id."""
    storage = make_database("optuna")
    tracking = make_database("mlflow")
    labeled, split = make_labeled_features()
    snapshot_id = save_split_snapshot(labeled, split, tmp_path / "split")
    client = mlflow.MlflowClient(tracking)  # no global MLflow state in the test process
    experiment_id = client.create_experiment(
        "purchase-propensity", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    parent = client.create_run(experiment_id, run_name=f"study-{study_name}")
    budget = StudyBudget(**{**budget.__dict__, "storage": storage, "study_name": study_name})
    trials = Round(
        XGBOOST,
        budget,
        search,
        tmp_path / "split",
        snapshot_id,
        parent.info.run_id,
        experiment_id,
    )
    study, _, _ = open_round(trials, log=lambda _: None)
    env = {
        **os.environ,
        "PROPENSITY_HOME": str(tmp_path / "home"),
        "PROPENSITY_OPTUNA_STORAGE": storage,
        "MLFLOW_TRACKING_URI": tracking,
        # Four workers on two cores: one thread each, or OpenMP threads wait for each other.
        "OMP_NUM_THREADS": "1",
    }
    return env, study, parent.info.run_id


def start_worker(study_name: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(PROPENSITY), "tune-worker", "--study", study_name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(workers: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        results.append((worker.returncode, out, err))
    return results


def trials_run(out: str) -> int:
    return int(re.search(r"(\d+) trials of study", out).group(1))


@pytest.mark.slow(0.5)
def test_four_workers_share_one_postgresql_study(
    tmp_path: Path, postgres_database: Callable[[str], str]
) -> None:
    search = XGBoostSearch(num_boost_round=30, early_stopping_rounds=10)
    env, study, parent_id = prepare_round(
        tmp_path, postgres_database, "four-workers", StudyBudget(n_trials=12), search
    )
    workers = [start_worker("four-workers", env) for _ in range(4)]
    results = finished(workers)
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-4000:]
        assert not LOCK_ERRORS.search(out + err), err[-4000:]

    trials = optuna.load_study(
        study_name="four-workers", storage=optuna_storage(env["PROPENSITY_OPTUNA_STORAGE"])
    ).trials
    numbers = [trial.number for trial in trials]
    assert sorted(numbers) == list(range(len(trials)))  # unique, none skipped
    per_worker = [trials_run(out) for _, out, _ in results]
    assert len(trials) == sum(per_worker)
    # Each worker's own count is the number of trials that name it.
    for worker, count in zip(workers, per_worker, strict=True):
        assert sum(t.user_attrs[WORKER_ATTR].endswith(f":{worker.pid}") for t in trials) == count
    assert sum(t.state in FINISHED_OK for t in trials) == 12
    assert sum(count > 0 for count in per_worker) >= 2, per_worker

    # Every trial ran inside a nested MLflow run under the study's run.
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    children = client.search_runs(
        [client.get_experiment_by_name("purchase-propensity").experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    assert sorted(int(run.data.tags["optuna_trial"]) for run in children) == numbers


@pytest.mark.slow(0.5)
def test_a_killed_workers_trial_fails_by_heartbeat_and_the_others_make_up_its_budget(
    tmp_path: Path, postgres_database: Callable[[str], str]
) -> None:
    # Long trials (no pruning, no early stop) so that one can be killed mid-way; heartbeats
    # every 2 s, so a silent trial is failed after 6 s.
    search = XGBoostSearch(num_boost_round=300, early_stopping_rounds=300)
    budget = StudyBudget(n_trials=8, pruning=False)
    env, study, _ = prepare_round(tmp_path, postgres_database, "killed-worker", budget, search)
    env["PROPENSITY_OPTUNA_HEARTBEAT_SECONDS"] = "2"
    workers = [start_worker("killed-worker", env) for _ in range(4)]
    victim = workers[0]

    deadline = time.monotonic() + 120
    killed = None
    while killed is None and time.monotonic() < deadline:
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            mine = trial.user_attrs.get(WORKER_ATTR, "").endswith(f":{victim.pid}")
            if mine and PARAMS_ATTR in trial.user_attrs:  # its parameters chosen: fitting
                killed = trial
                break
        else:
            time.sleep(0.1)
    assert killed is not None, "the victim never started a trial"
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = client.get_experiment_by_name("purchase-propensity").experiment_id
    trial_run = f"tags.optuna_trial = '{killed.number}'"
    while not client.search_runs([experiment_id], trial_run) and time.monotonic() < deadline:
        time.sleep(0.1)  # its MLflow run started: the kill leaves it RUNNING
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    for code, out, err in finished(workers[1:]):
        assert code == 0, out[-2000:] + err[-4000:]

    trials = study.get_trials()
    failed = next(t for t in trials if t.number == killed.number)
    assert failed.state == TrialState.FAIL
    assert STOPPED_REASON_ATTR not in failed.user_attrs  # failed by heartbeat, not by pid
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state in FINISHED_OK and retry.params == failed.params
    assert not retry.user_attrs[WORKER_ATTR].endswith(f":{victim.pid}")
    assert sum(t.state in FINISHED_OK for t in trials) == 8
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    # The run the dead worker left RUNNING was ended by the worker that noticed.
    (orphan,) = client.search_runs([experiment_id], trial_run)
    assert orphan.info.status == "KILLED" and KILLED_REASON_TAG in orphan.data.tags


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers get their stores from the environment each test builds, never from the one
    the test process happens to have."""
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "PROPENSITY_OPTUNA_STORAGE"):
        monkeypatch.delenv(variable, raising=False)
