"""How each supported event source maps onto the canonical (REES46) event schema.

The ingest code in ``ml.data.ingest`` is generic; everything that differs between sources
(column names, header rules, event type names, time format) lives here, so adding a source
means adding one entry below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The canonical event schema, in order. Every source is mapped onto these nine fields.
CANONICAL_FIELDS = (
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
)

CANONICAL_EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase", "wishlist")


@dataclass(frozen=True)
class CsvSource:
    """A CSV event format and its mapping onto the canonical schema.

    ``fields`` maps each canonical field to the source column holding it (None: the source
    does not have it, so it is NULL). ``time_sql`` is a SQL expression turning the text in
    ``{t}`` into a TIMESTAMP (naive UTC), or NULL when the text cannot be parsed; it must never
    raise, because one bad row must not fail the whole file.
    """

    name: str
    fields: dict[str, str | None]
    event_types: dict[str, str]  # source event name -> canonical event type
    time_sql: str
    header: Literal["required", "optional"]
    # Column order of a file without a header (only used when header == "optional").
    headerless_columns: tuple[str, ...] = ()

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The source columns a header must contain: those mapped to a canonical field."""
        return tuple(col for col in self.fields.values() if col is not None)


# Unix epoch numbers are checked with a regex and a length limit before the cast, so huge or
# non-integer values give NULL (quarantined as unparseable) instead of an overflow error.
_UNIX_MS_SQL = (
    "CASE WHEN length({t}) <= 14 AND regexp_full_match({t}, '[0-9]+') "
    "THEN make_timestamp(CAST({t} AS BIGINT) * 1000) END"
)
_UNIX_S_SQL = (
    "CASE WHEN length({t}) <= 11 AND regexp_full_match({t}, '[0-9]+') "
    "THEN make_timestamp(CAST({t} AS BIGINT) * 1000000) END"
)

REES46 = CsvSource(
    name="rees46",
    fields={field: field for field in CANONICAL_FIELDS},
    event_types={name: name for name in ("view", "cart", "remove_from_cart", "purchase")},
    # e.g. "2019-10-01 00:00:00 UTC"
    time_sql="try_strptime({t}, '%Y-%m-%d %H:%M:%S UTC')",
    header="required",
)

RETAILROCKET = CsvSource(
    name="retailrocket",
    fields={
        "event_time": "timestamp",
        "event_type": "event",
        "product_id": "itemid",
        "category_id": None,
        "category_code": None,
        "brand": None,
        "price": None,
        "user_id": "visitorid",
        "user_session": None,
    },
    event_types={"view": "view", "addtocart": "cart", "transaction": "purchase"},
    time_sql=_UNIX_MS_SQL,
    header="required",
)

TAOBAO = CsvSource(
    name="taobao",
    fields={
        "event_time": "timestamp",
        "event_type": "behavior_type",
        "product_id": "item_id",
        "category_id": "category_id",
        "category_code": None,
        "brand": None,
        "price": None,
        "user_id": "user_id",
        "user_session": None,
    },
    event_types={"pv": "view", "cart": "cart", "fav": "wishlist", "buy": "purchase"},
    time_sql=_UNIX_S_SQL,
    # The original UserBehavior.csv has no header; copies with one are accepted too.
    header="optional",
    headerless_columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
)

CSV_SOURCES: dict[str, CsvSource] = {s.name: s for s in (REES46, RETAILROCKET, TAOBAO)}

# Parquet written by ml/data/synthetic.py: the canonical fields with typed ids.
SYNTHETIC_COLUMNS = CANONICAL_FIELDS
