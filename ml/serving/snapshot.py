"""The serving snapshot: one read-only DuckDB file that a finished nightly run publishes for the
scoring service, so that the service never opens the live warehouse (DuckDB allows one writer;
the service must neither block the night nor read a half-built warehouse).

It holds what scoring one shopper needs besides the request:
- serving.events: every shopper's events (features reach back past the lookback, to the
  previous week and the first event), keyed by the shopper's pseudonym (`user_key`), never the
  raw id: the service puts the id from the request back before running the models, which
  pseudonymise it again;
- serving.category_vocabulary and serving.span: the shop-wide facts (category indexes, the
  grid's first bucket and first event) that one shopper's events cannot give;
- serving.cutoffs: the nightly run's answerable cutoffs (for "as of" requests);
- serving.statements: the dbt models compiled for the serving target (ml.serving.sql);
- serving.info: the dbt vars, the warehouse's latest cutoff and the publishing run.

Files are written under a temporary name and renamed, then `current.json` names the newest;
a crash leaves at most a temporary file, which the next publication removes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from ml.data.dbt_plugin import register_pseudonym
from ml.serving.sql import CompiledModel

CURRENT = "current.json"
KEEP_SNAPSHOTS = 3
DEFAULT_ANSWERABLE_CUTOFFS = 3


@dataclass(frozen=True)
class Snapshot:
    path: Path
    latest_cutoff: datetime
    events: int
    shoppers: int


def publish_snapshot(
    warehouse: Path,
    folder: Path,
    dbt_vars: Mapping[str, Any],
    statements: Sequence[CompiledModel],
    run_id: str,
    answerable_cutoffs: int = DEFAULT_ANSWERABLE_CUTOFFS,
) -> Snapshot:
    """Writes a new snapshot of `warehouse` into `folder`, points current.json at it and
    removes all but the newest KEEP_SNAPSHOTS (and any temporary file a crash left)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.duckdb.tmp"):
        stale.unlink()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = folder / f"snapshot-{stamp}-{run_id[:8]}.duckdb"
    staging = path.with_name(path.name + ".tmp")
    with duckdb.connect(str(staging)) as con:
        register_pseudonym(con)
        con.execute("attach ? as warehouse (read_only)", [str(warehouse)])
        latest = _write(con, dbt_vars, statements, run_id, answerable_cutoffs)
        events, shoppers = con.execute(
            "select count(*), count(distinct user_key) from serving.events"
        ).fetchall()[0]
        con.execute("detach warehouse")
    os.replace(staging, path)
    _point_at(folder, path)
    for old in sorted(folder.glob("snapshot-*.duckdb"))[:-KEEP_SNAPSHOTS]:
        old.unlink()
    return Snapshot(path, latest, int(events), int(shoppers))


def _write(
    con: duckdb.DuckDBPyConnection,
    dbt_vars: Mapping[str, Any],
    statements: Sequence[CompiledModel],
    run_id: str,
    answerable_cutoffs: int,
) -> datetime:
    con.execute("create schema serving")
    con.execute(
        """
        create table serving.cutoffs as
        select * from warehouse.marts.cutoffs
        order by cutoff_time desc limit ?
        """,
        [answerable_cutoffs],
    )
    latest, oldest = con.execute(
        "select max(cutoff_time), min(cutoff_time) from serving.cutoffs"
    ).fetchall()[0]
    if latest is None:
        raise ValueError("The warehouse has no cutoff yet: build the features first")
    con.execute(
        """
        create table serving.span as
        select min(bucket) as first_bucket, min(event_time) as first_event_time
        from warehouse.intermediate.int_events
        """
    )
    con.execute(
        """
        create table serving.category_vocabulary as
        select * from warehouse.intermediate.int_category_vocabulary
        """
    )
    # Every column of raw.events but the raw id, replaced by its pseudonym, and event_key, an
    # unkeyed hash over fields that include the raw id.
    columns = [
        name
        for (name,) in con.execute(
            "select column_name from information_schema.columns where table_catalog = "
            "'warehouse' and table_schema = 'raw' and table_name = 'events' "
            "order by ordinal_position"
        ).fetchall()
        if name not in ("user_id", "event_key")
    ]
    # A shopper's whole history: features reach back past the lookback (the previous 7 days,
    # hours since the first event) and sequences to the last `sequence_length` events.
    con.execute(
        f"""
        create table serving.events as
        select pseudonym(user_id) as user_key, {", ".join(columns)}
        from warehouse.raw.events
        order by user_key, event_time
        """
    )
    con.execute(
        "create table serving.statements (ordinal integer, name text, relation text, sql text)"
    )
    con.executemany(
        "insert into serving.statements values (?, ?, ?, ?)",
        [(i, s.name, s.relation, s.sql) for i, s in enumerate(statements)],
    )
    info = {
        "dbt_vars": json.dumps(dict(dbt_vars), sort_keys=True),
        "latest_cutoff": latest.isoformat(),
        "oldest_cutoff": oldest.isoformat(),
        "run_id": run_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    con.execute("create table serving.info (key text, value text)")
    con.executemany("insert into serving.info values (?, ?)", list(info.items()))
    return latest


def _point_at(folder: Path, path: Path) -> None:
    pointer = folder / CURRENT
    staging = pointer.with_suffix(".json.tmp")
    staging.write_text(json.dumps({"snapshot": path.name}) + "\n")
    os.replace(staging, pointer)


def current_snapshot(folder: Path) -> Path:
    """The snapshot current.json names; FileNotFoundError with what to run when there is none."""
    pointer = folder / CURRENT
    if not pointer.exists():
        raise FileNotFoundError(
            f"No serving snapshot in {folder}: the nightly run publishes one after scoring "
            "(asset serving/snapshot; make run or propensity run also do)"
        )
    return folder / json.loads(pointer.read_text())["snapshot"]
