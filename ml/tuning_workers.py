"""One study's trials on several worker processes: on this machine, or on many machines against
one PostgreSQL database.

The coordinator (`run_on_workers`, called by a study asset whose `n_workers` is above 1) queues
the call's budget in the study as WAITING trials, each labelled with the round (the id of the
study's MLflow run), writes a work order into the study (the family, its search settings, the
data snapshot, the MLflow run the trials nest under, the deadline) and starts the workers. A
worker (`work`; the command `propensity tune-worker --study NAME`) runs queued trials until none
is queued and none is running. Budgets stay counts: every trial a worker runs is one that was
queued, so however many workers share a round, the round runs its budget.

A worker killed mid-trial: its trial is failed and queued again with the same parameters, by
heartbeat in an RDB storage (any worker on any machine notices; `ml.study.optuna_storage`) or
by its process id in a journal file (one machine, no heartbeat). Workers wait while a trial is
running, so the ones left make up the budget of one that died.

Parallel trials are not reproducible in order (which worker's sampler asks first varies); the
best trial refitted still reproduces its model (every fit uses `ml.study.TRAINING_SEED`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from ml import settings
from ml.families import family_named
from ml.families.base import ModelFamily
from ml.splits import load_split_snapshot
from ml.study import (
    STOPPED_AT_ATTR,
    STOPPED_REASON_ATTR,
    Deadline,
    StudyBudget,
    StudyTimedOut,
    TrialsRun,
    TuningResult,
    best_trial,
    fail_orphaned_trials,
    family_pruner,
    open_study,
    optuna_storage,
    trial_line,
    trial_objective,
    tuning_result,
)

# The study's user attribute holding the current WorkOrder.
WORK_ORDER_ATTR = "work_order"
# A queued trial's user attribute: the round (coordinator call) it belongs to.
ROUND_ATTR = "round"
# How often a worker with nothing to run looks again, and a coordinator at its workers.
POLL_SECONDS = 1.0
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class WorkOrder:
    """What a worker needs to run a round's trials; stored in the study, read by every worker.

    No secret is in it (the storage URL comes from each worker's environment).
    """

    round_id: str
    family: str
    search: dict[str, Any]
    pruning: bool
    snapshot_dir: str
    snapshot_id: str
    experiment_id: str
    deadline_epoch: float
    kept_model_dir: str = ""

    def deadline(self) -> Deadline:
        """The round's deadline on this process's monotonic clock."""
        left = self.deadline_epoch - time.time()
        return Deadline(max(left, 0.0), time.monotonic() + left)


class NoQueuedTrial(Exception):
    """Another worker took the last queued trial between this worker's look at the queue and
    its ask."""


class _QueuedTrialsOnly(optuna.Study):
    """A worker's view of the study: ask() pops a queued trial or raises NoQueuedTrial.

    Optuna's own ask() creates a new trial when the queue is empty: a worker that lost the race
    for the last queued trial would add a trial the round never queued, over its budget.
    """

    def ask(self, fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        if fixed_distributions:
            raise ValueError("a worker's trials take their parameters from the queue")
        trial_id = self._pop_waiting_trial_id()
        if trial_id is None:
            raise NoQueuedTrial("no queued trial left: another worker took the last one")
        return optuna.Trial(self, trial_id)


def read_work_order(study: optuna.Study) -> WorkOrder | None:
    order = study.user_attrs.get(WORK_ORDER_ATTR)
    return WorkOrder(**order) if order else None


def repair(study: optuna.Study, log: Callable[[str], None]) -> None:
    """Fails (and queues again) the trials of workers that died: by heartbeat in an RDB
    storage, by process id in a journal file, which has no heartbeat."""
    if is_heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
    else:
        fail_orphaned_trials(study, log, retry=True)


def queue_round(
    study: optuna.Study, family: ModelFamily, search: Any, round_id: str, n_trials: int
) -> int:
    """Queues `n_trials` trials for the round: the family's first trials in a new study, then
    empty ones (the sampler chooses their parameters when a worker pops them). Trials still
    queued by an earlier round that was killed join this one and count in its budget. Returns
    how many trials the round holds."""
    first = [] if study.trials else list(family.first_trials(search))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for trial in waiting:
        study._storage.set_trial_user_attr(trial._trial_id, ROUND_ATTR, round_id)
    for params in first[: max(n_trials - len(waiting), 0)]:
        study.enqueue_trial(params, user_attrs={ROUND_ATTR: round_id})
    for _ in range(n_trials - len(waiting) - len(first)):
        study.enqueue_trial({}, user_attrs={ROUND_ATTR: round_id})
    return max(n_trials, len(waiting))


def round_trials(
    study: optuna.Study, round_id: str, states: Sequence[TrialState] | None = None
) -> list[FrozenTrial]:
    return [
        trial
        for trial in study.get_trials(deepcopy=False, states=states)
        if trial.user_attrs.get(ROUND_ATTR) == round_id
    ]


@dataclass
class _Session:
    """A worker's state for one round: its data and objective."""

    order: WorkOrder
    family: ModelFamily
    objective: Callable[[optuna.Trial, Deadline], float]


def _start_session(study: optuna.Study, order: WorkOrder, snapshot_dir: Path | None) -> _Session:
    family = family_named(order.family)
    folder = Path(snapshot_dir or order.snapshot_dir)
    data, _ = load_split_snapshot(folder, family.uses_sequences, snapshot_id=order.snapshot_id)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    mlflow.set_experiment(experiment_id=order.experiment_id)
    study.pruner = family_pruner(family)
    objective = trial_objective(
        family,
        data,
        family.search_settings(**order.search),
        order.pruning,
        study,
        keep_best_in=Path(order.kept_model_dir) if order.kept_model_dir else None,
        data_id=order.snapshot_id,
        parent_run_id=order.round_id,
    )
    return _Session(order, family, objective)


def _run_one_trial(study: optuna.Study, session: _Session, log: Callable[[str], None]) -> bool:
    """Pops one queued trial and runs it, with heartbeats (Study.optimize keeps them); False
    when another worker took the last queued trial first."""
    deadline = session.order.deadline()

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        family = session.family
        progress = f"worker {os.getpid()}"
        log(trial_line(study, trial, progress, family.describe_trial, family.step_name))

    try:
        study.optimize(
            lambda trial: session.objective(trial, deadline),
            n_trials=1,
            catch=(StudyTimedOut,),
            callbacks=[report],
            gc_after_trial=True,
        )
    except NoQueuedTrial:
        return False
    except optuna.exceptions.UpdateFinishedTrialError as error:
        # Its heartbeats came too late (a machine too busy for the grace period): another
        # worker failed the trial and queued it again; this worker's result is dropped.
        log(f"worker {os.getpid()}: a trial was failed by another worker: {error}")
    return True


class NoSuchStudy(LookupError):
    """The storage holds no study of that name (yet): the study asset creates it."""


def _wait_for_study(study_name: str, storage: str, wait_s: float) -> optuna.Study:
    """The study, once it exists (looking for up to `wait_s` seconds); NoSuchStudy, naming the
    studies there are, when it does not."""
    opened = optuna_storage(storage)
    give_up = time.monotonic() + wait_s
    while True:
        if study_name in optuna.get_all_study_names(opened):
            return _QueuedTrialsOnly(study_name=study_name, storage=opened)
        if time.monotonic() >= give_up:
            known = ", ".join(sorted(optuna.get_all_study_names(opened))) or "none"
            raise NoSuchStudy(
                f"No study {study_name!r} in {settings.without_password(storage)} (studies there: "
                f"{known}); a study asset with n_workers creates it and queues its trials"
            )
        time.sleep(POLL_SECONDS)


def work(
    study_name: str,
    storage: str = "",
    snapshot_dir: Path | None = None,
    wait_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> int:
    """Runs the study's queued trials until none is queued and none is running (waiting up to
    `wait_s` more seconds for a new round); returns how many trials this worker ran.

    `storage` empty means PROPENSITY_OPTUNA_STORAGE. `snapshot_dir` replaces the work order's
    snapshot folder, for a machine that mounts it elsewhere.
    """
    storage = storage or settings.optuna_storage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _wait_for_study(study_name, storage, wait_s)
    # constant_liar: a trial running on another worker counts as a poor result, so parallel
    # workers do not all sample the same promising point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(constant_liar=True)
    session: _Session | None = None
    ran = 0
    idle_since = time.monotonic()
    while True:
        repair(study, log)
        order = read_work_order(study)
        in_time = order is not None and not order.deadline().passed()
        queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if in_time and queued:
            if session is None or session.order.round_id != order.round_id:
                session = _start_session(study, order, snapshot_dir)
            ran += _run_one_trial(study, session, log)
            idle_since = time.monotonic()
            continue
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if (in_time and running) or time.monotonic() - idle_since < wait_s:
            time.sleep(POLL_SECONDS)
            continue
        return ran


def _worker_command(study_name: str) -> list[str]:
    return [sys.executable, "-m", "ml.tuning_workers", study_name]


class RoundInProgress(RuntimeError):
    """Another coordinator's round of the same study is still running."""


def refuse_a_second_round(study: optuna.Study, round_id: str) -> None:
    """Raises RoundInProgress while another round of the study has trials queued or running,
    its MLflow run is RUNNING and its deadline has not passed: a second round would take over
    its queue and its workers would read the second round's data. A round whose coordinator
    died (its run ended as KILLED by `ml.tracking.end_orphaned_runs`, or past its deadline) is
    taken over: its queued trials join the new round."""
    previous = read_work_order(study)
    if previous is None or previous.round_id == round_id or previous.deadline().passed():
        return
    active = round_trials(study, previous.round_id, (TrialState.WAITING, TrialState.RUNNING))
    if not active:
        return
    try:
        client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
        status = client.get_run(previous.round_id).info.status
    except MlflowException:
        return  # its run is gone: nobody coordinates it
    if status == "RUNNING":
        raise RoundInProgress(
            f"Study {study.study_name!r} has a round in progress (MLflow run "
            f"{previous.round_id}, {len(active)} trials queued or running): wait for it, or "
            "tune under another study_name"
        )


@dataclass(frozen=True)
class Round:
    """One call's trials: the family and its budget and search settings, the training snapshot
    they read, and the MLflow run their runs nest under (`run_id`, which must stay RUNNING
    while they run). `keep_best_in`: see `ml.study.tune`."""

    family: ModelFamily
    budget: StudyBudget
    search: Any
    snapshot_dir: Path
    snapshot_id: str
    run_id: str
    experiment_id: str
    keep_best_in: Path | None = None


def open_round(
    round_: Round, log: Callable[[str], None] = print
) -> tuple[optuna.Study, WorkOrder, int]:
    """Queues the round's `budget.n_trials` trials and writes its work order into the study,
    for workers to run; returns the study, the order and how many trials the round holds."""
    family, budget = round_.family, round_.budget
    storage = budget.storage or settings.optuna_storage()
    study_name = budget.study_name or family.study_name
    study = open_study(study_name, storage, budget.seed, family_pruner(family), log=log)
    refuse_a_second_round(study, round_.run_id)
    n_queued = queue_round(study, family, round_.search, round_.run_id, budget.n_trials)
    order = WorkOrder(
        round_id=round_.run_id,
        family=family.name,
        search=asdict(round_.search),
        pruning=budget.pruning,
        snapshot_dir=str(round_.snapshot_dir),
        snapshot_id=round_.snapshot_id,
        experiment_id=round_.experiment_id,
        deadline_epoch=time.time() + budget.timeout_s,
        kept_model_dir=str(round_.keep_best_in or ""),
    )
    study.set_user_attr(WORK_ORDER_ATTR, asdict(order))
    return study, order, n_queued


def run_on_workers(
    round_: Round, n_workers: int, log: Callable[[str], None] = print
) -> TuningResult:
    """Runs the round's `budget.n_trials` trials on `n_workers` local worker processes
    (workers started on other machines with `propensity tune-worker` join in).

    The round's MLflow run is active in the calling process. A local worker killed by a signal
    is replaced (at most `n_workers` times); its trial is failed and queued again (see the
    module docstring). Raises when a worker fails with an error, or when the study has no
    complete trial.
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    family, budget, round_id = round_.family, round_.budget, round_.run_id
    storage = budget.storage or settings.optuna_storage()
    study, order, n_queued = open_round(round_, log)
    study_name = study.study_name
    log(
        f"Study {study_name!r}: {n_queued} trials queued for round {round_id} on {n_workers} "
        f"workers (deadline {budget.timeout_s:g}s); more join with "
        f"`propensity tune-worker --study {study_name}`"
    )
    # The storage URL (a password, perhaps) travels in the environment, never on a command line.
    env = {**os.environ, "PROPENSITY_OPTUNA_STORAGE": storage}
    # XGBoost and torch each start a thread per core: N workers would run N times the cores'
    # threads, which wait for each other. Unless told otherwise, the workers share the cores.
    cores = len(os.sched_getaffinity(0))
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // n_workers)))

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen(_worker_command(study_name), env=env)

    workers = [start_worker() for _ in range(n_workers)]
    replacements = n_workers
    errors: list[str] = []
    reported: set[int] = set()
    # Past the deadline, a worker is given the heartbeat's grace to end its trial, then stopped.
    stop_at = order.deadline_epoch + 3 * settings.optuna_heartbeat_seconds() + 60

    def report_finished() -> None:
        for trial in round_trials(study, round_id, FINISHED):
            if trial.number not in reported:
                reported.add(trial.number)
                progress = f"{len(reported)}/{n_queued} this run"
                log(trial_line(study, trial, progress, family.describe_trial, family.step_name))

    while workers:
        time.sleep(POLL_SECONDS)
        report_finished()
        for worker in list(workers):
            code = worker.poll()
            if code is None:
                if time.time() > stop_at:
                    worker.kill()
                    errors.append(f"worker {worker.pid} was still running past the deadline")
                continue
            workers.remove(worker)
            if code < 0:
                log(f"worker {worker.pid} was killed (signal {-code}); its trial is run again")
                repair(study, log)
                unfinished = round_trials(study, round_id, (TrialState.WAITING,))
                if replacements and unfinished:
                    replacements -= 1
                    workers.append(start_worker())
            elif code != 0:
                errors.append(f"worker {worker.pid} failed with exit code {code}")
    report_finished()
    leftover = round_trials(study, round_id, (TrialState.WAITING,))
    deadline_passed = order.deadline().passed()
    if leftover and not deadline_passed and not errors:
        errors.append(f"{len(leftover)} queued trials were left: every worker was killed")
    reason = "not started: " + ("the study's deadline passed" if deadline_passed else "no worker")
    for trial in leftover:
        study._storage.set_trial_user_attr(trial._trial_id, STOPPED_REASON_ATTR, reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if errors:
        raise RuntimeError(f"Study {study_name!r}: " + "; ".join(errors) + " (see its log)")
    best = best_trial(study)
    if best is None:
        raise RuntimeError(
            f"Study {study_name!r} has no complete trial; raise n_trials or timeout_s"
        )
    trials = round_trials(study, round_id, FINISHED)
    # A trial the deadline cut records the step it stopped at; a killed worker's does not.
    timed_out = bool(leftover) or any(STOPPED_AT_ATTR in t.user_attrs for t in trials)
    run = TrialsRun(best, trials, n_queued, timed_out)
    return tuning_result(study, run, family.params_of(best))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ml.tuning_workers STUDY`: the local worker a coordinator starts (people start
    workers with `propensity tune-worker`, orchestration/cli.py)."""
    (study_name,) = sys.argv[1:] if argv is None else argv
    ran = work(study_name)
    print(f"worker {os.getpid()}: {ran} trials of study {study_name!r} run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
