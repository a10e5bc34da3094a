"""Will these event files fill the roles of time? Answered before any work is done.

A run on one's own file can only train when the file spans enough cutoffs for the train,
validation and promotion roles (`ml.splits.choose_time_split`). The warehouse learns that only
after ingestion and the whole dbt build; this module reads the files' first and last event
times (one DuckDB scan of the time column), lays out the same cutoff grid as
`dbt_project/models/marts/cutoffs.sql` (every multiple of the cutoff step since 1970-01-01 on
the shop's local clock, from the first after the first event to the first after the last), and
asks `choose_time_split` itself, so the check and the pipeline cannot disagree on the rule.
When the roles do not fit it says what would: the largest horizon (with the cutoff step equal
to it) that these files can hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import numpy as np
import pandas as pd

from ml.data.ingest import read_csv_layout
from ml.data.sources import CSV_SOURCES
from ml.splits import (
    DEFAULT_PROMOTION_CUTOFFS,
    DEFAULT_VALIDATION_CUTOFFS,
    TimeSplit,
    choose_time_split,
)

_UNITS = {"minute": 60, "hour": 3_600, "day": 86_400, "week": 604_800}
_INTERVAL = re.compile(r"^\s*(\d+)\s*(minute|hour|day|week)s?\s*$", re.IGNORECASE)
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
# Candidate windows for the advice, largest first: a cutoff step must divide one day.
_ADVICE_STEPS = ("1 day", "12 hours", "6 hours", "4 hours", "2 hours", "1 hour", "30 minutes")
# Longer horizons for the advice, when the label windows hold too few buyers.
_LONGER_HORIZONS = ("3 days", "7 days", "14 days", "30 days")


class PreflightError(ValueError):
    """The files cannot fill the roles of time with these windows; the message says why and
    what to change."""


# A buyer's event as one sortable int64: buyer number * _USER_STRIDE + epoch seconds.
_USER_STRIDE = 2**34


@dataclass(frozen=True)
class EventSpan:
    """First and last parseable event time (naive UTC) over the files and the rows read; for
    the shoppers who buy, every purchase and every event, which say whether a role's label
    windows hold a purchase by a shopper who has a row at that cutoff (an event in the
    lookback before it, as marts.labels requires)."""

    first: datetime
    last: datetime
    rows: int
    # (buyer number, epoch seconds) of every purchase.
    purchases: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    # buyer number * _USER_STRIDE + epoch seconds of every event of a buyer, sorted.
    buyer_events: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class Windows:
    """The dbt vars that shape the cutoff grid, as the command line gives them."""

    cutoff_step: str = "1 day"
    lookback: str = "30 days"
    horizon: str = "7 days"
    timezone: str = "UTC"


def parse_interval(text: str) -> timedelta:
    """'1 day', '4 days', '2 hours', '30 minutes', '1 week' (the dbt vars' format)."""
    match = _INTERVAL.match(text)
    if not match:
        raise PreflightError(
            f"Cannot read the interval {text!r}: write a number and a unit, e.g. '1 day', "
            "'4 days', '2 hours', '30 minutes'"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise PreflightError(f"The interval {text!r} must be positive")
    return timedelta(seconds=seconds)


def utc_offset(timezone: str, at: datetime) -> timedelta:
    """The shop's offset from UTC: 'UTC', a fixed '+08:00', or an IANA zone without daylight
    saving (as the dbt models accept)."""
    if timezone.upper() == "UTC":
        return timedelta(0)
    match = _OFFSET.match(timezone)
    if match:
        sign = 1 if match.group(1) == "+" else -1
        return sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise PreflightError(
            f"Unknown timezone {timezone!r}: use UTC, a fixed offset like +08:00, or an IANA "
            "zone like Asia/Shanghai"
        ) from error
    offset = zone.utcoffset(at)
    assert offset is not None
    return offset


def event_span(source: str, paths: Sequence[Path]) -> EventSpan:
    """The first and last event time over `paths`, read the way ingestion parses them (rows
    whose time does not parse are left out, as ingestion quarantines them)."""
    if not paths:
        raise PreflightError("No event file given: pass at least one --path")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise PreflightError(f"No such file(s): {missing}")
    selects = [_time_select(source, Path(path)) for path in paths]
    with duckdb.connect() as con:
        con.execute(f"create temp table events as {' union all '.join(selects)}")
        first, last, rows = con.execute("select min(t), max(t), count(*) from events").fetchone()
        buyers = con.execute(
            """
            with buyer_events as (
                select dense_rank() over (order by u) as buyer, epoch(t)::bigint as s,
                    is_purchase
                from events
                where t is not null and u in (select u from events where is_purchase)
            )
            select buyer, s, is_purchase from buyer_events order by buyer, s
            """
        ).fetchnumpy()
    if first is None:
        raise PreflightError(
            f"No event time in {[str(p) for p in paths]} could be read as a {source} time: "
            "is --source right?"
        )
    buyer = np.asarray(buyers["buyer"], dtype=np.int64)
    seconds = np.asarray(buyers["s"], dtype=np.int64)
    bought = np.asarray(buyers["is_purchase"], dtype=bool)
    return EventSpan(
        first=first,
        last=last,
        rows=int(rows),
        purchases=np.stack([buyer[bought], seconds[bought]], axis=1),
        buyer_events=buyer * _USER_STRIDE + seconds,
    )


def _time_select(source: str, path: Path) -> str:
    literal = "'" + str(path).replace("'", "''") + "'"
    if source == "synthetic" or path.suffix == ".parquet":
        return (
            "select event_time as t, event_type = 'purchase' as is_purchase, "
            f"cast(user_id as varchar) as u from read_parquet({literal})"
        )
    if source not in CSV_SOURCES:
        raise PreflightError(
            f"Unknown source {source!r}; choose one of {['synthetic', *CSV_SOURCES]}"
        )
    spec = CSV_SOURCES[source]
    layout = read_csv_layout(path, spec)  # ValueError naming missing columns
    # Every field as text, named by position (c1, c2, ...), as ingestion reads them.
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(1, layout.n_fields + 1))
    time_column = f"c{layout.column_index[spec.fields['event_time']]}"
    type_column = f"c{layout.column_index[spec.fields['event_type']]}"
    user_column = f"c{layout.column_index[spec.fields['user_id']]}"
    purchase_names = ", ".join(
        "'" + name + "'" for name, kind in spec.event_types.items() if kind == "purchase"
    )
    return (
        f"select {spec.time_sql.replace('{t}', time_column)} as t, "
        f"{type_column} in ({purchase_names}) as is_purchase, {user_column} as u "
        f"from read_csv({literal}, "
        f"header = {str(layout.has_header).lower()}, columns = {{{columns}}}, "
        "ignore_errors = true, null_padding = true)"
    )


def cutoff_grid(span: EventSpan, windows: Windows) -> pd.DataFrame:
    """marts.cutoffs as the dbt build will lay it out for this span (cutoff_time, horizon_end,
    horizon_complete, lookback_complete; naive UTC), with data_end at the newest event."""
    step = parse_interval(windows.cutoff_step)
    if timedelta(days=1) % step:
        raise PreflightError(
            f"cutoff_step {windows.cutoff_step!r} must divide one day (e.g. '1 day', '1 hour')"
        )
    lookback, horizon = parse_interval(windows.lookback), parse_interval(windows.horizon)
    if horizon % step or lookback % step:
        raise PreflightError(
            f"lookback {windows.lookback!r} and horizon {windows.horizon!r} must be whole "
            f"multiples of the cutoff step {windows.cutoff_step!r}"
        )
    offset = utc_offset(windows.timezone, span.first)
    epoch = datetime(1970, 1, 1)

    def bucket(time: datetime) -> int:
        return (time + offset - epoch) // step

    first_bucket, last_bucket = bucket(span.first), bucket(span.last)
    indexes = range(first_bucket + 1, last_bucket + 2)
    cutoffs = [epoch + index * step - offset for index in indexes]
    per_lookback = lookback // step
    return pd.DataFrame(
        {
            "cutoff_time": cutoffs,
            "horizon_end": [cutoff + horizon for cutoff in cutoffs],
            "horizon_complete": [cutoff + horizon <= span.last for cutoff in cutoffs],
            "lookback_complete": [index - per_lookback > first_bucket for index in indexes],
        }
    )


def check_roles(
    span: EventSpan,
    windows: Windows,
    n_validation: int = DEFAULT_VALIDATION_CUTOFFS,
    n_promotion: int = DEFAULT_PROMOTION_CUTOFFS,
) -> TimeSplit:
    """The roles of time these files will get; PreflightError with advice when they cannot
    (too few cutoffs, or a role whose label windows hold no purchase: nothing to learn or to
    measure)."""
    split, reason = _roles_or_reason(span, windows, n_validation, n_promotion)
    if split is None:
        raise PreflightError(
            f"The events span {span.first:%Y-%m-%d %H:%M} to {span.last:%Y-%m-%d %H:%M} UTC "
            f"({_duration(span.last - span.first)}, {span.rows:,} rows, "
            f"{len(span.purchases):,} purchases). {reason}"
            + _advice(span, windows, n_validation, n_promotion)
        )
    return split


def _roles_or_reason(
    span: EventSpan, windows: Windows, n_validation: int, n_promotion: int
) -> tuple[TimeSplit | None, str]:
    try:
        split = choose_time_split(cutoff_grid(span, windows), n_validation, n_promotion)
    except PreflightError:
        raise
    except ValueError as error:
        return None, str(error)
    lookback = parse_interval(windows.lookback)
    for role, cutoffs in (
        ("train", split.train_cutoffs),
        ("validation", split.validation_cutoffs),
        ("promotion", split.promotion_cutoffs),
    ):
        if buyer_rows_in_windows(span, cutoffs, split.horizon, lookback) == 0:
            purpose = "learn from" if role == "train" else "measure a model on"
            return None, (
                f"The {role} role's label windows ({len(cutoffs)} cutoff(s) from "
                f"{cutoffs[0]:%Y-%m-%d %H:%M}, each {format_interval(split.horizon)} long) hold "
                "no purchase by a shopper seen in the lookback before the cutoff (only they "
                f"have a row there), so there is nothing to {purpose}."
            )
    return split, ""


def buyer_rows_in_windows(
    span: EventSpan, cutoffs: Sequence[datetime], horizon: timedelta, lookback: timedelta
) -> int:
    """(shopper, cutoff) rows that will be labelled buyers: a purchase in [cutoff, cutoff +
    horizon) by a shopper with an event in [cutoff - lookback, cutoff)."""
    if not len(span.purchases):
        return 0
    epoch = datetime(1970, 1, 1)
    buyer, bought_at = span.purchases[:, 0], span.purchases[:, 1]
    rows = set()
    for cutoff in cutoffs:
        start = int((cutoff - epoch).total_seconds())
        inside = (bought_at >= start) & (bought_at < start + int(horizon.total_seconds()))
        buyers = np.unique(buyer[inside])
        seen_from = buyers * _USER_STRIDE + start - int(lookback.total_seconds())
        seen_until = buyers * _USER_STRIDE + start
        seen = np.searchsorted(span.buyer_events, seen_until) > np.searchsorted(
            span.buyer_events, seen_from
        )
        rows.update((int(b), start) for b in buyers[seen])
    return len(rows)


def _advice(span: EventSpan, windows: Windows, n_validation: int, n_promotion: int) -> str:
    """Windows that would fit: a shorter horizon (cutoff step equal to it) when the cutoffs are
    too few, a longer one when the windows lack buyers; with the given role sizes or else with
    one validation and one promotion cutoff."""
    horizon = parse_interval(windows.horizon)
    step = parse_interval(windows.cutoff_step)
    lookback = parse_interval(windows.lookback)
    candidates = [
        Windows(s, _fitting_lookback(windows.lookback, s), s, windows.timezone)
        for s in _ADVICE_STEPS
        if parse_interval(s) < horizon
    ] + [
        Windows(
            windows.cutoff_step,
            format_interval(max(lookback, parse_interval(h))),
            h,
            windows.timezone,
        )
        for h in _LONGER_HORIZONS
        if parse_interval(h) > horizon and parse_interval(h) % step == timedelta(0)
    ]
    for roles in dict.fromkeys([(n_validation, n_promotion), (1, 1)]):
        for candidate in candidates:
            if _roles_or_reason(span, candidate, *roles)[0] is None:
                continue
            fewer = (
                ""
                if roles == (n_validation, n_promotion)
                else " --validation-cutoffs 1 --promotion-cutoffs 1"
            )
            return (
                f" These files would fit, for example, --cutoff-step '{candidate.cutoff_step}' "
                f"--horizon '{candidate.horizon}' --lookback '{candidate.lookback}'{fewer} (or "
                "give more days of events)."
            )
    return (
        " No other horizon tried fits these files either, even with one validation and one "
        "promotion cutoff: give more days of events."
    )


def _fitting_lookback(lookback: str, step: str) -> str:
    """The lookback rounded down to a multiple of `step` (at least one step)."""
    step_length = parse_interval(step)
    return format_interval(max(parse_interval(lookback) // step_length, 1) * step_length)


def format_interval(interval: timedelta) -> str:
    """The largest whole unit: 2 hours, not 120 minutes (parse_interval reads it back)."""
    seconds = int(interval.total_seconds())
    for unit in ("week", "day", "hour", "minute"):
        if seconds % _UNITS[unit] == 0:
            count = seconds // _UNITS[unit]
            return f"{count} {unit}{'s' if count != 1 else ''}"
    raise PreflightError(f"{interval} is not a whole number of minutes")


def _duration(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3_600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.1f} hours"
