"""What the scoring run writes about categories: each active shopper's top categories
(`predictions.next_categories`) and, per targeted shopper, the action to take and its category
(columns of `predictions.intervention_targets`).

The categories come from the `next-category` champion. Before any version has earned the alias
(the gate promotes only a model that beats the best baseline), they come from the baseline
"the user's most frequent categories" (ties and the rest by popularity among the scored
shoppers' recent events), which has no probabilities; the `source` column says which.

Actions, first that applies:
- win_back_cart: the shopper has an open cart (`has_open_cart`); the category is the newest
  cart event's, the item waiting in it;
- reengage_lapsing_buyer: the shopper bought in the lookback but not in the last
  LAPSING_AFTER_HOURS; the category is their top predicted one;
- offer_in_category: everyone else, in their top predicted category.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from ml.evaluation.ranking import DEFAULT_K, top_categories
from ml.next_category.baselines import (
    last_category,
    most_frequent,
    n_categories_of,
    popularity,
)
from ml.next_category.evaluation import CATEGORY_MODEL_NAME
from ml.next_category.model import CART_CODE
from ml.registry import current_champion

LAPSING_AFTER_HOURS = 7 * 24
ACTIONS = ("win_back_cart", "reengage_lapsing_buyer", "offer_in_category")
BASELINE_SOURCE = "baseline: most_frequent"


@dataclass(frozen=True)
class CategoryRanking:
    """Top categories per row (rows x k indexes), their probabilities (None for the baseline)
    and where they came from ("next-category v3" or the baseline)."""

    categories: np.ndarray
    probabilities: np.ndarray | None
    source: str
    model_version: str | None


def rank_categories(frame: pd.DataFrame, tracking_uri: str, k: int = DEFAULT_K) -> CategoryRanking:
    """The champion's top k categories for every row of `frame` (features and sequences), or
    the baseline's when `next-category` has no champion (or is not registered yet)."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    registered = client.search_registered_models(f"name='{CATEGORY_MODEL_NAME}'")
    version = current_champion(client, CATEGORY_MODEL_NAME) if registered else None
    if version is not None:
        model = mlflow.pyfunc.load_model(f"models:/{CATEGORY_MODEL_NAME}@champion")
        return rank_with_model(frame, model, version, k)
    return rank_with_baseline(frame, k)


def rank_with_model(
    frame: pd.DataFrame, model: mlflow.pyfunc.PyFuncModel, version: str, k: int = DEFAULT_K
) -> CategoryRanking:
    """A loaded `next-category` version's top k (the scoring service keeps it loaded)."""
    probabilities = model.unwrap_python_model().probabilities(frame)
    top = top_categories(probabilities, k)
    return CategoryRanking(
        top,
        np.take_along_axis(probabilities, top, axis=1),
        f"{CATEGORY_MODEL_NAME} v{version}",
        version,
    )


def rank_with_baseline(frame: pd.DataFrame, k: int = DEFAULT_K) -> CategoryRanking:
    """The shopper's most frequent categories, ties by popularity among the rows given."""
    history = frame["category_indexes"]
    counts = popularity(history, n_categories_of(history))
    scores = most_frequent(history, counts)
    return CategoryRanking(top_categories(scores, k), None, BASELINE_SOURCE, None)


def newest_cart_category(event_types: pd.Series, categories: pd.Series) -> np.ndarray:
    """Per row, the category of the newest cart event in the sequence (0 when none)."""
    return last_category(categories, event_types, CART_CODE)


def choose_actions(frame: pd.DataFrame, top_category: np.ndarray) -> pd.DataFrame:
    """action and action_category_idx per row of `frame` (features and sequences)."""
    open_cart = frame["has_open_cart"].fillna(0).to_numpy() > 0
    bought = frame["purchases_lookback"].fillna(0).to_numpy() > 0
    since_purchase = frame["hours_since_last_purchase"].to_numpy(dtype=float)
    lapsing = bought & ~open_cart & (np.nan_to_num(since_purchase, nan=0.0) >= LAPSING_AFTER_HOURS)
    action = np.where(open_cart, ACTIONS[0], np.where(lapsing, ACTIONS[1], ACTIONS[2]))
    cart_category = newest_cart_category(frame["event_type_codes"], frame["category_indexes"])
    category = np.where(open_cart & (cart_category > 0), cart_category, top_category)
    return pd.DataFrame({"action": action, "action_category_idx": category.astype(np.int64)})
