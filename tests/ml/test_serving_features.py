"""The serving path computes a shopper's features and sequence with the dbt models themselves:
asked "as of" a cutoff, it returns exactly the rows the real dbt build wrote to
marts.user_features and marts.user_sequences; with live events, exactly what the build writes
once those events are ingested. Real dbt builds on real DuckDB files, a real snapshot."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ml.data.ingest import ingest_paths
from ml.data.pseudonyms import pseudonym_salt
from ml.data.sources import CANONICAL_FIELDS
from ml.data.synthetic import SyntheticConfig, generate_events
from ml.serving.features import CutoffError, FeatureEngine
from ml.serving.snapshot import current_snapshot, publish_snapshot
from ml.serving.sql import compile_serving_models
from tests.conftest import keyed_warehouse, query, run_dbt

SHOP = SyntheticConfig(n_users=300, days=20, seed=11)
# Live events carry every canonical field but the shopper, whom the request names.
LIVE_COLUMNS = [name for name in CANONICAL_FIELDS if name != "user_id"]


def build(folder: Path, landing: Path, before: datetime | None = None) -> Path:
    """A warehouse of the shop's events (those before `before`), built by the real dbt."""
    files = landing
    if before is not None:
        files = folder / "landing"
        files.mkdir(parents=True)
        with duckdb.connect() as con:
            con.execute(
                f"copy (select * from read_parquet('{landing}/*.parquet') "
                f"where event_time < '{before}') to '{files / 'events.parquet'}'"
            )
    warehouse = folder / "warehouse.duckdb"
    ingest_paths(warehouse, [files], "synthetic")
    run_dbt(warehouse, "run")
    return warehouse


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("serving")
    landing = root / "landing"
    generate_events(landing, SHOP)
    warehouse = build(root / "full", landing)
    statements = compile_serving_models({})  # the nightly build's vars: the defaults
    snapshot = publish_snapshot(warehouse, root / "snapshots", {}, statements, "full-run")
    return {"root": root, "landing": landing, "warehouse": warehouse, "snapshot": snapshot}


def pseudonymous_pairs(warehouse: Path, cutoffs: int, rows: int) -> list[tuple[str, datetime]]:
    """(raw user id, cutoff) of a sample of feature rows at the newest `cutoffs` cutoffs."""
    with keyed_warehouse(warehouse) as con:
        return con.execute(
            f"""
            with ids as (select distinct user_id as raw_id from wh.raw.events),
            keyed as (select raw_id, pseudonym(raw_id) as user_id from ids)
            select keyed.raw_id, f.cutoff_time
            from wh.marts.user_features f join keyed using (user_id)
            where f.cutoff_time in (
                select cutoff_time from wh.marts.cutoffs order by cutoff_time desc limit {cutoffs}
            )
            order by hash(keyed.raw_id, f.cutoff_time)
            limit {rows}
            """
        ).fetchall()


def batch_rows(warehouse: Path, table: str, raw_id: str, cutoff: datetime) -> pd.DataFrame:
    with keyed_warehouse(warehouse) as con:
        return con.execute(
            f"select * from wh.marts.{table} where user_id = pseudonym(?) and cutoff_time = ?",
            [raw_id, cutoff],
        ).df()


def assert_same_rows(served: pd.DataFrame, batch: pd.DataFrame, what: str) -> None:
    """Equal in every column and type: exactly, but for sums of prices, which may differ in
    the last bits with the order DuckDB adds their terms (relative 1e-12)."""
    assert len(batch) == 1, what
    pd.testing.assert_frame_equal(
        served.reset_index(drop=True), batch, check_exact=False, rtol=1e-12, atol=0
    )
    floats = served.select_dtypes("float").columns
    exact = [c for c in served.columns if c not in floats]
    assert served[exact].reset_index(drop=True).equals(batch[exact]), what


def test_as_of_a_cutoff_the_service_rows_are_the_marts_rows(shop: dict) -> None:
    """One shopper per pass, and all of a cutoff's sampled shoppers in one pass."""
    engine = FeatureEngine(shop["snapshot"].path)
    pairs = pseudonymous_pairs(shop["warehouse"], cutoffs=3, rows=40)
    assert len(pairs) == 40 and len({cutoff for _, cutoff in pairs}) == 3
    served = [(raw_id, engine.inputs(raw_id, as_of=cutoff)) for raw_id, cutoff in pairs[:8]]
    for cutoff in sorted({cutoff for _, cutoff in pairs}):
        ids = [raw_id for raw_id, at in pairs if at == cutoff]
        many = engine.inputs_many([(raw_id, None) for raw_id in ids], as_of=cutoff)
        served += list(zip(ids, many, strict=True))
    assert len(served) == 48
    for raw_id, inputs in served:
        assert inputs.known and inputs.history_events > 0 and len(inputs.model_input) == 1
        for table, frame in (
            ("user_features", inputs.features),
            ("user_sequences", inputs.sequences),
        ):
            batch = batch_rows(shop["warehouse"], table, raw_id, inputs.cutoff_time)
            assert_same_rows(frame, batch, table)


