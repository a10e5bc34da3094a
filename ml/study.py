"""The Optuna study runner every model family uses (`ml.families`).

One study lives in persistent storage (a journal file or an RDB URL), so a rerun continues the
same study and its trial count grows. Each trial asks the family for a point of its search
space, fits on the train role (the family resamples or weights only those rows), early-stopped
on the validation role, and is scored by validation PR-AUC. The promotion window is never read
here. After every round or epoch the runner reports the value to Optuna, prunes weak trials
with a median pruner and checks the deadline. Each trial is a nested MLflow run under whatever
run is active.

Budgets are counts: `n_trials` decides how many trials a call runs, whatever the machine's speed,
so the same data and seed register the same model. `timeout_s` is only a safety net against a
run that hangs or a machine far slower than planned: a deadline for the whole call. When it
passes, no new trial starts and the trial in progress is stopped at its next boosting round or
epoch and recorded as FAIL (not PRUNED: pruning judges the parameters, and a sampler learns from
pruned trials, while a deadline says nothing about them), with the reason in its user attribute
STOPPED_REASON_ATTR; `TuningResult.timed_out` says it happened.

Every trial fits with the fixed TRAINING_SEED, so the best trial's parameters refitted give the
best trial's model. The runner also keeps that model (`keep_best_in`), labelled with the data it
was fitted on, so the final model asset can reuse it instead of fitting it a second time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ml import settings
from ml.families.base import PARAMS_ATTR, ModelFamily, TrainedModel
from ml.liveness import this_worker, worker_dead
from ml.splits import SplitData
from ml.tracking import WORKER_TAG, end_run_as_killed

TRAINING_SEED = 0
# User attributes of a trial the study's deadline stopped: why, and the last round or epoch run.
STOPPED_REASON_ATTR = "stopped_reason"
STOPPED_AT_ATTR = "stopped_at_step"
# User attribute of a complete trial: the round or epoch early stopping kept.
BEST_STEP_ATTR = "best_step"
# The user attribute naming the process that runs a trial ("<host>:<pid>", ml.liveness).
WORKER_ATTR = "worker"
# How many times a trial whose worker died is queued again (RetryHeartbeatStaleTrialCallback).
MAX_TRIAL_RETRIES = 3
# MLflow takes at most this many metrics per log_batch call.
MLFLOW_BATCH_LIMIT = 1000
# The kept best model's description, beside its files.
KEPT_MODEL_FILE = "kept_model.json"


@dataclass
class StudyBudget:
    """Budget and identity of one call of `tune`; the search space is the family's.

    `study_name` empty means the family's default. `storage` is a journal file path or an RDB
    URL (see `optuna_storage`); empty means `ml.settings.optuna_storage()`, read when tuning
    starts. `seed` seeds the sampler only (offset by the trials already in the study).
    `n_trials` trials run; `timeout_s` is a deadline for the whole call, a safety net set well
    above what `n_trials` need (see the module docstring).
    """

    n_trials: int = 20
    timeout_s: float = 3600
    seed: int = 42
    study_name: str = ""
    storage: str = ""
    pruning: bool = True


@dataclass(frozen=True)
class TuningResult:
    """Outcome of the whole study so far (best_*) and of this call (n_trials_this_run, counts).

    n_trials_requested: the trials this call was asked for (the config's n_trials).
    timed_out: the deadline (timeout_s) stopped this call before all of them ended: a trial was
    cut (state FAIL, see STOPPED_REASON_ATTR) or trials were left unstarted. Then
    n_trials_this_run < n_trials_requested or n_pruned + n_complete < n_trials_this_run.
    """

    best_params: dict[str, Any]
    best_value: float
    best_trial_number: int
    best_step: int | None
    study_name: str
    n_trials_total: int
    n_trials_this_run: int
    n_pruned: int
    n_complete: int
    n_trials_requested: int
    timed_out: bool


with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY_FAILED_TRIAL = RetryHeartbeatStaleTrialCallback(max_retry=MAX_TRIAL_RETRIES)


class StudyTimedOut(Exception):
    """Raised inside a trial, between rounds or epochs, once the study's deadline has passed;
    `step` is the last round or epoch the trial completed."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class Deadline:
    """The study's deadline on the monotonic clock, checked between rounds and epochs."""

    timeout_s: float
    at: float

    @classmethod
    def after(cls, timeout_s: float) -> Deadline:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        return cls(timeout_s, time.monotonic() + timeout_s)

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def check(self, step_name: str, step: int) -> None:
        """Raises StudyTimedOut when the deadline has passed; `step` is the step just done."""
        if self.passed():
            raise StudyTimedOut(
                f"study timeout of {self.timeout_s:g}s reached; stopped after {step_name} {step}",
                step,
            )


@dataclass(frozen=True)
class TrialsRun:
    """What `run_trials` did: the study's best complete trial and this call's trials."""

    best: FrozenTrial
    trials: list[FrozenTrial]
    n_requested: int
    timed_out: bool


def optuna_storage(storage: str) -> optuna.storages.BaseStorage:
    """An RDB URL (anything with "://") with heartbeats; otherwise a journal file at that path.

    The journal file suits several processes on one machine; an RDB URL suits several machines.
    Trials left RUNNING by a dead worker are failed: by heartbeat in an RDB, by
    `fail_orphaned_trials` (the worker's pid) in a journal, which has no heartbeat.
    """
    if not storage:
        raise ValueError("No Optuna storage given: pass a journal file path or an RDB URL")
    if "://" in storage:
        # Heartbeats: a trial whose worker stops beating for grace_period seconds is failed
        # when the next trial of the study starts (optuna.storages.fail_stale_trials), and
        # queued again with the same parameters, so that the study's budget is still met.
        heartbeat = settings.optuna_heartbeat_seconds()
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=retry_dead_workers_trial,
                # Workers on several machines keep connections open for hours.
                engine_kwargs={"pool_pre_ping": True},
            )
    path = Path(storage).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def open_study(
    study_name: str,
    storage: str,
    seed: int,
    pruner: optuna.pruners.BasePruner | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> optuna.Study:
    """The named study (created or continued) with a seeded TPE sampler, after failing the
    trials a killed worker left RUNNING (`fail_orphaned_trials`).

    `storage` empty means the project default. The sampler's seed is offset by the trials
    already run, so that a rerun does not replay the first run's random start-up samples.
    """
    study = optuna.create_study(
        storage=optuna_storage(storage or settings.optuna_storage()),
        study_name=study_name,
        direction="maximize",
        load_if_exists=True,
        pruner=pruner,
    )
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    fail_orphaned_trials(study, log)
    return study


def fail_orphaned_trials(
    study: optuna.Study, log: Callable[[str], None] = lambda _: None, retry: bool = False
) -> list[int]:
    """Fails the study's RUNNING trials whose worker process is gone (killed mid-trial), so
    that they are never mistaken for trials in progress; returns their numbers. Trials of live
    workers, of other hosts and without a worker label are left alone. With `retry`, each is
    queued again with its parameters (as a heartbeat does in an RDB storage), so that a
    budget of queued trials is still met (`ml.tuning_workers`)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        if not worker_dead(worker):
            continue
        reason = f"its worker process {worker} died"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, STOPPED_REASON_ATTR, reason)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
        log(f"trial {trial.number} of {study.study_name!r} failed: {reason}")
        failed.append(trial.number)
        if retry:  # from the RUNNING copy: the retry does not inherit the reason above
            retry_dead_workers_trial(study, copy.deepcopy(trial))
    return failed


def retry_dead_workers_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died (its heartbeat stopped, or its process is gone), already
    failed: queued again with its parameters (up to MAX_TRIAL_RETRIES times), and its MLflow
    run, which the dead process left RUNNING, ended as KILLED. Runs in whichever process
    noticed, on any machine: the run is found by its study and trial tags."""
    RETRY_FAILED_TRIAL(study, trial)
    filter_string = (
        f"tags.optuna_study = '{study.study_name}' and tags.optuna_trial = '{trial.number}' "
        "and attributes.status = 'RUNNING'"
    )
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
    try:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], filter_string
        )
        for run in runs:
            end_run_as_killed(client, run.info.run_id, "its worker died mid-trial")
    except MlflowException:  # the trial is repaired; the run is ended by end_orphaned_runs
        return


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial, Deadline], float],
    n_trials: int,
    timeout_s: float,
    log: Callable[[str], None],
    describe: Callable[[FrozenTrial], str],
    step_name: str,
) -> TrialsRun:
    """Runs `n_trials` trials, unless the deadline `timeout_s` seconds from now passes first,
    logging one line per trial (`describe` names what the trial tried, `step_name` what a pruned
    or stopped trial stopped at).

    `objective(trial, deadline)` must call `deadline.check` between its rounds or epochs; the
    StudyTimedOut it raises makes the trial FAIL (not an error of the study) and ends the study.
    Raises when the study has no complete trial at all.
    """
    deadline = Deadline.after(timeout_s)
    run_here: list[int] = []
    timed_out = False

    def log_progress(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal timed_out
        run_here.append(trial.number)
        stopped = trial.user_attrs.get(STOPPED_REASON_ATTR)
        log(trial_line(study, trial, f"{len(run_here)}/{n_trials} this run", describe, step_name))
        if stopped or (deadline.passed() and len(run_here) < n_trials):
            timed_out = True
            study.stop()

    study.optimize(
        lambda trial: objective(trial, deadline),
        n_trials=n_trials,
        catch=(StudyTimedOut,),
        callbacks=[log_progress],
    )
    if timed_out:
        log(
            f"Study {study.study_name!r} stopped at its timeout of {timeout_s:g}s after "
            f"{len(run_here)} of {n_trials} trials; raise timeout_s if this was no hang"
        )
    best = best_trial(study)
    if best is None:
        raise RuntimeError(
            f"Study {study.study_name!r} has no complete trial; raise n_trials or timeout_s"
        )
    trials = [t for t in study.trials if t.number in run_here]
    return TrialsRun(best, trials, n_trials, timed_out)


def trial_line(
    study: optuna.Study,
    trial: FrozenTrial,
    progress: str,
    describe: Callable[[FrozenTrial], str],
    step_name: str,
) -> str:
    """The one log line of a finished trial: what it tried, how it ended, the best so far."""
    stopped = trial.user_attrs.get(STOPPED_REASON_ATTR)
    if trial.state == TrialState.COMPLETE:
        outcome = f"validation PR-AUC {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        outcome = f"pruned at {step_name} {trial.last_step}"
    elif stopped:
        outcome = f"stopped: {stopped}"
    else:
        outcome = trial.state.name.lower()
    best = best_trial(study)
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no best yet"
    return f"trial {trial.number} ({progress}): {describe(trial)} -> {outcome}; {best_text}"


@contextmanager
def trial_mlflow_run(
    trial: optuna.Trial, tags: dict[str, Any], parent_run_id: str | None = None
) -> Iterator[None]:
    """A nested MLflow run "trial-<number>" around a trial's training: under the active run,
    or under `parent_run_id` (a study's run that another process holds open).

    A pruned trial's run ends FINISHED (pruning is a normal outcome) and a trial the deadline
    stopped ends KILLED, each tagged with trial_state and the reason; the exception then goes on
    to Optuna, which records the trial as PRUNED or FAIL.
    """
    stop: optuna.TrialPruned | StudyTimedOut | None = None
    # The tags (the worker's among them) are created with the run, not set after it: a process
    # killed in between would leave a RUNNING run that no later study could tell is orphaned.
    as_text = {name: str(value) for name, value in tags.items()}
    with mlflow.start_run(
        nested=parent_run_id is None,
        parent_run_id=parent_run_id,
        run_name=f"trial-{trial.number}",
        tags=as_text,
    ):
        try:
            yield
        except optuna.TrialPruned as pruned:
            mlflow.set_tags({"trial_state": "pruned", "pruned_reason": str(pruned)})
            stop = pruned
        except StudyTimedOut as timed_out:
            trial.set_user_attr(STOPPED_REASON_ATTR, str(timed_out))
            trial.set_user_attr(STOPPED_AT_ATTR, timed_out.step)
            mlflow.set_tags({"trial_state": "fail", STOPPED_REASON_ATTR: str(timed_out)})
            mlflow.end_run("KILLED")
            stop = timed_out
    if stop is not None:
        raise stop


def tuning_result(study: optuna.Study, run: TrialsRun, best_params: dict[str, Any]) -> TuningResult:
    return TuningResult(
        best_params=best_params,
        best_value=float(run.best.value),
        best_trial_number=run.best.number,
        best_step=run.best.user_attrs.get(BEST_STEP_ATTR),
        study_name=study.study_name,
        n_trials_total=len(study.trials),
        n_trials_this_run=len(run.trials),
        n_pruned=sum(t.state == TrialState.PRUNED for t in run.trials),
        n_complete=sum(t.state == TrialState.COMPLETE for t in run.trials),
        n_trials_requested=run.n_requested,
        timed_out=run.timed_out,
    )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None (study.best_trial raises when there is none)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def tune(
    family: ModelFamily,
    data: SplitData,
    budget: StudyBudget,
    search: Any = None,
    log: Callable[[str], None] = print,
    keep_best_in: Path | None = None,
    data_id: str = "",
) -> TuningResult:
    """Runs `budget.n_trials` more trials of the family's study (fewer only when the safety-net
    deadline `budget.timeout_s` passes; see the module docstring).

    `search` is the family's search settings (its `search_settings` type; None = defaults).
    `log` gets one line per trial (the Dagster logger in the pipeline, print otherwise). With
    `keep_best_in`, a trial that beats the study's best so far leaves its model there, labelled
    with `data_id` (what identifies the data it was fitted on; see `load_kept_model`).
    """
    search = family.search_settings() if search is None else search
    study_name = budget.study_name or family.study_name
    device = family.device()
    study = open_study(study_name, budget.storage, budget.seed, family_pruner(family), log=log)
    new_study = not study.trials
    log(
        f"Study {study_name!r}: {len(study.trials)} earlier trials; running {budget.n_trials} "
        f"more (deadline {budget.timeout_s:g}s) on {device}"
    )
    if new_study:
        for params in family.first_trials(search):
            study.enqueue_trial(params, skip_if_exists=True)
    objective = trial_objective(
        family, data, search, budget.pruning, study, keep_best_in=keep_best_in, data_id=data_id
    )
    run = run_trials(
        study,
        objective,
        budget.n_trials,
        budget.timeout_s,
        log,
        describe=family.describe_trial,
        step_name=family.step_name,
    )
    return tuning_result(study, run, family.params_of(run.best))


def family_pruner(family: ModelFamily) -> optuna.pruners.BasePruner:
    """The median pruner every study of `family` uses, in this process or on a worker."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=family.pruner_startup_trials, n_warmup_steps=family.pruner_warmup_steps
    )


def trial_objective(
    family: ModelFamily,
    data: SplitData,
    search: Any,
    pruning: bool,
    study: optuna.Study,
    keep_best_in: Path | None = None,
    data_id: str = "",
    parent_run_id: str | None = None,
) -> Callable[[optuna.Trial, Deadline], float]:
    """One trial: the family's parameters fitted on the train role and scored on validation,
    inside a nested MLflow run (under the active run, or under `parent_run_id` on a worker
    process), pruned and stopped between rounds or epochs. See `tune` for `keep_best_in`."""
    device = family.device()
    journal = isinstance(study._storage, JournalStorage)
    report_every = 1 if journal else family.rdb_report_every

    def objective(trial: optuna.Trial, deadline: Deadline) -> float:
        trial.set_user_attr(WORKER_ATTR, this_worker())
        params = family.suggest(trial, search)
        trial.set_user_attr(PARAMS_ATTR, params)

        history: list[tuple[int, float]] = []

        def on_step(step: int, value: float) -> None:
            history.append((step, value))
            if pruning and step % report_every == 0:
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"pruned at {family.step_name} {step} (PR-AUC {value:.4f})"
                    )
            deadline.check(family.step_name, step)

        tags = {
            "optuna_study": study.study_name,
            "optuna_trial": trial.number,
            "device": device,
            WORKER_TAG: this_worker(),
        }
        with trial_mlflow_run(trial, tags, parent_run_id):
            mlflow.log_params(params)
            try:
                fitted = family.fit(data, params, seed=TRAINING_SEED, on_step=on_step)
            finally:  # a pruned or stopped trial's history is logged too
                log_step_history("validation_pr_auc", history)
            trial.set_user_attr(BEST_STEP_ATTR, fitted.best_step)
            mlflow.set_tag("trial_state", "complete")
            mlflow.log_metrics(
                {
                    "best_validation_pr_auc": fitted.validation_pr_auc,
                    f"best_{family.step_name}": fitted.best_step,
                    **{k: v for k, v in fitted.summary.items() if isinstance(v, int | float)},
                }
            )
        if keep_best_in is not None:
            best = best_trial(study)
            if best is None or fitted.validation_pr_auc > best.value:
                keep_model(family, fitted, keep_best_in, study.study_name, trial.number, data_id)
        return fitted.validation_pr_auc

    return objective


def log_step_history(key: str, history: list[tuple[int, float]]) -> None:
    """A metric's value at every round or epoch, into the active run, in batches: one call per
    thousand values rather than one write per boosting round."""
    run = mlflow.active_run()
    if run is None or not history:
        return
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, step) for step, value in history]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), MLFLOW_BATCH_LIMIT):
        client.log_batch(run.info.run_id, metrics=metrics[start : start + MLFLOW_BATCH_LIMIT])


def load_best_params(family: ModelFamily, study_name: str = "", storage: str = "") -> dict:
    """The best complete trial's parameters, ready for `family.fit` (seed TRAINING_SEED
    reproduces the trial). Empty names mean the family's study and the project's storage."""
    return family.params_of(_stored_best_trial(family, study_name, storage))


def best_trial_number(family: ModelFamily, study_name: str = "", storage: str = "") -> int:
    """The number of the study's best complete trial (see `load_best_params`)."""
    return _stored_best_trial(family, study_name, storage).number


