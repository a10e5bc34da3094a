"""Feature values as a shop manager reads them: "carted 3 items in the last 7 days", "last
carted 5 h before the cutoff", "has an open cart (carted, not bought since)".

One phrase per feature of `marts.user_features` (the names are the warehouse's); a feature
without a phrase here reads as "name = value", so a new feature is never dropped from a reason.
"""

from __future__ import annotations

import math
import re

# What each event-count feature counts, as a verb phrase taking the count.
_COUNTS = {
    "events": "{n} event{s}",
    "views": "viewed {n} product page{s}",
    "carts": "carted {n} item{s}",
    "removes": "removed {n} item{s} from the cart",
    "purchases": "bought {n} time{s}",
    "wishlists": "wishlisted {n} item{s}",
}
_WINDOWS = {
    "1d": "in the last day",
    "7d": "in the last 7 days",
    "lookback": "in the lookback window",
    "previous_7d": "8 to 14 days before the cutoff",
}
_COUNT_FEATURE = re.compile(
    r"^(events|views|carts|removes|purchases|wishlists)_(1d|7d|lookback|previous_7d)$"
)
# Event type codes of dbt_project/seeds/event_types.csv.
_EVENT_TYPES = {
    1: "a view",
    2: "a cart",
    3: "a removal from the cart",
    4: "a purchase",
    5: "a wishlist",
}


def describe_feature(name: str, value: float) -> str:
    """The phrase for one feature value; "name = value" when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _missing(name)
    match = _COUNT_FEATURE.match(name)
    if match:
        kind, window = match.groups()
        return f"{_count(_COUNTS[kind], value)} {_WINDOWS[window]}"
    phrase = _PHRASES.get(name)
    return phrase(value) if phrase else f"{name} = {value:.4g}"


def _count(template: str, value: float) -> str:
    n = int(round(value))
    return template.format(n=f"{n:,}", s="" if n == 1 else "s")


def _ago(hours: float) -> str:
    """3 h, 45 min, 2.5 days: how long before the cutoff."""
    if hours < 1:
        return f"{max(hours * 60, 1):.0f} min"
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours / 24:.1f} days"


def _missing(name: str) -> str:
    never = {
        "hours_since_last_cart": "never carted in the lookback window",
        "hours_since_last_purchase": "no purchase in the lookback window",
        "seconds_since_last_remove": "never removed an item in the lookback window",
    }
    return never.get(name, f"{name} unknown")


def _flag(yes: str, no: str):  # noqa: ANN202
    return lambda value: yes if value >= 0.5 else no


_PHRASES = {
    "hours_since_last_event": lambda v: f"last active {_ago(v)} before the cutoff",
    "hours_since_last_cart": lambda v: f"last carted {_ago(v)} before the cutoff",
    "hours_since_last_purchase": lambda v: f"last bought {_ago(v)} before the cutoff",
    "hours_since_first_event": lambda v: f"first seen {_ago(v)} before the cutoff",
    "seconds_since_last_remove": lambda v: f"last removed an item {_ago(v / 3600)} before",
    "sessions_lookback": lambda v: f"{_count('{n} session{s}', v)} in the lookback window",
    "distinct_products_lookback": lambda v: _count("looked at {n} different product{s}", v),
    "distinct_categories_lookback": lambda v: (
        f"browsed {round(v):,} " + ("category" if round(v) == 1 else "categories")
    ),
    "distinct_brands_lookback": lambda v: _count("looked at {n} brand{s}", v),
    "active_days_lookback": lambda v: _count("active on {n} day{s}", v) + " of the lookback window",
    "view_to_cart_ratio": lambda v: f"carts {v:.0%} of the products viewed",
    "cart_to_purchase_ratio": lambda v: f"buys {v:.0%} of what is carted",
    "cart_abandonment_rate": lambda v: f"leaves {v:.0%} of carts without buying",
    "avg_view_price": lambda v: f"views products at {v:,.2f} on average",
    "max_view_price": lambda v: f"viewed a product at {v:,.2f}",
    "avg_cart_price": lambda v: f"carts products at {v:,.2f} on average",
    "max_cart_price": lambda v: f"carted a product at {v:,.2f}",
    "avg_session_seconds": lambda v: f"sessions last {_ago(v / 3600)} on average",
    "avg_session_events": lambda v: f"{v:.1f} events per session on average",
    "activity_trend_7d": lambda v: (
        f"activity {'up' if v >= 0 else 'down'} {abs(v):.0%} on the week before"
    ),
    "days_of_history": lambda v: _count("{n} day{s} of history", v),
    "last_event_type": lambda v: f"last event was {_EVENT_TYPES.get(int(v), 'another event')}",
    "carts_since_last_purchase": lambda v: _count("carted {n} item{s} since the last purchase", v),
    "removes_since_last_purchase": lambda v: _count(
        "removed {n} item{s} since the last purchase", v
    ),
    "has_open_cart": _flag("has an open cart (carted, not bought since)", "no open cart"),
    "last_cart_removed": _flag("removed the item carted last", "kept the item carted last"),
    "last_session_events": lambda v: _count("{n} event{s} in the last session", v),
    "last_session_carts": lambda v: _count("carted {n} item{s} in the last session", v),
}
