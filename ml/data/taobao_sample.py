"""A Taobao-format event file of synthetic shoppers: a headerless `UserBehavior.csv` (user_id,
item_id, category_id, behavior_type pv/cart/fav/buy, Unix seconds) to try `propensity run
--source taobao` without the real file, and the shape the tests reproduce a real failure on.

Its traits are the real file's: heavy-tailed activity (a few crawler-like shoppers browse 60
times as much), few carts, purchases driven by yesterday's carts and a latent intent, no
prices, sorted by user then time, in the shop's local day (Asia/Shanghai). It spans DAYS full
days from FIRST_DAY, then a day that stops at 16:00 local time (an export taken in the
afternoon), plus STRAY_USERS shoppers with a few views days before the file.

    python -m ml.data.taobao_sample --out UserBehavior.csv [--users 814] [--seed 0]
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

DAYS = 9
SHANGHAI = timezone(timedelta(hours=8))
FIRST_DAY = datetime(2017, 11, 25, tzinfo=SHANGHAI)
EXPORT_STOPS_AFTER = timedelta(hours=16)
STRAY_USERS, STRAY_EVENTS_EACH, STRAY_DAYS_BEFORE = 3, 5, (5, 8)


class DailyCounts(NamedTuple):
    """Events per (user, day), arrays of shape (n_users, days); events = views + carts +
    wishlists, purchases (0 or 1 a day) come on top."""

    events: np.ndarray
    views: np.ndarray
    carts: np.ndarray
    wishlists: np.ndarray
    purchases: np.ndarray


def draw_daily_counts(rng: np.random.Generator, n_users: int, days: int) -> DailyCounts:
    """Taobao-like shoppers: lognormal activity with 8 crawler-like users 60 times as busy, days
    active at a per-user rate, few carts and wishlists, and purchases driven by a latent intent."""
    activity = rng.lognormal(np.log(8), 1.1, n_users)
    activity[rng.choice(n_users, 8, replace=False)] *= 60
    intent = rng.normal(size=n_users)
    active = rng.random((n_users, days)) < rng.beta(2.0, 1.5, n_users)[:, None]
    events = np.where(active, rng.poisson(activity[:, None], (n_users, days)) + 1, 0)
    carts = rng.binomial(events, rng.beta(1.2, 20, n_users)[:, None])
    wishlists = rng.binomial(events - carts, rng.beta(1, 30, n_users)[:, None])
    views = events - carts - wishlists
    # Buying follows yesterday's carts and the user's intent, saturating for heavy users.
    carts_before = np.pad(carts, ((0, 0), (1, 0)))[:, :days]
    p_buy = 1 / (1 + np.exp(4.0 - 1.6 * np.log1p(carts_before) - 1.2 * intent[:, None]))
    purchases = (active & (rng.random((n_users, days)) < np.minimum(p_buy, 0.7))).astype(int)
    return DailyCounts(events, views, carts, wishlists, purchases)


def write_taobao_file(path: Path, seed: int = 0, n_users: int = 814) -> Path:
    """A headerless Taobao UserBehavior CSV (user_id, item_id, category_id, behavior_type,
    timestamp in unix seconds), sorted by user then time as the real file is.

    DAYS full local days from FIRST_DAY drawn as in taobao_shaped_rows, then one more day that
    stops at 16:00 local time, so the last cutoff's label window is not over. Event times are
    uniform within each day. STRAY_USERS users also have STRAY_EVENTS_EACH views 5 to 8 days
    before the file, the only events old enough for events_previous_7d until the first day is.
    """
    rng = np.random.default_rng(seed)
    days = DAYS + 1
    counts = draw_daily_counts(rng, n_users, days)
    user_ids = rng.choice(1_000_000, n_users, replace=False) + 1
    cells, behaviors = [], []
    for behavior, per_day in (
        ("pv", counts.views),
        ("cart", counts.carts),
        ("fav", counts.wishlists),
        ("buy", counts.purchases),
    ):
        cells.append(np.repeat(np.arange(n_users * days), per_day.ravel()))
        behaviors.append(np.full(len(cells[-1]), behavior))
    user, day = np.concatenate(cells) // days, np.concatenate(cells) % days
    strays = rng.choice(n_users, STRAY_USERS, replace=False)
    n_strays = STRAY_USERS * STRAY_EVENTS_EACH
    user = np.concatenate([user, np.repeat(strays, STRAY_EVENTS_EACH)])
    low, high = STRAY_DAYS_BEFORE
    day = np.concatenate([day, -rng.integers(low, high + 1, n_strays)])
    behaviors.append(np.full(n_strays, "pv"))
    second = rng.integers(0, 86_400, len(user))
    item = rng.integers(1, 5_000_000, len(user))
    rows = pd.DataFrame(
        {
            "user_id": user_ids[user],
            "item_id": item,
            "category_id": item % 9_439 + 1,
            "behavior_type": np.concatenate(behaviors),
            "timestamp": int(FIRST_DAY.timestamp()) + 86_400 * day + second,
        }
    )
    stopped = (day == days - 1) & (second >= EXPORT_STOPS_AFTER.total_seconds())
    # An exact repeat would be counted as a duplicate by the ingest: keep every line distinct.
    rows = rows[~stopped].drop_duplicates().sort_values(["user_id", "timestamp"], kind="stable")
    rows.to_csv(path, header=False, index=False)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    parser.add_argument("--users", type=int, default=814)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    path = write_taobao_file(args.out, args.seed, args.users)
    print(f"wrote {path} ({sum(1 for _ in path.open()):,} events)")


if __name__ == "__main__":
    main()
