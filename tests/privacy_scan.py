"""Looks for the pseudonym key and raw user ids where neither may be: files of the state
folder, dbt's target and logs, the Dagster instance, MLflow's store and artifacts, and every
warehouse table outside the raw layer."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import duckdb

ID_TOKEN = re.compile(rb"(?<![0-9A-Za-z_-])[0-9A-Za-z_-]{6,64}(?![0-9A-Za-z_-])")


def raw_user_ids(warehouse: Path) -> set[str]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {row[0] for row in con.sql("select distinct user_id from raw.events").fetchall()}


def files_holding(
    folders: Iterable[Path], salt: str, raw_ids: set[str], skip: Iterable[Path] = ()
) -> dict[str, list[str]]:
    """Every file under `folders` (but those under `skip`) that holds the key, or a raw id as
    a whole token (not a piece of a longer number or word), with what it holds."""
    skipped = [Path(p).resolve() for p in skip]
    found: dict[str, list[str]] = {}
    for folder in folders:
        for path in Path(folder).rglob("*"):
            resolved = path.resolve()
            if not path.is_file() or any(resolved.is_relative_to(s) for s in skipped):
                continue
            data = path.read_bytes()
            hits = ["the key"] if salt.encode() in data else []
            tokens = {token.decode("latin-1") for token in ID_TOKEN.findall(data)}
            hits += sorted(tokens & raw_ids)[:3]
            if hits:
                found[str(path)] = hits
    return found


def warehouse_leaks(warehouse: Path, salt: str) -> list[str]:
    """Where the key is in the warehouse's catalog, or a raw id in a table outside `raw`."""
    leaks = []
    with duckdb.connect(str(warehouse), read_only=True) as con:
        definitions = con.sql(
            "select coalesce(sql, '') from duckdb_views() where not internal "
            "union all select coalesce(sql, '') from duckdb_tables()"
        ).fetchall()
        leaks += ["catalog" for (text,) in definitions if salt in text]
        columns = con.sql(
            """
            select table_schema, table_name, column_name from information_schema.columns
            where table_schema not in ('raw', 'information_schema', 'pg_catalog')
              and data_type in ('VARCHAR', 'BIGINT', 'INTEGER', 'HUGEINT', 'UBIGINT')
            """
        ).fetchall()
        for schema, table, column in columns:
            (hits,) = con.execute(
                f'select count(*) from "{schema}"."{table}" '
                f'where cast("{column}" as varchar) in (select user_id from raw.events)'
            ).fetchone()
            if hits:
                leaks.append(f"{schema}.{table}.{column}: {hits} rows")
    return leaks
