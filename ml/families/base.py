"""The model-family contract: what a family must provide so that the generic study runner
(`ml.study`), the final evaluation (`ml.evaluation.final`), MLflow logging (`ml.tracking`) and
the Dagster asset factories treat every family the same way.

A family is one folder under `ml/families/` with a `FAMILY` object implementing `ModelFamily`,
and one line in `ml/families/__init__.py`. Everything else (splits, studies, calibration,
bootstrap intervals, the gate, scoring) is shared.

Parameters cross this boundary as plain dicts (JSON-able), so Optuna can store them as a
trial's user attribute and MLflow can log them; a family converts them to its own types inside.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd

from ml.splits import SplitData

if TYPE_CHECKING:  # the evaluation imports matplotlib and MLflow; a family needs neither
    from ml.evaluation.final import FinalEvaluation

# Called by a family after every boosting round or epoch with the validation PR-AUC so far; the
# study runner reports it to Optuna, prunes and checks the deadline from here (it may raise).
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model of a family and what its fit is worth telling.

    model: the family's own object (a booster, a trained network).
    validation_pr_auc: its PR-AUC on the validation cutoffs (the study's objective).
    best_step: the boosting round or epoch that was kept (early stopping).
    summary: plain numbers and strings about the fit (rows used, resampling, epochs, device),
    logged with the trial and shown in the final model's metadata.
    """

    model: Any
    validation_pr_auc: float
    best_step: int
    summary: dict[str, Any] = field(default_factory=dict)


class ModelFamily(ABC):
    """One way of predicting purchase propensity, from search space to registered pyfunc.

    name: the model's name in comparison tables, metrics and run names ("xgboost").
    registry_tag: the `family` tag of its registered versions (the pyfunc's `family`).
    asset_prefix: its Dagster assets are training/<asset_prefix>_study and _model.
    study_name: the default Optuna study.
    step_name: what one training step is called in logs ("round", "epoch").
    uses_sequences: whether its input includes the event sequences.
    uses_pretrained_encoder: whether its study may fine-tune the pretrained behaviour encoder
    (its study then runs after `training/behaviour_encoder`).
    search_settings: the type of its search settings, a dataclass whose fields have defaults
    (these defaults are the demo budget; the Dagster Launchpad can change each field).
    default_n_trials: how many trials a study asset runs unless told otherwise.
    pruner_startup_trials, pruner_warmup_steps: the median pruner judges a trial only once
    that many trials are complete, and from that step on.
    rdb_report_every: in an RDB study storage (PostgreSQL), a trial reports its value and asks
    the pruner only every this many steps: there each report and check costs about 12 ms on
    these machines against under 1 ms in a journal file (bench/parallel_tuning.py), more than
    a boosting round takes. A journal file gets every step.
    """

    name: str
    registry_tag: str
    asset_prefix: str
    study_name: str
    step_name: str
    uses_sequences: bool
    uses_pretrained_encoder: bool = False
    search_settings: type
    default_n_trials: int
    pruner_startup_trials: int
    pruner_warmup_steps: int
    rdb_report_every: int = 1

    @abstractmethod
    def device(self) -> str:
        """Where this family trains here ("cuda" or "cpu"), decided at run time."""

    @abstractmethod
    def suggest(self, trial: optuna.Trial, settings: Any) -> dict[str, Any]:
        """One point of the search space, as the complete parameters `fit` takes."""

    @abstractmethod
    def fit(
        self,
        data: SplitData,
        params: Mapping[str, Any],
        seed: int = 0,
        on_step: StepCallback | None = None,
    ) -> TrainedModel:
        """Fits on the train role, early-stopped on the validation role; reads nothing else.

        Trials and the final model both call this, so the same parameters and seed give the
        same model. `on_step` is called after every round or epoch.
        """

    @abstractmethod
    def predict(self, model: Any, model_input: pd.DataFrame) -> np.ndarray:
        """Raw (uncalibrated) purchase probabilities, one per row of `model_input`
        (`SplitData.model_input`)."""

    def explain(self, model: Any, data: SplitData, folder: Path) -> list[Path]:
        """Plots that explain the model (importance, SHAP), saved under `folder`."""
        return []

    @abstractmethod
    def log(
        self,
        model: TrainedModel,
        data: SplitData,
        evaluation: FinalEvaluation,
        params: Mapping[str, Any],
        plot_paths: list[Path],
    ) -> Any:
        """Logs the calibrated pyfunc and its evidence into the active MLflow run and
        registers it (`ml.tracking.log_model_with_evidence`); returns its LoggedModel."""

    @abstractmethod
    def save(self, model: Any, folder: Path) -> None:
        """Writes the fitted model's files into `folder` (the study keeps its best trial's)."""

    @abstractmethod
    def load(self, folder: Path) -> Any:
        """Reads back what `save` wrote."""

    def first_trials(self, settings: Any) -> list[dict[str, Any]]:
        """Parameters a new study tries first (Optuna's enqueue_trial; unnamed ones are
        sampled): none by default."""
        return []

    def describe_trial(self, trial: optuna.trial.FrozenTrial) -> str:
        """A few words naming what a trial tried, for the study's log."""
        return ", ".join(f"{k}={v}" for k, v in list(trial.params.items())[:2])

    def params_of(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """A finished trial's complete parameters (stored when it started)."""
        return dict(trial.user_attrs[PARAMS_ATTR])


# The user attribute holding a trial's complete parameters (searched and fixed values).
PARAMS_ATTR = "params"
