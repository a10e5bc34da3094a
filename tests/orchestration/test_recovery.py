"""After a SIGKILL of a run's worker, on a real Dagster instance with the project's dagster.yaml:
the run's step process does not live on, the next run start marks the dead run failed and frees
its pool slot, and a new run of the same pool completes instead of waiting for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from ml.liveness import process_alive
from orchestration.defs.jobs import multiprocess_execution
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.instance import prepare_dagster_home
from orchestration.recovery import fail_dead_runs
from tests.orchestration.hold_job import hold_job

RUN_AND_HOLD = """
import sys
import dagster as dg
from orchestration.defs.jobs import multiprocess_execution
from tests.orchestration.hold_job import hold_job
config = {"ops": {"holds_the_warehouse": {"config": {"seconds": 600, "pid_file": sys.argv[1]}}}}
with dg.DagsterInstance.get() as instance:
    dg.execute_job(dg.reconstructable(hold_job), instance=instance,
                   run_config={**config, **multiprocess_execution()})
"""


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def claimed_slots(instance: dg.DagsterInstance) -> int:
    return len(instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots)


def test_a_killed_run_neither_leaves_an_orphan_nor_blocks_the_next_run(
    project_home: Path, tmp_path: Path
) -> None:
    home = prepare_dagster_home(project_home / "dagster")
    pid_file = tmp_path / "step.pid"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": os.getcwd()}
    worker = subprocess.Popen([sys.executable, "-c", RUN_AND_HOLD, str(pid_file)], env=env)
    try:
        wait_for(pid_file.exists, 180, "the step to start")
        step_pid = int(pid_file.read_text())
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        # The step process ends with its run's worker instead of holding on as an orphan,
        # and so do the log tailers Dagster started for it.
        tailers = child_pids(step_pid)
        wait_for(lambda: not process_alive(step_pid), 40, "the orphaned step to end")
        wait_for(lambda: not any(map(process_alive, tailers)), 20, "its children to end")
    finally:
        if worker.poll() is None:
            worker.kill()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (dead,) = instance.get_runs()
        assert dead.status == dg.DagsterRunStatus.STARTED  # what the kill left behind
        assert claimed_slots(instance) == 1

        messages: list[str] = []
        assert fail_dead_runs(instance, messages.append) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert claimed_slots(instance) == 0
        assert f"pid {dead_worker_pid(instance, dead.run_id)}" in messages[0]
        assert fail_dead_runs(instance) == []  # nothing left: a second sweep changes nothing

        # The next run of the same pool gets the slot at once and completes.
        started = time.monotonic()
        result = dg.execute_job(
            dg.reconstructable(hold_job),
            instance=instance,
            run_config=multiprocess_execution(),
        )
        assert result.success and time.monotonic() - started < 120
        assert claimed_slots(instance) == 0


def dead_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    from orchestration.recovery import run_worker_pid

    pid = run_worker_pid(instance, run_id)
    assert pid is not None
    return pid


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []
