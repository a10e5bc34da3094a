"""Optuna search over XGBoost parameters and the training-set resampling strategy.

One study lives in persistent storage (a journal file or an RDB URL), so a rerun continues the
same study and its trial count grows. Each trial resamples only the train split, trains with early
stopping on the validation split and is scored by validation average precision (PR-AUC). The test
split is never read here: it stays untouched for the final comparison and the promotion decision.
Each trial is also a nested MLflow run under whatever run is active.

Budgets are counts: `n_trials` decides how many trials a call runs, whatever the machine's speed,
so the same data and seed register the same model. `timeout_s` is only a safety net against a
run that hangs or a machine far slower than planned: a deadline for the whole call. When it
passes, no new trial starts and the trial in progress is stopped at its next boosting round or
epoch and recorded as FAIL (not PRUNED: pruning judges the parameters, and a sampler learns from
pruned trials, while a deadline says nothing about them), with the reason in its user attribute
STOPPED_REASON_ATTR; `TuningResult.timed_out` says it happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import xgboost as xgb
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import XGBoostPruningCallback
from sklearn.metrics import average_precision_score

from ml import settings
from ml.resampling import STRATEGIES, resample_training
from ml.splits import SplitData
from ml.xgb import VALIDATION_METRIC_KEY, predict_proba, train_xgb, xgb_device

# Resampling keys in a parameter set; every other key is an XGBoost parameter.
STRATEGY_KEY = "strategy"
TARGET_RATIO_KEY = "target_ratio"
# Used for strategy "none", which has no ratio to tune.
DEFAULT_TARGET_RATIO = 0.5
# Boosting rounds every trial may run before the median pruner may stop it.
PRUNER_WARMUP_ROUNDS = 10
PRUNER_STARTUP_TRIALS = 5
# User attributes of a trial the study's deadline stopped: why, and the last round or epoch run.
STOPPED_REASON_ATTR = "stopped_reason"
STOPPED_AT_ATTR = "stopped_at_step"


@dataclass
class TuningConfig:
    """Budget and identity of a tuning run.

    `storage` is a journal file path or an RDB URL (see `optuna_storage`); empty means the
    project default, `ml.settings.optuna_storage()`, read when tuning starts.

    `seed` seeds the sampler only. Every trial trains with `fit_with_params`'s fixed seed, so
    refitting the best parameters with the same round budget reproduces the best trial's model.

    `n_trials` trials run; `timeout_s` is a deadline for the whole call, a safety net set well
    above what `n_trials` need (see the module docstring).
    """

    n_trials: int = 20
    timeout_s: float = 3600
    seed: int = 42
    study_name: str = "purchase-propensity-xgb"
    storage: str = ""
    pruning: bool = True
    strategies: Sequence[str] = field(default_factory=lambda: tuple(STRATEGIES))
    num_boost_round: int = 1000
    early_stopping_rounds: int = 50


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
    best_iteration: int | None
    study_name: str
    n_trials_total: int
    n_trials_this_run: int
    n_pruned: int
    n_complete: int
    n_trials_requested: int
    timed_out: bool


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


class DeadlineCallback(xgb.callback.TrainingCallback):
    """Stops XGBoost training between boosting rounds once the deadline has passed."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.deadline.check("round", epoch)
        return False


@dataclass(frozen=True)
class TrialsRun:
    """What `run_trials` did: the study's best complete trial and this call's trials."""

    best: FrozenTrial
    trials: list[FrozenTrial]
    n_requested: int
    timed_out: bool


