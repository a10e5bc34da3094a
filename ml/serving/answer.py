"""One shopper's answer: the calibrated purchase probability, its reasons in words, the next
categories and the action, from the same model input and the same code as batch scoring
(`ml.scoring`, `ml.next_category.serving`)."""

from __future__ import annotations

from typing import Any

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


def answer(user_id: str, inputs: ShopperInputs, models: Loaded, k: int = 10) -> dict[str, Any]:
    """The response body of POST /score for one shopper."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "cutoff": inputs.cutoff_time.isoformat(),
        "model": {"name": MODEL_NAME, "version": models.version, "family": models.family},
        "history_events": inputs.history_events,
        "live_events": inputs.live_events,
    }
    if not inputs.known:
        return {
            **body,
            "cold_start": True,
            "probability": None,
            "reasons": [],
            "past_events": None,
            "next_categories": [],
            "action": None,
            "message": COLD_START,
        }
    frame = inputs.model_input
    features = frame.drop(columns=list(KEY_COLUMNS))
    probability = float(predict_frame(models.propensity, features)[0])
    python_model = models.propensity.unwrap_python_model()
    reasons: list[str] = []
    if hasattr(python_model, "contributions"):
        reasons = [r for r in top_drivers(python_model.contributions(features), features)[0] if r]
    past_events = None
    if hasattr(python_model, "event_reasons"):
        past_events = python_model.event_reasons(frame, inputs.category_names)[0]
    if models.category is not None:
        ranking = rank_with_model(frame, models.category, str(models.category_version), k)
    else:
        ranking = rank_with_baseline(frame, k)
    probabilities = ranking.probabilities
    categories = [
        {
            "category_idx": int(index),
            "category": inputs.category_names.get(int(index)),
            "probability": None if probabilities is None else float(probabilities[0, rank]),
        }
        for rank, index in enumerate(ranking.categories[0])
        if int(index) > 0
    ]
    action = choose_actions(frame, ranking.categories[:, 0]).iloc[0]
    return {
        **body,
        "cold_start": False,
        "probability": probability,
        "reasons": reasons,
        "past_events": past_events,
        "next_categories": categories,
        "categories_from": ranking.source,
        "action": {
            "action": str(action["action"]),
            "category": inputs.category_names.get(int(action["action_category_idx"])),
        },
    }
