"""The answers for shoppers: the calibrated purchase probability, its reasons in words, the next
categories and the action, from the same model input and the same code as batch scoring
(`ml.scoring`, `ml.next_category.serving`)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ml.dataset import KEY_COLUMNS
from ml.next_category.serving import choose_actions, rank_with_baseline, rank_with_model
from ml.registry import MODEL_NAME, predict_frame
from ml.scoring import top_drivers
from ml.serving.champions import Loaded
from ml.serving.features import ShopperInputs

COLD_START = (
    "No event of this shopper in the lookback before the cutoff: the models have nothing to "
    "score (a cold start). Send the session's events to score them."
)


def answer_many(
    shoppers: list[tuple[str, ShopperInputs]],
    models: Loaded,
    k: int = 10,
    explain: bool = True,
) -> list[dict[str, Any]]:
    """The answers for several shoppers, the models called once on all the known ones (a
    network or an explanation costs little more for ten rows than for one)."""
    bodies = [_header(user_id, inputs, models) for user_id, inputs in shoppers]
    known = [i for i, (_, inputs) in enumerate(shoppers) if inputs.known]
    for i in set(range(len(shoppers))) - set(known):
        bodies[i].update(COLD_START_BODY)
    if not known:
        return bodies
    frame = pd.concat([shoppers[i][1].model_input for i in known], ignore_index=True)
    names = shoppers[known[0]][1].category_names
    features = frame.drop(columns=list(KEY_COLUMNS))
    probabilities = predict_frame(models.propensity, features)
    python_model = models.propensity.unwrap_python_model()
    reasons: list[list[str | None]] = [[] for _ in known]
    if explain and hasattr(python_model, "contributions"):
        reasons = top_drivers(python_model.contributions(features), features)
    past_events: list[str | None] = [None] * len(known)
    if explain and hasattr(python_model, "event_reasons"):
        past_events = list(python_model.event_reasons(frame, names))
    if models.category is not None:
        ranking = rank_with_model(frame, models.category, str(models.category_version), k)
    else:
        ranking = rank_with_baseline(frame, k)
    actions = choose_actions(frame, ranking.categories[:, 0])
    for row, i in enumerate(known):
        categories = [
            {
                "category_idx": int(index),
                "category": names.get(int(index)),
                "probability": None
                if ranking.probabilities is None
                else float(ranking.probabilities[row, rank]),
            }
            for rank, index in enumerate(ranking.categories[row])
            if int(index) > 0
        ]
        bodies[i].update(
            {
                "cold_start": False,
                "probability": float(probabilities[row]),
                "reasons": [r for r in reasons[row] if r],
                "past_events": past_events[row],
                "next_categories": categories,
                "categories_from": ranking.source,
                "action": {
                    "action": str(actions["action"].iloc[row]),
                    "category": names.get(int(actions["action_category_idx"].iloc[row])),
                },
            }
        )
    return bodies


def _header(user_id: str, inputs: ShopperInputs, models: Loaded) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "cutoff": inputs.cutoff_time.isoformat(),
        "model": {"name": MODEL_NAME, "version": models.version, "family": models.family},
        "history_events": inputs.history_events,
        "live_events": inputs.live_events,
    }


COLD_START_BODY: dict[str, Any] = {
    "cold_start": True,
    "probability": None,
    "reasons": [],
    "past_events": None,
    "next_categories": [],
    "action": None,
    "message": COLD_START,
}
