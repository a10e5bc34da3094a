"""Seeded synthetic shop traffic in the shape of the REES46 e-commerce event files.

Why: the workflow needs data that is free to share, any size, reproducible, and that carries a
learnable but not trivial purchase signal. The simulation is built from a few explicit pieces:

* A catalog: Zipf-skewed categories, brands and products, log-normal prices per category.
* Users with a latent propensity (how likely they are to buy), an activity rate, a budget, a
  favourite category, a join day and, for churners, a churn day before which activity fades.
  A few users are bots: many long sessions of views, never a cart or a purchase.
* Shopping "episodes": a user looks for something in one category over one or more sessions
  (daily and weekly cycles), views products, may add the target to the cart, and then buys it
  (minutes or days later), removes it, or abandons it. The chance to cart and to buy grows with
  the latent propensity and falls when the product is above the user's budget.

Determinism does not depend on how the work is sliced. Users are simulated in fixed blocks of
``BLOCK_USERS``; a block's users come from the random stream ``(seed, block)`` and the episodes
that start on a day come from the stream ``(seed, block, day)``. Episodes last less than
``MAX_EPISODE_DAYS``, so a day range is simulated from the episodes that start up to that many
days before it, and only events inside the range are kept. Hence the chunk size does not change
the events, and days [0, 31) equal days [0, 30) followed by day 30.
"""

import argparse
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")
VIEW, CART, REMOVE, PURCHASE = range(4)

#: Column order and types of every file; the ingestion code relies on it.
EVENT_SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("us")),
        ("event_type", pa.string()),
        ("product_id", pa.int64()),
        ("category_id", pa.int64()),
        ("category_code", pa.string()),
        ("brand", pa.string()),
        ("price", pa.float64()),
        ("user_id", pa.int64()),
        ("user_session", pa.string()),
    ]
)

BLOCK_USERS = 10_000  # users per random-stream block; fixed so that chunking cannot change events
MAX_EPISODE_DAYS = 8  # every event of an episode falls within this many days of its start day
USER_ID_OFFSET = 500_000_000
PRODUCT_ID_OFFSET = 1_000_000
CATEGORY_ID_OFFSET = 2_053_013_552_000_000_000

DAY = 86_400  # seconds
_DAY_KEY_OFFSET = 1_000  # random-stream keys must be >= 0; shifts days back to MAX_EPISODE_DAYS
_CATALOG_STREAM, _USER_STREAM, _DAY_STREAM = 0, 1, 2

# Share of episodes that start in each UTC hour: quiet nights, an afternoon and evening peak.
_HOUR_WEIGHTS = np.array(
    [2, 1, 1, 1, 1, 2, 3, 4, 6, 7, 7, 7, 8, 8, 8, 9, 10, 11, 11, 10, 8, 6, 4, 3], dtype=float
)
HOUR_SHARE = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
# Activity multiplier per weekday, Monday first: more shopping at the weekend.
WEEKDAY_FACTOR = np.array([0.95, 0.93, 0.95, 0.97, 1.0, 1.12, 1.18])