def test_live_events_change_the_answer_as_ingesting_them_would(shop: dict) -> None:
    """The snapshot of a night that ended at T, plus a shopper's events since T sent live,
    gives the rows the build writes once those events are ingested."""
    (latest,) = query(shop["warehouse"], "select max(cutoff_time) from marts.cutoffs")[0]
    night = latest - timedelta(days=2)  # the night's data ends here; two days arrive live
    cutoff = latest - timedelta(days=1)  # a complete day of live events before this cutoff
    early = build(shop["root"] / "early", shop["landing"], before=night)
    statements = compile_serving_models({})
    snapshot = publish_snapshot(early, shop["root"] / "early_snapshots", {}, statements, "night")
    engine = FeatureEngine(snapshot.path)
    (known,) = query(early, "select max(category_idx) from intermediate.int_category_vocabulary")[0]

    def new_as_minus_one(indexes: list[int]) -> list[int]:
        return [-1 if index > known else index for index in indexes]

    full = shop["warehouse"]
    live_users = query(
        full,
        f"select user_id from raw.events where event_time >= '{night}' and event_time < "
        f"'{cutoff}' group by user_id having count(*) >= 3 order by user_id limit 12",
    )
    assert len(live_users) == 12
    changed = 0
    for (raw_id,) in live_users:
        live = pd.DataFrame(
            query(
                full,
                f"select {', '.join(LIVE_COLUMNS)} from raw.events where user_id = '{raw_id}' "
                f"and event_time >= '{night}' and event_time < '{cutoff}'",
            ),
            columns=LIVE_COLUMNS,
        )
        served = engine.inputs(raw_id, as_of=cutoff, live_events=live)
        assert served.live_events == len(live)
        assert_same_rows(served.features, batch_rows(full, "user_features", raw_id, cutoff), "f")
        # A category first seen after the night gets the next free index in both, but which
        # one depends on the other shoppers' new categories in the batch: compare it as "new".
        sequences = [
            frame.assign(category_indexes=frame["category_indexes"].map(new_as_minus_one))
            for frame in (served.sequences, batch_rows(full, "user_sequences", raw_id, cutoff))
        ]
        assert_same_rows(*sequences, "user_sequences")
        without = engine.inputs(raw_id, as_of=cutoff)
        changed += not without.features.equals(served.features)
    assert changed == len(live_users)  # the live events did change every answer


def test_cold_start_and_the_cutoff_rule(shop: dict) -> None:
    engine = FeatureEngine(shop["snapshot"].path)
    unknown = engine.inputs("never-seen-shopper", as_of=engine.latest_cutoff)
    assert not unknown.known and unknown.history_events == 0 and unknown.sequences.empty
    # At a moment inside a day: the first cutoff after it (the batch's rule for its latest).
    moment = engine.latest_cutoff + timedelta(hours=5)
    assert engine.cutoff_at(moment) == engine.latest_cutoff + timedelta(days=1)
    assert engine.cutoff_at(engine.latest_cutoff) == engine.latest_cutoff + timedelta(days=1)
    with pytest.raises(CutoffError, match="not a cutoff of the grid"):
        engine.inputs("x", as_of=moment)
    assert current_snapshot(shop["snapshot"].path.parent) == shop["snapshot"].path


def test_the_snapshot_holds_no_raw_id_and_no_key(shop: dict) -> None:
    """Pseudonymous keys only: no column of the snapshot holds a raw user id (the service
    puts back the one a request names), and the pseudonym key is in no byte of it."""
    path = shop["snapshot"].path
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute(f"attach '{shop['warehouse']}' as wh (read_only)")
        columns = con.execute(
            "select table_schema, table_name, column_name from information_schema.columns "
            "where table_catalog = current_database() and data_type in "
            "('VARCHAR', 'BIGINT', 'INTEGER', 'HUGEINT', 'UBIGINT')"
        ).fetchall()
        assert ("serving", "events", "user_key") in columns
        assert not [c for c in columns if c[2] in ("user_id", "event_key")]
        for schema, table, column in columns:
            (hits,) = con.execute(
                f'select count(*) from "{schema}"."{table}" '
                f'where cast("{column}" as varchar) in (select user_id from wh.raw.events)'
            ).fetchone()
            assert hits == 0, f"{schema}.{table}.{column}"
    assert pseudonym_salt() not in path.read_bytes()


def test_publishing_again_repairs_a_killed_publication(shop: dict, tmp_path: Path) -> None:
    """A publication killed before its rename leaves a temporary file, which the next one
    removes; current.json always names a whole snapshot, and the three newest are kept."""
    folder = tmp_path / "snapshots"
    statements = FeatureEngine(shop["snapshot"].path).statements
    first = publish_snapshot(shop["warehouse"], folder, {}, statements, "run-1")
    (folder / "snapshot-20990101T000000-dead.duckdb.tmp").write_bytes(b"half a file")
    published = [first.path]
    for run in ("run-2", "run-3", "run-4"):
        time.sleep(1.1)  # the file names carry the second
        published.append(publish_snapshot(shop["warehouse"], folder, {}, statements, run).path)
        assert current_snapshot(folder) == published[-1]
    assert not list(folder.glob("*.tmp"))
    assert sorted(folder.glob("snapshot-*.duckdb")) == published[-3:]
    assert FeatureEngine(current_snapshot(folder)).info["run_id"] == "run-4"
