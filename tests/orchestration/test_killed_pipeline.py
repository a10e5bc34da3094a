"""`make run` killed in the middle of a study, then run again on the same state: the second run
completes without a hand on it, and nothing is left in a dead state (run, pool slot, Optuna
trial, MLflow run, registry alias), nor counted twice (events).

The pipeline is the full one on a small shop, executed as `make run` executes it (in process,
orchestration/run.py: dead runs failed first, then the job); the kill is a SIGKILL of the whole
process group while a sequence-model trial is RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import optuna
import pyarrow.parquet as pq
import pytest

from ml import settings
from ml.families import all_families
from ml.registry import CHALLENGER, CHAMPION, MODEL_NAME
from ml.study import optuna_storage
from orchestration.defs.jobs import CUTOFF_TAG, full_pipeline_job, in_process_execution
from orchestration.defs.resources import TRAINING_POOL, WAREHOUSE_POOL
from orchestration.instance import prepare_dagster_home
from orchestration.recovery import fail_dead_runs
from tests.conftest import query
from tests.orchestration.test_materialize import FULL_RUN_CONFIG, SHOP_CUTOFF, with_sizes

RUN = """
import json, sys
import dagster as dg
from orchestration.defs.jobs import CUTOFF_TAG, full_pipeline_job, in_process_execution
with dg.DagsterInstance.get() as instance:
    dg.execute_job(dg.reconstructable(full_pipeline_job), instance=instance,
                   run_config={**json.loads(sys.argv[1]), **in_process_execution()},
                   tags={CUTOFF_TAG: sys.argv[2]})
"""


# test_materialize's run, sizes and all (small bootstraps): the repair is what is tested here.
RUN_CONFIG = with_sizes(FULL_RUN_CONFIG)


def running_trials(storage: optuna.storages.BaseStorage) -> list[optuna.trial.FrozenTrial]:
    running = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        running += study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return running


def seq_trial_running(storage_path: Path) -> bool:
    if not storage_path.exists():
        return False
    storage = optuna_storage(str(storage_path))
    seq_study = next(f.study_name for f in all_families() if f.uses_sequences)
    try:
        study = optuna.load_study(study_name=seq_study, storage=storage)
    except KeyError:  # not created yet
        return False
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


@pytest.mark.slow(1.3)
def test_a_run_killed_mid_study_is_repaired_by_running_again(project_home: Path) -> None:
    home = prepare_dagster_home(project_home / "dagster")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": os.getcwd()}
    arguments = [json.dumps(RUN_CONFIG), SHOP_CUTOFF.isoformat()]
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN, *arguments], env=env, start_new_session=True
    )
    journal = Path(settings.optuna_storage())
    try:
        deadline = time.monotonic() + 600
        while not seq_trial_running(journal):
            assert worker.poll() is None, "the run ended before its sequence study"
            assert time.monotonic() < deadline, "gave up waiting for a sequence trial"
            time.sleep(0.5)
        os.killpg(worker.pid, signal.SIGKILL)  # the whole `make run`, dbt and all
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    storage = optuna_storage(str(journal))
    assert running_trials(storage)  # what the kill left behind

    # `make run` again: orchestration/run.py's main, on the same state.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (dead,) = fail_dead_runs(instance, print)
        result = dg.execute_job(
            dg.reconstructable(full_pipeline_job),
            instance=instance,
            run_config={**RUN_CONFIG, **in_process_execution()},
            tags={CUTOFF_TAG: SHOP_CUTOFF.isoformat()},
        )
        assert result.success
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        for pool in (WAREHOUSE_POOL, TRAINING_POOL):
            assert not instance.event_log_storage.get_concurrency_info(pool).claimed_slots

    # No zombie trial: the dead worker's trial failed, and it counted as no result.
    assert running_trials(storage) == []
    failed = [
        trial
        for summary in optuna.get_all_study_summaries(storage)
        for trial in optuna.load_study(study_name=summary.study_name, storage=storage).trials
        if trial.state == optuna.trial.TrialState.FAIL
    ]
    assert len(failed) == 1
    # No MLflow run left open; the dead study's runs (its trial's, if it had begun one) KILLED.
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    statuses = [run.info.status for run in client.search_runs(experiments, max_results=1000)]
    assert "RUNNING" not in statuses and "KILLED" in statuses
    # Every alias points to a version whose run finished.
    for alias in (CHAMPION, CHALLENGER):
        version = client.get_model_version_by_alias(MODEL_NAME, alias)
        assert client.get_run(version.run_id).info.status == "FINISHED"
    # The events were ingested once, by the killed run; the rerun added none and lost none.
    landed = sum(pq.ParquetFile(p).metadata.num_rows for p in project_home.rglob("*.parquet")
                 if "landing" in p.parts)  # fmt: skip
    (events, distinct) = query(
        project_home / "warehouse.duckdb",
        "select count(*), count(distinct event_key) from raw.events",
    )[0]
    assert events == distinct == landed > 0
