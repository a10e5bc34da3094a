"""Reasons in words: every feature of marts.user_features has a phrase a shop manager reads,
and the phrases say the value right."""

from __future__ import annotations

import math

import pytest
import yaml

from ml.dataset import KEY_COLUMNS
from ml.reasons import describe_feature
from ml.scoring import top_drivers
from ml.settings import DBT_PROJECT_DIR


def documented_features() -> list[str]:
    marts = yaml.safe_load((DBT_PROJECT_DIR / "models/marts/_marts.yml").read_text())
    (features,) = [model for model in marts["models"] if model["name"] == "user_features"]
    return [c["name"] for c in features["columns"] if c["name"] not in KEY_COLUMNS]


def test_every_feature_reads_in_words() -> None:
    for name in documented_features():
        text = describe_feature(name, 2.0)
        assert " = " not in text and name not in text, (name, text)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("carts_7d", 3, "carted 3 items in the last 7 days"),
        ("carts_1d", 1, "carted 1 item in the last day"),
        ("purchases_lookback", 2, "bought 2 times in the lookback window"),
        ("events_previous_7d", 12, "12 events 8 to 14 days before the cutoff"),
        ("hours_since_last_cart", 3.2, "last carted 3 h before the cutoff"),
        ("hours_since_last_cart", 0.25, "last carted 15 min before the cutoff"),
        ("hours_since_last_purchase", 60, "last bought 2.5 days before the cutoff"),
        ("hours_since_last_cart", math.nan, "never carted in the lookback window"),
        ("has_open_cart", 1, "has an open cart (carted, not bought since)"),
        ("cart_abandonment_rate", 0.75, "leaves 75% of carts without buying"),
        ("last_event_type", 2, "last event was a cart"),
        ("distinct_categories_lookback", 1, "browsed 1 category"),
        ("a_new_feature", 1.5, "a_new_feature = 1.5"),
    ],
)
def test_phrases(name: str, value: float, expected: str) -> None:
    assert describe_feature(name, value) == expected


def test_drivers_carry_the_value_in_words_and_the_push() -> None:
    import pandas as pd

    contributions = pd.DataFrame({"carts_7d": [0.42, -0.1], "has_open_cart": [0.1, 0.3]})
    features = pd.DataFrame({"carts_7d": [3.0, 0.0], "has_open_cart": [1.0, 1.0]})
    drivers = top_drivers(contributions, features, n=2)
    assert drivers[0] == [
        "carted 3 items in the last 7 days (raises the score, +0.42)",
        "has an open cart (carted, not bought since) (raises the score, +0.10)",
    ]
    assert drivers[1] == [
        "has an open cart (carted, not bought since) (raises the score, +0.30)",
        None,
    ]


def test_the_list_can_put_open_carts_first() -> None:
    import pandas as pd

    from ml.scoring import choose_targets

    propensity = pd.DataFrame({"user_id": [1, 2, 3, 4, 5], "score": [0.9, 0.8, 0.3, 0.2, 0.1]})
    features = pd.DataFrame({"has_open_cart": [0.0, 0.0, 1.0, None, 1.0]})
    by_score = choose_targets(propensity, features, 3)
    assert by_score["user_id"].tolist() == [1, 2, 3]
    carts_first = choose_targets(propensity, features, 3, "open_carts_first")
    assert carts_first["user_id"].tolist() == [3, 5, 1]
    with pytest.raises(ValueError, match="rank_by"):
        choose_targets(propensity, features, 3, "loudest")
