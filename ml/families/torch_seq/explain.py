"""Why the sequence model scored a shopper as it did: per static feature, by occlusion."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.families.torch_seq.inputs import SequenceTensors
from ml.families.torch_seq.train import TrainedSequenceModel, input_tensors, predict_logits


def feature_contributions(
    model: TrainedSequenceModel, model_input: pd.DataFrame, batch_size: int = 1024
) -> pd.DataFrame:
    """Per row and static feature: how much the feature moved the logit, by occlusion.

    A feature's contribution is the row's logit minus its logit with that feature set to the
    training average (standardized 0, "not missing"), everything else and the events unchanged.
    So the intervention list can name the features behind a sequence model's score too, in the
    same sign convention as XGBoost's SHAP values (larger = pushed the score up). One forward
    pass per feature over the given rows: meant for the top-k list, not for every user.
    """
    tensors = input_tensors(model, model_input)
    base = predict_logits(model.net, tensors, batch_size)
    scaler = model.scaler
    n_columns = len(scaler.columns)
    contributions = np.empty((len(model_input), n_columns), dtype=np.float64)
    for position, column in enumerate(scaler.columns):
        occluded = tensors.static.clone()
        occluded[:, position] = 0.0
        if column in scaler.missing_columns:
            occluded[:, n_columns + scaler.missing_columns.index(column)] = 0.0
        replaced = SequenceTensors(*tensors.as_tuple()[:4], static=occluded)
        contributions[:, position] = base - predict_logits(model.net, replaced, batch_size)
    return pd.DataFrame(contributions, columns=scaler.columns, index=model_input.index)
