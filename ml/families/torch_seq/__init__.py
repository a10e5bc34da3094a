"""A PyTorch sequence model on each shopper's recent events, fused with the static features.

inputs.py turns sequences and features into tensors, net.py is the network and its
parameters, train.py the training loop and scoring (CUDA when present), pretrain.py the
behaviour encoder, explain.py the event attributions, search.py the search space, pyfunc.py the
registered model. Training needs torch, Optuna and the warehouse's readers only: explain and
pyfunc (matplotlib, MLflow) are imported where they are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd

from ml.families.base import PARAMS_ATTR, ModelFamily, StepCallback, TrainedModel
from ml.families.torch_seq import search, train
from ml.families.torch_seq.names import REGISTRY_TAG
from ml.families.torch_seq.net import SeqParams
from ml.splits import SplitData

if TYPE_CHECKING:
    from ml.evaluation.final import FinalEvaluation

# Stored by earlier versions: a trial's complete SeqParams.
LEGACY_PARAMS_ATTR = "seq_params"


class TorchSeqFamily(ModelFamily):
    name = "torch_seq"
    registry_tag = REGISTRY_TAG
    asset_prefix = "seq"
    study_name = "purchase-propensity-torch-seq"
    step_name = "epoch"
    uses_sequences = True
    uses_pretrained_encoder = True
    search_settings = search.SeqSearch
    default_n_trials = 3
    pruner_startup_trials = 3
    pruner_warmup_steps = 1

    def device(self) -> str:
        return str(train.torch_device())

    def suggest(self, trial: optuna.Trial, settings: search.SeqSearch) -> dict[str, Any]:
        return search.suggest_params(trial, settings)

    def fit(
        self,
        data: SplitData,
        params: Mapping[str, Any],
        seed: int = 0,
        on_step: StepCallback | None = None,
    ) -> TrainedModel:
        trained = train.train_sequence_model(
            data, SeqParams.from_dict(dict(params)), seed=seed, on_epoch=on_step
        )
        summary = {
            # As in ml.resampling: a positive weight is the class_weight strategy.
            "strategy": "class_weight" if trained.positive_weight > 1 else "none",
            "positive_weight": round(trained.positive_weight, 6),
            "train_rows_used": trained.train_rows,
            "best_epoch": trained.best_epoch,
            "epochs_trained": trained.epochs_trained,
            "train_seconds": round(trained.seconds, 3),
            "trained_on": trained.device,
            "pretrained": trained.params.pretrained,
            **{f"encoder_{key}": value for key, value in trained.encoder_origin.items()},
        }
        return TrainedModel(trained, trained.best_validation_pr_auc, trained.best_epoch, summary)

    def predict(self, trained: train.TrainedSequenceModel, model_input: pd.DataFrame) -> np.ndarray:
        return train.predict_proba(trained, model_input)

    def explain(
        self, trained: train.TrainedSequenceModel, data: SplitData, folder: Path
    ) -> list[Path]:
        """A heatmap of what each past event did to the score, for the promotion window's
        HEATMAP_ROWS highest-scored shoppers (integrated gradients)."""
        from ml.families.torch_seq import explain  # matplotlib: only where it is drawn

        frame = data.model_input("promotion")
        scores = train.predict_proba(trained, frame)
        rows = frame.iloc[np.argsort(-scores, kind="stable")[: explain.HEATMAP_ROWS]]
        return [
            explain.save_attribution_heatmap(
                explain.event_attributions(trained, rows),
                rows,
                folder / "event_attributions.png",
            )
        ]

    def log(
        self,
        fitted: TrainedModel,
        data: SplitData,
        evaluation: FinalEvaluation,
        params: Mapping[str, Any],
        plot_paths: list[Path],
    ) -> Any:
        from ml.families.torch_seq import pyfunc  # MLflow: only where it is used

        return pyfunc.log_model(fitted.model, data, evaluation, params, plot_paths=plot_paths)

    def save(self, trained: train.TrainedSequenceModel, folder: Path) -> None:
        from ml.families.torch_seq import pyfunc  # MLflow: only where it is used

        pyfunc.save_artifacts(trained, folder)

    def load(self, folder: Path) -> train.TrainedSequenceModel:
        from ml.families.torch_seq import pyfunc  # MLflow: only where it is used

        return pyfunc.load_trained(folder / pyfunc.STATE_DICT_FILE, folder / pyfunc.CONFIG_FILE)

    def first_trials(self, settings: search.SeqSearch) -> list[dict[str, Any]]:
        return search.first_trials(settings)

    def describe_trial(self, trial: optuna.trial.FrozenTrial) -> str:
        params = trial.user_attrs.get(PARAMS_ATTR) or trial.params
        start = "pretrained" if params.get("pretrained") else "from scratch"
        return f"{params.get('encoder')} h{params.get('hidden_size')} {start}"

    def params_of(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        attrs = trial.user_attrs
        return SeqParams.from_dict(attrs.get(PARAMS_ATTR) or attrs[LEGACY_PARAMS_ATTR]).to_dict()


FAMILY = TorchSeqFamily()
