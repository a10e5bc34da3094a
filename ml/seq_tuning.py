"""Optuna search over the sequence model's architecture and training settings.

The twin of `ml.tuning` (XGBoost): the same storage helper (a journal file or an RDB URL, so a
rerun continues the study), one nested MLflow run per trial under the active run, a seeded TPE
sampler, a median pruner, and validation PR-AUC as the objective. Every epoch a trial reports its
validation PR-AUC (`trial.report`) and asks `trial.should_prune`, so weak architectures stop after
an epoch or two. The test split is never read. As there, `n_trials` decides how many trials
run and `timeout_s` is a safety-net deadline for the whole call: once it passes, the trial in
progress stops after its current epoch and is recorded as FAIL with its reason.

Every trial trains with the fixed `TRAINING_SEED`, so retraining the best parameters
(`load_best_seq_params`) on the same device reproduces the best trial's model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlflow
import optuna
from optuna.trial import FrozenTrial

from ml import settings
from ml.seq_model import ENCODERS, SeqParams, torch_device, train_sequence_model
from ml.splits import SplitData
from ml.tuning import (
    Deadline,
    TuningResult,
    best_trial,
    open_study,
    optuna_storage,
    run_trials,
    trial_mlflow_run,
    tuning_result,
)

TRAINING_SEED = 0
# The user attribute holding a trial's complete SeqParams (searched and fixed values).
PARAMS_ATTR = "seq_params"


@dataclass
class SeqTuningConfig:
    """Budget, identity and search space of a sequence-model study.

    `storage` empty means `ml.settings.optuna_storage()`, read when tuning starts. `seed` seeds
    the sampler only (offset by the trials already in the study). The search space: `encoders`,
    `hidden_sizes`, 1..`max_layers` layers, dropout 0..0.4, learning rate 1e-4..1e-2 and weight
    decay 1e-6..1e-2 (log scale), `batch_sizes`, `max_lengths`, and the loss weighting's
    target_ratio 0.1..1. `max_epochs`, `patience`, `category_buckets` and `max_train_rows` (see
    SeqParams) are fixed per study.
    The median pruner compares a trial with the median of earlier trials at the same epoch once
    `pruner_startup_trials` trials are complete, from epoch `pruner_warmup_epochs` on.
    `n_trials` trials run; `timeout_s` is a deadline for the whole call, a safety net set well
    above what `n_trials` need.
    """

    n_trials: int = 20
    timeout_s: float = 7200
    seed: int = 42
    study_name: str = "purchase-propensity-torch-seq"
    storage: str = ""
    pruning: bool = True
    max_epochs: int = 15
    patience: int = 3
    category_buckets: int = 1024
    max_train_rows: int = 0
    encoders: Sequence[str] = ENCODERS
    hidden_sizes: Sequence[int] = (32, 64, 128)
    max_layers: int = 3
    batch_sizes: Sequence[int] = (256, 512, 1024, 2048)
    max_lengths: Sequence[int] = (10, 20, 30, 50)
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 1


def suggest_seq_params(trial: optuna.Trial, config: SeqTuningConfig) -> SeqParams:
    """One point of the search space, as a complete SeqParams."""
    return SeqParams(
        encoder=trial.suggest_categorical("encoder", list(config.encoders)),
        hidden_size=trial.suggest_categorical("hidden_size", list(config.hidden_sizes)),
        num_layers=trial.suggest_int("num_layers", 1, config.max_layers),
        dropout=trial.suggest_float("dropout", 0.0, 0.4),
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        batch_size=trial.suggest_categorical("batch_size", list(config.batch_sizes)),
        max_length=trial.suggest_categorical("max_length", list(config.max_lengths)),
        target_ratio=trial.suggest_float("target_ratio", 0.1, 1.0),
        category_buckets=config.category_buckets,
        max_train_rows=config.max_train_rows,
        max_epochs=config.max_epochs,
        patience=config.patience,
    )


def tune_sequence_model(
    data: SplitData, config: SeqTuningConfig, log: Callable[[str], None] = print
) -> TuningResult:
    """Runs `config.n_trials` more trials of the named study (fewer only when the safety-net
    deadline `config.timeout_s` passes).

    Returns `ml.tuning.TuningResult`: best_params is the best trial's complete SeqParams as a
    dict, best_iteration its best epoch. `log` gets one line per trial.
    """
    device = torch_device()
    study = open_study(
        config.study_name,
        config.storage,
        config.seed,
        optuna.pruners.MedianPruner(
            n_startup_trials=config.pruner_startup_trials,
            n_warmup_steps=config.pruner_warmup_epochs,
        ),
    )
    n_before = len(study.trials)
    log(
        f"Study {config.study_name!r}: {n_before} earlier trials; running {config.n_trials} "
        f"more (deadline {config.timeout_s:g}s) on {device}"
    )

    def objective(trial: optuna.Trial, deadline: Deadline) -> float:
        params = suggest_seq_params(trial, config)
        trial.set_user_attr(PARAMS_ATTR, params.to_dict())

        def on_epoch(epoch: int, value: float) -> None:
            mlflow.log_metric("validation_pr_auc", value, step=epoch)
            if config.pruning:
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (PR-AUC {value:.4f})")
            deadline.check("epoch", epoch)

        tags = {
            "optuna_study": config.study_name,
            "optuna_trial": trial.number,
            "device": str(device),
        }
        with trial_mlflow_run(trial, tags):
            mlflow.log_params(params.to_dict())
            trained = train_sequence_model(
                data, params, seed=TRAINING_SEED, device=device, on_epoch=on_epoch
            )
            trial.set_user_attr("best_epoch", trained.best_epoch)
            mlflow.set_tag("trial_state", "complete")
            mlflow.log_metrics(
                {
                    "best_validation_pr_auc": trained.best_validation_pr_auc,
                    "best_epoch": trained.best_epoch,
                    "epochs_trained": trained.epochs_trained,
                    "train_seconds": trained.seconds,
                }
            )
        return trained.best_validation_pr_auc

    run = run_trials(
        study,
        objective,
        config.n_trials,
        config.timeout_s,
        log,
        describe=lambda trial: f"{trial.params.get('encoder')} h{trial.params.get('hidden_size')}",
        step_name="epoch",
    )
    return tuning_result(
        study, run, params_of(run.best).to_dict(), run.best.user_attrs.get("best_epoch")
    )


def load_best_seq_params(study_name: str, storage: str = "") -> SeqParams:
    """The best complete trial's SeqParams, ready for `train_sequence_model` (seed
    TRAINING_SEED reproduces the trial). Empty storage means the project default."""
    study = optuna.load_study(
        study_name=study_name, storage=optuna_storage(storage or settings.optuna_storage())
    )
    best = best_trial(study)
    if best is None:
        raise ValueError(f"Study {study_name!r} has no complete trial yet; tune first")
    return params_of(best)


def params_of(trial: FrozenTrial) -> SeqParams:
    """A trial's complete SeqParams (stored as a user attribute when the trial started)."""
    return SeqParams.from_dict(trial.user_attrs[PARAMS_ATTR])
