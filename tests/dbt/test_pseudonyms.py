"""The pseudonym key (PROPENSITY_PSEUDONYM_SALT) keys the user ids of every model, and neither
it nor a raw user id lands in dbt's target, dbt's logs, the warehouse's catalog or any table
outside the raw layer. Without a key, outside development mode, dbt stops before building."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import duckdb

from ml.data.ingest import ingest_paths
from ml.data.pseudonyms import DEVELOPMENT_VARIABLE, SALT_VARIABLE, pseudonym
from tests.conftest import query, run_dbt

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
RAW_IDS = ["shopper-5b1e07-alpha", "shopper-9c44d2-bravo", "shopper-31f0aa-charlie"]


def write_events(folder: Path) -> Path:
    rows = []
    for day in range(1, 9):
        for n, user in enumerate(RAW_IDS):
            event = "purchase" if (day + n) % 4 == 0 else "view"
            rows.append(
                f"2025-09-0{day} 1{n}:00:00 UTC,{event},p{n},c1,home.lamp,ikea,20.0,{user},"
            )
    path = folder / "events.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def dbt_build(warehouse: Path, environment: dict[str, str]) -> subprocess.CompletedProcess:
    """`dbt build` with `environment` instead of the test process's pseudonym settings."""
    settings = {SALT_VARIABLE: None, DEVELOPMENT_VARIABLE: None, **environment}
    return run_dbt(warehouse, "build", check=False, env=settings)


def files_containing(folder: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under `folder` that holds one of `needles`, with the needles it holds."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [needle for needle in needles if needle.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


def test_the_salt_keys_every_pseudonym_and_neither_it_nor_a_raw_id_lands_on_disk(
    tmp_path: Path,
) -> None:
    salt = secrets.token_hex(16)
    warehouse = tmp_path / "warehouse.duckdb"
    ingest_paths(warehouse, [write_events(tmp_path)], "rees46")

    result = dbt_build(warehouse, {SALT_VARIABLE: salt, DEVELOPMENT_VARIABLE: "0"})
    assert result.returncode == 0, result.stdout[-3000:]

    # The keyed hash of the raw id, computed outside the warehouse, is every model's user id.
    expected = {pseudonym(user, salt.encode()) for user in RAW_IDS}
    assert {
        row[0] for row in query(warehouse, "select distinct user_id from staging.stg_events")
    } == expected
    assert {
        row[0] for row in query(warehouse, "select distinct user_id from marts.labels")
    } == expected
    assert expected.isdisjoint(
        {pseudonym(user, b"development-salt-not-secret") for user in RAW_IDS}
    )

    # Neither the key nor a raw id in dbt's target (manifest, compiled and run SQL, run
    # results) or logs, nor the key in the warehouse file (catalog and data alike).
    assert files_containing(tmp_path / "target", [salt, *RAW_IDS]) == {}
    assert files_containing(tmp_path / "logs", [salt, *RAW_IDS]) == {}
    assert salt.encode() not in warehouse.read_bytes()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        definitions = con.sql(
            "select coalesce(sql, '') from duckdb_views() where not internal "
            "union all select coalesce(sql, '') from duckdb_tables()"
        ).fetchall()
        assert definitions and not any(salt in text for (text,) in definitions)
        # Raw ids stay in the raw layer: no other table holds one, in any column.
        tables = con.sql(
            "select schema_name, table_name from duckdb_tables() where schema_name <> 'raw'"
        ).fetchall()
        assert len(tables) > 5
        for schema, table in tables:
            text = str(con.sql(f'select * from "{schema}"."{table}"').fetchall())
            assert not any(user in text for user in RAW_IDS), f"{schema}.{table}"
        assert con.sql("select count(distinct user_id) from raw.events").fetchall() == [(3,)]


def test_without_a_salt_outside_development_mode_dbt_stops_before_building(
    tmp_path: Path,
) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    ingest_paths(warehouse, [write_events(tmp_path)], "rees46")

    result = dbt_build(warehouse, {DEVELOPMENT_VARIABLE: "0"})

    assert result.returncode != 0
    assert f"{SALT_VARIABLE} is not set" in result.stdout
    tables = query(warehouse, "select schema_name || '.' || table_name from duckdb_tables()")
    assert all(name.startswith("raw.") for (name,) in tables), tables