def _stored_best_trial(family: ModelFamily, study_name: str, storage: str) -> FrozenTrial:
    study = optuna.load_study(
        study_name=study_name or family.study_name,
        storage=optuna_storage(storage or settings.optuna_storage()),
    )
    best = best_trial(study)
    if best is None:
        raise ValueError(f"Study {study.study_name!r} has no complete trial yet; tune first")
    return best


@dataclass(frozen=True)
class KeptModel:
    """Which trial's model is kept in a folder, and on which data it was fitted."""

    study_name: str
    trial_number: int
    data_id: str
    validation_pr_auc: float
    best_step: int
    summary: dict[str, Any]


def keep_model(
    family: ModelFamily,
    fitted: TrainedModel,
    folder: Path,
    study_name: str,
    trial_number: int,
    data_id: str,
) -> None:
    """Replaces the model kept in `folder` with `fitted`, atomically: the files are written
    beside it and renamed into place, so a kill leaves the old model or the new, never half."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    family.save(fitted.model, staging)
    kept = KeptModel(
        study_name,
        trial_number,
        data_id,
        fitted.validation_pr_auc,
        fitted.best_step,
        {k: v for k, v in fitted.summary.items() if isinstance(v, int | float | str | bool)},
    )
    (staging / KEPT_MODEL_FILE).write_text(json.dumps(asdict(kept), indent=2))
    retired = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    shutil.rmtree(retired, ignore_errors=True)
    if folder.exists():
        folder.rename(retired)
    staging.rename(folder)
    shutil.rmtree(retired, ignore_errors=True)


def load_kept_model(
    family: ModelFamily, folder: Path, study_name: str, trial_number: int, data_id: str
) -> TrainedModel | None:
    """The kept model when it is that trial's of that study, fitted on the data `data_id`;
    None otherwise (then the caller fits it again)."""
    description = folder / KEPT_MODEL_FILE
    if not data_id or not description.exists():
        return None
    kept = KeptModel(**json.loads(description.read_text()))
    if (kept.study_name, kept.trial_number, kept.data_id) != (study_name, trial_number, data_id):
        return None
    return TrainedModel(
        model=family.load(folder),
        validation_pr_auc=kept.validation_pr_auc,
        best_step=kept.best_step,
        summary={**kept.summary, "reused_from_trial": trial_number},
    )
