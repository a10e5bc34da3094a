"""One shopper's features and sequence at a cutoff, computed by the dbt models themselves.

Each connection is an in-memory DuckDB database laid out like the warehouse (schemas raw,
staging, intermediate, marts, serving) with the snapshot attached read-only. A request fills
raw.events with the shopper's stored history (the pseudonymous key looked up, the request's
raw id put back, so the models pseudonymise it exactly as the nightly build did) and the live
events, sets the grid's span to the requested cutoff, and runs the compiled statements
(ml.serving.sql) as tables in dependency order. What comes out is a row of marts.user_features
and of marts.user_sequences, as the batch build would have written them had these events been
ingested.

The cutoff: asked "as of" a grid cutoff c, the models see the events before c, as the batch
row at c did. Asked at a moment t (now, by default), the cutoff is the first grid point after
t, with the events before t: the batch's own rule for its latest (scoring) cutoff.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from ml.data.dbt_plugin import register_pseudonym
from ml.dataset import scoring_frame
from ml.preflight import parse_interval
from ml.serving.sql import CompiledModel

EPOCH = datetime(1970, 1, 1)
LAYERS = ("raw", "staging", "intermediate", "marts", "serving")


class CutoffError(ValueError):
    """A cutoff the snapshot cannot answer: not on the grid, or older than its history."""


@dataclass(frozen=True)
class ShopperInputs:
    """What the models take for one shopper at one cutoff. `features` and `sequences` have
    one row when the shopper has an event in the lookback before the cutoff, else none (a
    cold start: the batch build has no row for them either)."""

    cutoff_time: datetime
    features: pd.DataFrame
    sequences: pd.DataFrame
    model_input: pd.DataFrame  # as batch scoring builds it (ml.dataset.scoring_frame)
    category_names: dict[int, str]
    history_events: int
    live_events: int

    @property
    def known(self) -> bool:
        return len(self.features) == 1


class FeatureEngine:
    """The compiled models over one snapshot, on a small pool of connections (one request at
    a time each; DuckDB runs the tiny per-shopper statements fastest on one thread)."""

    def __init__(self, snapshot: Path, connections: int = 2) -> None:
        self.snapshot = snapshot
        with duckdb.connect(str(snapshot), read_only=True) as con:
            info = dict(con.execute("select key, value from serving.info").fetchall())
            self.statements = [
                CompiledModel(name, relation, sql)
                for name, relation, sql in con.execute(
                    "select name, relation, sql from serving.statements order by ordinal"
                ).fetchall()
            ]
            self.first_bucket, self.first_event_time = con.execute(
                "select first_bucket, first_event_time from serving.span"
            ).fetchall()[0]
            index, time = con.execute(
                "select cutoff_index, cutoff_time from serving.cutoffs limit 1"
            ).fetchall()[0]
            self.history_columns = [
                name
                for (name,) in con.execute(
                    "select column_name from information_schema.columns where table_schema = "
                    "'serving' and table_name = 'events' order by ordinal_position"
                ).fetchall()
            ]
        # raw.events of each connection: the snapshot's columns, the request's id for the key.
        self.raw_columns = ["user_id" if c == "user_key" else c for c in self.history_columns]
        self.dbt_vars = json.loads(info["dbt_vars"])
        self.info = info
        self.step = parse_interval(self.dbt_vars.get("cutoff_step", "1 day"))
        self.lookback = parse_interval(self.dbt_vars.get("lookback", "30 days"))
        # The grid's offset, read off the nightly run's own cutoffs (cutoff k sits at
        # k * step - offset): the time zone is never re-interpreted here.
        self.offset = index * self.step - (time - EPOCH)
        self.latest_cutoff = datetime.fromisoformat(info["latest_cutoff"])
        self._pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        for _ in range(connections):
            self._pool.put(self._connect())

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()  # its catalog is "memory", as the serving target compiles to
        con.execute("set threads = 1")
        register_pseudonym(con)
        con.execute("attach ? as snapshot (read_only)", [str(self.snapshot)])
        for layer in LAYERS:
            con.execute(f"create schema {layer}")
        columns = ["''::varchar as user_id" if c == "user_id" else c for c in self.raw_columns]
        con.execute(
            f"create table raw.events as select {', '.join(columns)} "
            "from snapshot.serving.events limit 0"
        )
        con.execute(
            "create table serving.event_span (first_bucket bigint, last_bucket bigint, "
            "first_event_time timestamp, last_event_time timestamp)"
        )
        con.execute(
            "create table serving.category_vocabulary as "
            "select * from snapshot.serving.category_vocabulary"
        )
        return con

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._pool.get()
        try:
            yield con
        finally:
            self._pool.put(con)

    def bucket(self, time: datetime) -> int:
        return (time - EPOCH + self.offset) // self.step

    def cutoff_at(self, moment: datetime) -> datetime:
        """The first grid point after `moment` (naive UTC)."""
        return EPOCH + (self.bucket(moment) + 1) * self.step - self.offset

    def inputs(
        self,
        user_id: str,
        *,
        as_of: datetime | None = None,
        at: datetime | None = None,
        live_events: pd.DataFrame | None = None,
    ) -> ShopperInputs:
        """The shopper's features and sequence: `as_of` a grid cutoff (events before it), or
        at a moment `at` (the first cutoff after it, events before `at`). `live_events` are
        raw events in the canonical schema (event_time, event_type, product_id, category_id,
        category_code, brand, price, user_session), all of this shopper."""
        return self.inputs_many([(user_id, live_events)], as_of=as_of, at=at)[0]

    def inputs_many(
        self,
        shoppers: Sequence[tuple[str, pd.DataFrame | None]],
        *,
        as_of: datetime | None = None,
        at: datetime | None = None,
    ) -> list[ShopperInputs]:
        """`inputs` for several shoppers at one cutoff, in one pass of the statements (their
        cost is mostly per pass, not per row: ten shoppers cost little more than one). The
        models are per shopper, but for new categories: those first seen in this pass's live
        events are numbered across its shoppers."""
        ids = [user_id for user_id, _ in shoppers]
        if len(set(ids)) != len(ids):
            raise ValueError("Each shopper once per pass")
        cutoff, events_before = self._cutoff(as_of, at)
        index = self.bucket(cutoff)
        columns = ", ".join(
            "?::varchar as user_id" if c == "user_key" else c for c in self.history_columns
        )
        with self._connection() as con:
            con.execute("delete from raw.events")
            counts: dict[str, tuple[int, int]] = {}
            for user_id, live_events in shoppers:
                # An insert answers the number of rows it inserted.
                (history,) = con.execute(
                    f"insert into raw.events select {columns} from snapshot.serving.events "
                    "where user_key = pseudonym(?) and event_time < ?",
                    [user_id, user_id, events_before],
                ).fetchall()[0]
                live = 0
                if live_events is not None and len(live_events):
                    live = self._insert_live(con, user_id, live_events, events_before)
                counts[user_id] = (int(history), live)
            con.execute("delete from serving.event_span")
            con.execute(
                "insert into serving.event_span values (?, ?, ?, ?)",
                [self.first_bucket, index - 1, self.first_event_time, events_before],
            )
            for statement in self.statements:
                con.execute(f"create or replace table {statement.relation} as {statement.sql}")
            keys = dict(
                con.execute(
                    "select raw_id, pseudonym(raw_id) from unnest(?::varchar[]) as t(raw_id)", [ids]
                ).fetchall()
            )
            features = con.execute(
                "select * from marts.user_features where cutoff_time = ?", [cutoff]
            ).df()
            sequences = con.execute(
                "select * from marts.user_sequences where cutoff_time = ?", [cutoff]
            ).df()
            model_input = scoring_frame(con, cutoff)
            names = dict(
                con.execute("select category_idx, category_name from marts.categories").fetchall()
            )

        def rows(frame: pd.DataFrame, user_id: str) -> pd.DataFrame:
            return frame[frame["user_id"] == keys[user_id]].reset_index(drop=True)

        return [
            ShopperInputs(
                cutoff,
                rows(features, user_id),
                rows(sequences, user_id),
                rows(model_input, user_id),
                names,
                *counts[user_id],
            )
            for user_id in ids
        ]

    def _cutoff(self, as_of: datetime | None, at: datetime | None) -> tuple[datetime, datetime]:
        """(the cutoff, the time the events must be before)."""
        if as_of is not None:
            cutoff, events_before = as_of, as_of
            if EPOCH + self.bucket(as_of) * self.step - self.offset != as_of:
                raise CutoffError(f"{as_of} is not a cutoff of the grid ({self.step} steps)")
        else:
            moment = at or datetime.now(UTC).replace(tzinfo=None)
            cutoff, events_before = self.cutoff_at(moment), moment
        if self.bucket(cutoff) <= self.first_bucket:
            raise CutoffError(f"The shop's data starts at {self.first_event_time}: not {cutoff}")
        return cutoff, events_before

    def _insert_live(
        self,
        con: duckdb.DuckDBPyConnection,
        user_id: str,
        events: pd.DataFrame,
        events_before: datetime,
    ) -> int:
        """Live events as raw rows: the canonical columns, this shopper's id, the source
        columns saying where they came from (ingestion fills them for files)."""
        frame = events.copy()
        frame["user_id"] = user_id
        con.register("live_events", frame)
        try:
            given = set(frame.columns)
            select = ", ".join(
                name if name in given else _LIVE_DEFAULTS.get(name, f"null as {name}")
                for name in self.raw_columns
            )
            (inserted,) = con.execute(
                f"insert into raw.events select {select} from live_events where event_time < ?",
                [events_before],
            ).fetchall()[0]
            return int(inserted)
        finally:
            con.unregister("live_events")


_LIVE_DEFAULTS = {
    "source": "'live' as source",
    "source_file": "'request' as source_file",
    "line_number": "0 as line_number",
    "ingested_at": "now()::timestamp as ingested_at",
}