# Words for the dotted category codes, in the style of REES46 ("electronics.smartphone").
_TOP_LEVELS = (
    *("electronics", "appliances", "computers", "apparel", "furniture", "kids", "sport"),
    *("auto", "construction", "accessories", "country_yard", "medicine", "stationery"),
)
_LEAVES = (
    *("smartphone", "tablet", "audio", "video", "clocks", "camera", "kitchen", "environment"),
    *("iron", "vacuum", "notebook", "desktop", "peripherals", "shoes", "costume", "bag"),
    *("living_room", "bedroom", "toys", "bicycle", "tools", "light", "components", "sauna"),
    *("headphone", "printer", "fridge", "washer", "keyboard", "mouse", "monitor"),
)
_SYLLABLES = ("ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "do", "ze", "pa", "xi", "bo", "re")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to simulate: the shop (users, catalog, seed) and the day range to write."""

    n_users: int = 5_000
    days: int = 30  # number of days to generate, starting at start_day
    start: date = date(2025, 9, 1)  # day 0 of the simulated shop (UTC midnight)
    start_day: int = 0  # first day index to generate (for "next day": start_day=30, days=1)
    seed: int = 42
    n_products: int = 20_000
    n_categories: int = 300
    n_brands: int = 500
    episodes_per_day: float = 0.1  # median shopping episodes per user and day
    bot_share: float = 0.001  # share of users that are bots
    churn_share: float = 0.35  # share of users that stop visiting at some point
    new_user_share: float = 0.25  # share of users that join after day 0 (within 120 days)

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.days < 1:
            raise ValueError("n_users and days must be at least 1")
        if self.start_day < 0 or self.seed < 0:
            raise ValueError("start_day and seed must be non-negative")
        if not 1 <= self.n_categories <= self.n_products or self.n_brands < 1:
            raise ValueError("need 1 <= n_categories <= n_products and n_brands >= 1")

    @property
    def end_day(self) -> int:
        """First day index after the generated range."""
        return self.start_day + self.days

    @classmethod
    def for_target_events(cls, n_events: int, days: int = 30, seed: int = 42) -> "SyntheticConfig":
        """A config whose output has roughly ``n_events`` events (within ~20 %).

        Simulates the first blocks of users (at most three, fewer when the target is reached);
        counts users until the target for small targets, else scales the mean events per user.
        """
        pilot = cls(n_users=3 * BLOCK_USERS, days=days, seed=seed)
        catalog = _make_catalog(pilot)
        per_user = np.zeros(0, np.int64)
        for block in range(3):
            events = _simulate_block(pilot, catalog, block)
            counts = np.bincount(events.user - block * BLOCK_USERS, minlength=BLOCK_USERS)
            per_user = np.concatenate([per_user, counts])
            if per_user.sum() >= n_events:
                break
        cumulative = np.cumsum(per_user)
        if n_events <= cumulative[-1]:
            n_users = int(np.searchsorted(cumulative, n_events)) + 1
        else:
            n_users = round(n_events * len(per_user) / cumulative[-1])
        return cls(n_users=max(n_users, 1), days=days, seed=seed)


@dataclass(frozen=True)
class GenerationSummary:
    """What generate_events wrote."""

    files: list[Path]
    n_events: int
    n_users: int  # users with at least one event
    first_event: datetime | None  # None when no event falls in the range
    last_event: datetime | None


# ----------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class _Catalog:
    """Products sorted by category, so a category's products are one contiguous range."""

    category_start: np.ndarray  # first product index of each category
    category_size: np.ndarray  # number of products in each category
    category_share: np.ndarray  # probability that an episode looks in each category
    product_id: np.ndarray
    product_category_id: np.ndarray
    product_category_code: pa.Array  # nullable strings
    product_brand: pa.Array  # nullable strings
    product_price: np.ndarray


def _zipf_share(n: int, exponent: float) -> np.ndarray:
    """Zipf probabilities for ranks 1..n: a few items get most of the traffic."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _zipf_rank(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """A 0-based rank below each size with P(rank=k) roughly proportional to 1/(k+1)."""
    rank = (np.exp(rng.random(len(sizes)) * np.log(sizes + 1.0)) - 1.0).astype(np.int64)
    return np.minimum(rank, sizes - 1)  # guards against rounding up at the very top


def _make_catalog(config: SyntheticConfig) -> _Catalog:
    """The products of the shop; depends only on the seed and the catalog sizes."""
    rng = np.random.default_rng([config.seed, _CATALOG_STREAM])
    n_cat, n_prod, n_brand = config.n_categories, config.n_products, config.n_brands

    # Popular categories get more products and more traffic; every category has one product.
    category_share = _zipf_share(n_cat, 1.0)
    category_size = 1 + rng.multinomial(n_prod - n_cat, _zipf_share(n_cat, 0.8))
    category_start = np.cumsum(category_size) - category_size
    product_category = np.repeat(np.arange(n_cat), category_size)

    category_id = CATEGORY_ID_OFFSET + np.sort(rng.choice(10**9, n_cat, replace=False))
    codes = [
        f"{_TOP_LEVELS[t]}.{_LEAVES[leaf]}"
        for t, leaf in zip(
            rng.integers(len(_TOP_LEVELS), size=n_cat),
            rng.integers(len(_LEAVES), size=n_cat),
            strict=True,
        )
    ]
    category_code = pa.array(codes, mask=rng.random(n_cat) < 0.3)  # ~30 % unnamed, as in REES46

    brand_names = pa.array(
        [
            "".join(_SYLLABLES[s] for s in rng.integers(len(_SYLLABLES), size=rng.integers(2, 4)))
            for _ in range(n_brand)
        ]
    )
    brand = rng.choice(n_brand, n_prod, p=_zipf_share(n_brand, 1.1))
    brand_index = pa.array(brand, mask=rng.random(n_prod) < 0.15)  # ~15 % without a brand

    # Log-normal prices: each category has its own median, products scatter around it.
    category_median = np.exp(rng.normal(np.log(40.0), 1.0, n_cat))
    price = category_median[product_category] * np.exp(rng.normal(0.0, 0.5, n_prod))
    price = np.round(np.maximum(price, 0.5), 2)

    return _Catalog(
        category_start=category_start,
        category_size=category_size,
        category_share=category_share,
        product_id=PRODUCT_ID_OFFSET + rng.permutation(n_prod).astype(np.int64),
        product_category_id=category_id[product_category],
        product_category_code=category_code.take(pa.array(product_category)),
        product_brand=brand_names.take(brand_index),
        product_price=price,
    )


# ----------------------------------------------------------------------------- users


@dataclass(frozen=True)
class _Users:
    """Attributes of the BLOCK_USERS users of one block (arrays indexed by user in block)."""

    first_index: int  # global index of the block's first user
    propensity: np.ndarray  # latent wish to buy, standard normal
    rate: np.ndarray  # shopping episodes per day (bots: sessions per day)
    log_budget: np.ndarray  # log of the price the user is comfortable with
    favorite_category: np.ndarray
    join_day: np.ndarray
    churn_day: np.ndarray  # first day without visits (huge for loyal users)
    is_bot: np.ndarray
    bot_views: np.ndarray  # mean views per bot session


def _draw_users(config: SyntheticConfig, catalog: _Catalog, block: int) -> _Users:
    """The users of one block; depends only on (seed, block) and the catalog."""
    rng = np.random.default_rng([config.seed, _USER_STREAM, block])
    n = BLOCK_USERS
    propensity = rng.standard_normal(n)
    is_bot = rng.random(n) < config.bot_share
    # Active users also tend to be keen buyers: frequency carries some of the propensity.
    log_rate = np.log(config.episodes_per_day) + 0.8 * rng.standard_normal(n) + 0.3 * propensity
    rate = np.where(is_bot, rng.uniform(1.0, 3.0, n), np.exp(log_rate))
    is_new = rng.random(n) < config.new_user_share
    join_day = np.where(is_new, rng.integers(0, 120, n), -(10**6))
    churns = rng.random(n) < config.churn_share
    lifetime = 1 + rng.exponential(60.0, n).astype(np.int64)
    churn_day = np.where(churns, np.maximum(join_day, 0) + lifetime, 10**6)
    return _Users(
        first_index=block * n,
        propensity=propensity,
        rate=rate,
        log_budget=rng.normal(np.log(40.0), 0.9, n),
        favorite_category=rng.choice(len(catalog.category_share), n, p=catalog.category_share),
        join_day=join_day,
        churn_day=churn_day,
        is_bot=is_bot,
        bot_views=rng.lognormal(np.log(30.0), 0.5, n),
    )


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class _Events:
    """Columns of simulated events before they become an Arrow table."""

    user: np.ndarray  # global user index
    time: np.ndarray  # whole seconds since day 0, 00:00 UTC
    kind: np.ndarray  # index into EVENT_TYPES
    product: np.ndarray  # index into the catalog
    session: np.ndarray  # row of session_bytes
    session_bytes: np.ndarray  # (n_sessions, 16) random bytes, one row per session

    def take(self, rows: np.ndarray) -> "_Events":
        return _Events(
            self.user[rows],
            self.time[rows],
            self.kind[rows],
            self.product[rows],
            self.session[rows],
            self.session_bytes,
        )

    @staticmethod
    def concat(parts: list["_Events"]) -> "_Events":
        """Glue parts together; session rows are shifted to point into the joint session list."""
        n_sessions = np.cumsum([0] + [len(p.session_bytes) for p in parts])
        return _Events(
            np.concatenate([p.user for p in parts]),
            np.concatenate([p.time for p in parts]),
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.product for p in parts]),
            np.concatenate(
                [p.session + shift for p, shift in zip(parts, n_sessions[:-1], strict=True)]
            ),
            np.concatenate([p.session_bytes for p in parts]),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gaps(rng: np.random.Generator, mean_seconds: float, n: int) -> np.ndarray:
    """Whole-second waiting times of at least one second, so event times strictly increase."""
    return 1 + rng.exponential(mean_seconds, n).astype(np.int64)


def _group_offsets(gaps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Running sum of gaps that restarts at 0 at the first item of every group.

    Groups are consecutive runs of ``counts`` items (every count >= 1).
    """
    first = np.cumsum(counts) - counts
    gaps = gaps.copy()
    gaps[first] = 0
    total = np.cumsum(gaps)
    return total - np.repeat(total[first], counts)


def _sessions_views(
    rng: np.random.Generator, session_start: np.ndarray, n_views: np.ndarray, mean_gap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Session row and time of every view, views following each other within their session."""
    session = np.repeat(np.arange(len(n_views)), n_views)
    time = session_start[session] + _group_offsets(_gaps(rng, mean_gap, len(session)), n_views)
    return session, time


def _simulate_day(
    rng: np.random.Generator, config: SyntheticConfig, catalog: _Catalog, users: _Users, day: int
) -> _Events:
    """All events of the episodes (and bot sessions) that start on ``day``.

    Caps keep every event within MAX_EPISODE_DAYS of the day's start: start < 1 day, later
    sessions < 4 days after the first, views and carts < 1 hour, a delayed purchase < 2.6 days.
    """
    start_of_day = day * DAY
    alive = (users.join_day <= day) & (day < users.churn_day)
    # Churners fade out over their last two weeks: falling frequency is a churn signal.
    fade = np.clip((users.churn_day - day) / 14.0, 0.2, 1.0)
    weekday = (config.start.weekday() + day) % 7
    rate = np.where(alive, users.rate * fade * WEEKDAY_FACTOR[weekday], 0.0)

    # --- episodes of ordinary users: one target product in one category -------------------
    n_episodes = rng.poisson(np.where(users.is_bot, 0.0, rate))
    ep_user = np.repeat(np.arange(BLOCK_USERS), n_episodes)
    n_ep = len(ep_user)
    hour = rng.choice(24, n_ep, p=HOUR_SHARE)
    ep_start = start_of_day + hour * 3600 + rng.integers(0, 3600, n_ep)
    intent = users.propensity[ep_user] + 0.8 * rng.standard_normal(n_ep)
    category = np.where(
        rng.random(n_ep) < 0.5,
        users.favorite_category[ep_user],
        rng.choice(len(catalog.category_share), n_ep, p=catalog.category_share),
    )
    first_product = catalog.category_start[category]
    target = first_product + _zipf_rank(rng, catalog.category_size[category])
    alternative = first_product + _zipf_rank(rng, catalog.category_size[category])
    # Above-budget products are carted and bought less, more so by users without intent.
    over_budget = np.maximum(np.log(catalog.product_price[target]) - users.log_budget[ep_user], 0)
    keen = _sigmoid(intent)

    # Sessions: keen shoppers come back more often; later sessions hours to days apart.
    n_sessions = 1 + rng.poisson(0.2 + 1.2 * keen)
    s_episode = np.repeat(np.arange(n_ep), n_sessions)
    s_offset = np.minimum(
        _group_offsets(_gaps(rng, 0.7 * DAY, len(s_episode)), n_sessions), 4 * DAY - 1
    )
    s_start = ep_start[s_episode] + s_offset

    # Views: a mix of the target, other products of the category and something else.
    n_views = 1 + rng.poisson(1.0 + 3.0 * keen[s_episode])
    v_session, v_time = _sessions_views(rng, s_start, n_views, mean_gap=40.0)
    v_episode = s_episode[v_session]
    v_category = category[v_episode]
    other_category = rng.choice(
        len(catalog.category_share), len(v_session), p=catalog.category_share
    )
    pick = rng.random(len(v_session))
    same_category = catalog.category_start[v_category] + _zipf_rank(
        rng, catalog.category_size[v_category]
    )
    elsewhere = catalog.category_start[other_category] + _zipf_rank(
        rng, catalog.category_size[other_category]
    )
    v_product = np.where(
        pick < 0.3, target[v_episode], np.where(pick < 0.8, same_category, elsewhere)
    )

    # Cart: at the end of one session, right after a view of the target.
    cart_logit = -4.8 + 1.4 * intent - 0.5 * over_budget
    carted = rng.random(n_ep) < _sigmoid(cart_logit)
    cart_session = (np.cumsum(n_sessions) - n_sessions) + (rng.random(n_ep) * n_sessions).astype(
        np.int64
    )
    last_view = np.cumsum(n_views)[cart_session] - 1
    from_view = carted & (rng.random(n_ep) < 0.95)  # a few carts come from a listing page
    v_product[last_view[from_view]] = target[from_view]
    cart_time = v_time[last_view] + _gaps(rng, 30.0, n_ep)

    # After the cart: buy (same session or days later), remove it, or abandon it.
    buy_logit = -1.2 + 0.8 * intent - 1.5 * over_budget + 0.8 * (intent > 1.0)
    bought = carted & (rng.random(n_ep) < _sigmoid(buy_logit))
    removed = carted & ~bought & (rng.random(n_ep) < 0.4)
    buy_now = bought & (rng.random(n_ep) < 0.08)  # bought without using the cart
    bought_other = bought & (rng.random(n_ep) < 0.06)  # bought a similar product instead
    purchased = np.where(bought_other, alternative, target)
    same_session = rng.random(n_ep) < 0.55
    delay = np.where(
        same_session,
        _gaps(rng, 120.0, n_ep),
        600 + np.minimum(rng.exponential(1.0 * DAY, n_ep), 2.5 * DAY).astype(np.int64),
    )
    buy_time = cart_time + delay
    remove_time = cart_time + _gaps(rng, 90.0, n_ep)
    # Some carting shoppers also cart an alternative, which they often remove again.
    alt_carted = carted & (alternative != target) & (rng.random(n_ep) < 0.25)
    alt_view_time = cart_time + _gaps(rng, 20.0, n_ep)
    alt_cart_time = alt_view_time + _gaps(rng, 20.0, n_ep)
    alt_removed = alt_carted & (rng.random(n_ep) < 0.5)
    alt_remove_time = alt_cart_time + _gaps(rng, 60.0, n_ep)

    # A purchase days later gets its own checkout session: a view, then the purchase.
    late = bought & ~same_session
    n_late = int(late.sum())
    checkout_view_time = buy_time[late] - np.minimum(_gaps(rng, 60.0, n_late), 500)
    late_session = len(s_start) + np.arange(n_late)
    buy_session = cart_session.copy()
    buy_session[late] = late_session

    # --- bots: many long sessions of views of random products at any hour --------------------
    n_bot_sessions = rng.poisson(np.where(users.is_bot, rate, 0.0))
    b_user = np.repeat(np.arange(BLOCK_USERS), n_bot_sessions)
    b_start = start_of_day + rng.integers(0, DAY, len(b_user))
    b_views = 1 + rng.poisson(users.bot_views[b_user])
    b_session, b_time = _sessions_views(rng, b_start, b_views, mean_gap=3.0)
    b_product = rng.integers(0, len(catalog.product_price), len(b_session))
    b_session_first = len(s_start) + n_late

    n_all_sessions = b_session_first + len(b_user)
    session_bytes = np.frombuffer(rng.bytes(16 * n_all_sessions), np.uint8).reshape(-1, 16)

    # --- assemble: (which rows, user, time, kind, product, session) per group of events ----
    every = slice(None)
    groups = [
        (every, ep_user[v_episode], v_time, VIEW, v_product, v_session),
        (carted & ~buy_now, ep_user, cart_time, CART, target, cart_session),
        (removed, ep_user, remove_time, REMOVE, target, cart_session),
        (alt_carted, ep_user, alt_view_time, VIEW, alternative, cart_session),
        (alt_carted, ep_user, alt_cart_time, CART, alternative, cart_session),
        (alt_removed, ep_user, alt_remove_time, REMOVE, alternative, cart_session),
        (every, ep_user[late], checkout_view_time, VIEW, purchased[late], late_session),
        (bought, ep_user, buy_time, PURCHASE, purchased, buy_session),
        (every, b_user[b_session], b_time, VIEW, b_product, b_session_first + b_session),
    ]
    picked = [
        (u[rows], t[rows], np.full(len(t[rows]), k, np.int8), p[rows], s[rows])
        for rows, u, t, k, p, s in groups
    ]
    user, time, kind, product, session = (np.concatenate(c) for c in zip(*picked, strict=True))
    # Guarantees what the caps above already ensure: nothing beyond the episode window.
    keep = time < start_of_day + MAX_EPISODE_DAYS * DAY
    return _Events(
        users.first_index + user[keep],
        time[keep],
        kind[keep],
        product[keep],
        session[keep],
        session_bytes,
    )


def _simulate_block(config: SyntheticConfig, catalog: _Catalog, block: int) -> _Events:
    """Events of one block of users inside the config's day range (users beyond n_users dropped).

    Every day's episodes come from their own random stream, so the result does not depend on
    which other days or blocks are generated.
    """
    users = _draw_users(config, catalog, block)
    days = []
    for day in range(config.start_day - MAX_EPISODE_DAYS + 1, config.end_day):
        rng = np.random.default_rng([config.seed, _DAY_STREAM, block, day + _DAY_KEY_OFFSET])
        days.append(_simulate_day(rng, config, catalog, users, day))
    events = _Events.concat(days)
    keep = (
        (events.time >= config.start_day * DAY)
        & (events.time < config.end_day * DAY)
        & (events.user < config.n_users)
    )
    return events.take(np.flatnonzero(keep))


# ----------------------------------------------------------------------------- output


def _uuid_strings(raw: np.ndarray) -> pa.Array:
    """Format (n, 16) random bytes as uuid-looking strings (8-4-4-4-12 hex digits)."""
    hex_digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    digits = np.empty((len(raw), 32), np.uint8)
    digits[:, 0::2] = hex_digits[raw >> 4]
    digits[:, 1::2] = hex_digits[raw & 15]
    text = np.full((len(raw), 36), ord("-"), np.uint8)
    text[:, [i for i in range(36) if i not in (8, 13, 18, 23)]] = digits
    offsets = np.arange(0, 36 * (len(raw) + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets), pa.py_buffer(text))


def _to_table(events: _Events, catalog: _Catalog, start: date) -> pa.Table:
    """Arrow table in EVENT_SCHEMA, rows sorted by (user_id, event_time)."""
    order = np.lexsort((events.time, events.user))  # stable: ties keep simulation order
    events = events.take(order)
    product = pa.array(events.product)
    start_us = (start - date(1970, 1, 1)).days * DAY * 1_000_000
    return pa.table(
        [
            pa.array(start_us + events.time * 1_000_000, pa.timestamp("us")),
            pa.array(EVENT_TYPES).take(pa.array(events.kind)),
            pa.array(catalog.product_id[events.product]),
            pa.array(catalog.product_category_id[events.product]),
            catalog.product_category_code.take(product),
            catalog.product_brand.take(product),
            pa.array(catalog.product_price[events.product]),
            pa.array(USER_ID_OFFSET + events.user),
            _uuid_strings(events.session_bytes).take(pa.array(events.session)),
        ],
        schema=EVENT_SCHEMA,
    )


def generate_events(
    out_dir: Path, config: SyntheticConfig, users_per_chunk: int = 50_000
) -> GenerationSummary:
    """Simulate the config's day range and write one parquet file per chunk of users.

    Files are named after the day range and chunk (``events_d000-d030_part0000.parquet``), so a
    later day range written into the same folder adds files instead of overwriting them. Chunks
    without events are not written. Memory stays bounded by one chunk of users. A chunk size
    that is a multiple of BLOCK_USERS avoids simulating a block twice (the events are the same).
    """
    if users_per_chunk < 1:
        raise ValueError("users_per_chunk must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = _make_catalog(config)
    files: list[Path] = []
    n_events = n_users = 0
    first_time = last_time = None
    for part, lo in enumerate(range(0, config.n_users, users_per_chunk)):
        hi = min(lo + users_per_chunk, config.n_users)
        blocks = []
        for block in range(lo // BLOCK_USERS, (hi - 1) // BLOCK_USERS + 1):
            events = _simulate_block(config, catalog, block)
            blocks.append(events.take(np.flatnonzero((events.user >= lo) & (events.user < hi))))
        events = _Events.concat(blocks)
        if len(events.user) == 0:
            continue
        path = (
            out_dir / f"events_d{config.start_day:03d}-d{config.end_day:03d}_part{part:04d}.parquet"
        )
        pq.write_table(_to_table(events, catalog, config.start), path)
        files.append(path)
        n_events += len(events.user)
        n_users += len(np.unique(events.user))
        lo_t, hi_t = int(events.time.min()), int(events.time.max())
        first_time = lo_t if first_time is None else min(first_time, lo_t)
        last_time = hi_t if last_time is None else max(last_time, hi_t)

    def as_datetime(seconds: int | None) -> datetime | None:
        start = datetime(config.start.year, config.start.month, config.start.day)
        return None if seconds is None else start + timedelta(seconds=seconds)

    return GenerationSummary(
        files, n_events, n_users, as_datetime(first_time), as_datetime(last_time)
    )


def main(argv: list[str] | None = None) -> GenerationSummary:
    """Command line: ``python -m ml.data.synthetic --out DIR --users N --days D --seed S``."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the parquet files")
    parser.add_argument("--users", type=int, default=defaults.n_users)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--start-day", type=int, default=0, help="first day index to write")
    parser.add_argument("--target-events", type=int, help="pick --users to get about N events")
    parser.add_argument("--users-per-chunk", type=int, default=50_000)
    args = parser.parse_args(argv)
    n_users = args.users
    if args.target_events:
        n_users = SyntheticConfig.for_target_events(
            args.target_events, args.days, args.seed
        ).n_users
    config = SyntheticConfig(
        n_users=n_users, days=args.days, start_day=args.start_day, seed=args.seed
    )
    summary = generate_events(args.out, config, args.users_per_chunk)
    print(
        f"wrote {summary.n_events:,} events of {summary.n_users:,} users "
        f"({config.n_users:,} simulated) in {len(summary.files)} files under {args.out}; "
        f"first {summary.first_event}, last {summary.last_event}"
    )
    return summary


if __name__ == "__main__":
    main()
