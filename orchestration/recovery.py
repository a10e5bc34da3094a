"""Repair what a killed run left in the Dagster instance, so the next run never waits for it.

A run whose worker process dies (SIGKILL, out of memory, a machine restart) stays STARTED in the
instance and keeps its pool slots: every later step of the pool (the warehouse, training) would
wait for ever. Dagster's run monitoring in the daemon (`run_monitoring` in dagster.yaml, written
by orchestration/instance.py) catches runs the daemon launched; `make run`, `make nightly`, the
schedule and the sensor also call `fail_dead_runs` before they start anything, which covers runs
that no daemon watches (execute_job from a terminal).

A run is dead when the process that started it (the pid of its RUN_START event) no longer exists
on this machine. A live process with a recycled pid makes a dead run look alive (the safe side:
nothing is freed); the daemon's run monitoring or a later check then catches it.

Step processes fork from a server that outlives a killed run's worker; `die_with_parent` makes
each step process end when the worker does, instead of living on as an orphan that still writes.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from collections.abc import Callable

import dagster as dg

from ml.liveness import process_alive

IN_FLIGHT = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# How often a step process checks that its run's worker is still alive.
PARENT_POLL_SECONDS = 2.0
# How long an orphaned step process may take to clean up after its interrupt.
CLEANUP_GRACE_SECONDS = 15.0


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that started the run, from its RUN_START event."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_START, limit=1
    ).records
    if not records or records[0].event_log_entry.dagster_event is None:
        return None
    return records[0].event_log_entry.dagster_event.pid


def fail_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Marks every in-flight run whose worker process is gone as failed and frees its pool
    slots; returns their run ids. Runs still starting (no RUN_START yet) are left to the
    daemon's start timeout."""
    recovered = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
        pid = run_worker_pid(instance, run.run_id)
        if pid is None or process_alive(pid):
            continue
        message = (
            f"Run {run.run_id} ({run.job_name}) lost its worker process (pid {pid}): marked "
            "failed and its pool slots freed so that later runs do not wait for it"
        )
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(message)
        recovered.append(run.run_id)
    return recovered


def _watch_parent(_: object = None) -> None:
    """In a process multiprocessing just started: a daemon thread that interrupts, then kills,
    this process once the process that asked for it (the run's worker) is gone.

    The parent's death cannot be left to the kernel (PR_SET_PDEATHSIG): a step process's kernel
    parent is the preloading server, which stays alive as long as any step process holds its
    pipe, and the step processes do.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    requester = parent.pid

    def watch() -> None:
        while process_alive(requester):
            time.sleep(PARENT_POLL_SECONDS)
        # An interrupt first, as Ctrl-C would: the step fails through its cleanup (open MLflow
        # runs and Optuna trials end as failed, Dagster stops its log tailers); a kill if not.
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(CLEANUP_GRACE_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-run-worker", daemon=True).start()


class _StepProcessMarker:
    """multiprocessing keeps after-fork callbacks in a weak registry: this object stays alive
    for the whole process so the callback is never dropped."""


_MARKER = _StepProcessMarker()


def die_with_parent() -> None:
    """Every process that multiprocessing starts from this one (the executor's step processes,
    forked by the preloading server) ends within seconds of the run's worker."""
    multiprocessing.util.register_after_fork(_MARKER, _watch_parent)