def optuna_storage(storage: str) -> str | JournalStorage:
    """An RDB URL (anything with "://") as is; otherwise a journal file at that path.

    The journal file suits several processes on one machine; an RDB URL suits several machines.
    """
    if not storage:
        raise ValueError("No Optuna storage given: pass a journal file path or an RDB URL")
    if "://" in storage:
        return storage
    path = Path(storage).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def suggest_params(trial: optuna.Trial, strategies: Sequence[str]) -> dict[str, Any]:
    """The search space: the resampling strategy, its target ratio and XGBoost parameters."""
    strategy = trial.suggest_categorical(STRATEGY_KEY, list(strategies))
    if strategy == "none":
        target_ratio = DEFAULT_TARGET_RATIO
    else:
        target_ratio = trial.suggest_float(TARGET_RATIO_KEY, 0.1, 1.0)
    return {
        STRATEGY_KEY: strategy,
        TARGET_RATIO_KEY: target_ratio,
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "eta": trial.suggest_float("eta", 0.02, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 20.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "lambda": trial.suggest_float("lambda", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 1e-3, 10.0, log=True),
    }


def fit_with_params(
    data: SplitData,
    params: dict[str, Any],
    callbacks: Sequence[xgb.callback.TrainingCallback] = (),
    device: str | None = None,
    num_boost_round: int = 1000,
    early_stopping_rounds: int = 50,
    seed: int = 0,
) -> xgb.Booster:
    """Resamples the train split as `params` say and trains XGBoost on it.

    Trials and the final model both go through here, so the final model is trained exactly like
    the trial that chose its parameters (same `seed` and round budget give the same booster).
    Reads only the train and validation splits.
    """
    xgb_params = {k: v for k, v in params.items() if k not in (STRATEGY_KEY, TARGET_RATIO_KEY)}
    resampled = resample_training(
        data.X_train,
        data.y_train,
        params[STRATEGY_KEY],
        target_ratio=params.get(TARGET_RATIO_KEY, DEFAULT_TARGET_RATIO),
        seed=seed,
    )
    return train_xgb(
        {**xgb_params, "seed": seed},
        resampled.X,
        resampled.y,
        data.X_validation,
        data.y_validation,
        sample_weight=resampled.sample_weight,
        callbacks=callbacks,
        device=device,
        num_boost_round=num_boost_round,
        early_stopping_rounds=early_stopping_rounds,
    )


def open_study(
    study_name: str, storage: str, seed: int, pruner: optuna.pruners.BasePruner
) -> optuna.Study:
    """The named study (created or continued) with a seeded TPE sampler.

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
    return study


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
        log(
            f"trial {trial.number} ({len(run_here)}/{n_trials} this run): "
            f"{describe(trial)} -> {outcome}; {best_text}"
        )
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


@contextmanager
def trial_mlflow_run(trial: optuna.Trial, tags: dict[str, Any]) -> Iterator[None]:
    """A nested MLflow run "trial-<number>" around a trial's training.

    A pruned trial's run ends FINISHED (pruning is a normal outcome) and a trial the deadline
    stopped ends KILLED, each tagged with trial_state and the reason; the exception then goes on
    to Optuna, which records the trial as PRUNED or FAIL.
    """
    stop: optuna.TrialPruned | StudyTimedOut | None = None
    with mlflow.start_run(nested=True, run_name=f"trial-{trial.number}"):
        mlflow.set_tags(tags)
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


def tuning_result(
    study: optuna.Study,
    run: TrialsRun,
    best_params: dict[str, Any],
    best_iteration: int | None,
) -> TuningResult:
    return TuningResult(
        best_params=best_params,
        best_value=float(run.best.value),
        best_trial_number=run.best.number,
        best_iteration=best_iteration,
        study_name=study.study_name,
        n_trials_total=len(study.trials),
        n_trials_this_run=len(run.trials),
        n_pruned=sum(t.state == TrialState.PRUNED for t in run.trials),
        n_complete=sum(t.state == TrialState.COMPLETE for t in run.trials),
        n_trials_requested=run.n_requested,
        timed_out=run.timed_out,
    )


def tune_xgb(
    data: SplitData, config: TuningConfig, log: Callable[[str], None] = print
) -> TuningResult:
    """Runs `config.n_trials` more trials of the named study (fewer only when the safety-net
    deadline `config.timeout_s` passes; see the module docstring).

    `log` gets one line per trial (the Dagster logger in the pipeline, print otherwise).
    """
    device = xgb_device()
    study = open_study(
        config.study_name,
        config.storage,
        config.seed,
        optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_ROUNDS
        ),
    )
    n_before = len(study.trials)
    log(
        f"Study {config.study_name!r}: {n_before} earlier trials; running {config.n_trials} "
        f"more (deadline {config.timeout_s:g}s) on {device}"
    )

    def objective(trial: optuna.Trial, deadline: Deadline) -> float:
        params = suggest_params(trial, config.strategies)
        callbacks: list[xgb.callback.TrainingCallback] = [DeadlineCallback(deadline)]
        if config.pruning:
            callbacks.append(XGBoostPruningCallback(trial, VALIDATION_METRIC_KEY))
        tags = {"optuna_study": config.study_name, "optuna_trial": trial.number}
        with trial_mlflow_run(trial, tags):
            mlflow.log_params(params)
            booster = fit_with_params(
                data,
                params,
                callbacks=callbacks,
                device=device,
                num_boost_round=config.num_boost_round,
                early_stopping_rounds=config.early_stopping_rounds,
            )
            value = float(
                average_precision_score(
                    data.y_validation, predict_proba(booster, data.X_validation)
                )
            )
            trial.set_user_attr("best_iteration", booster.best_iteration)
            mlflow.set_tag("trial_state", "complete")
            mlflow.log_metrics(
                {"validation_pr_auc": value, "best_iteration": booster.best_iteration}
            )
        return value

    run = run_trials(
        study,
        objective,
        config.n_trials,
        config.timeout_s,
        log,
        describe=lambda trial: str(trial.params.get(STRATEGY_KEY)),
        step_name="round",
    )
    return tuning_result(study, run, params_of(run.best), run.best.user_attrs.get("best_iteration"))


def load_best_params(study_name: str, storage: str) -> dict[str, Any]:
    """The best complete trial's parameters from storage, ready for `fit_with_params`."""
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(storage))
    best = best_trial(study)
    if best is None:
        raise ValueError(f"Study {study_name!r} has no complete trial yet; tune first")
    return params_of(best)


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's full parameter set, with the default target ratio filled in for "none"."""
    return {TARGET_RATIO_KEY: DEFAULT_TARGET_RATIO, **trial.params}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None (study.best_trial raises when there is none)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None
