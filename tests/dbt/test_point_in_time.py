"""The point-in-time guarantee, proven on the real dbt build: events that arrive after a cutoff,
purchases included, change none of that cutoff's features or sequences."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from ml.data.ingest import ingest_paths
from ml.data.synthetic import SyntheticConfig, generate_events
from tests.conftest import query, run_dbt

CUTOFF = datetime(2025, 9, 12)


def snapshot(warehouse: Path, table: str, until: datetime) -> list[tuple]:
    return query(
        warehouse,
        f"select * from marts.{table} where cutoff_time <= '{until}' order by user_id, cutoff_time",
    )


def write_late_events(path: Path, raw_user_ids: list[str]) -> int:
    """REES46-format events at and after CUTOFF for existing users: purchases, carts, a removal,
    views of a never-seen category, one exactly at the cutoff."""
    rows = []
    for i, user_id in enumerate(raw_user_ids):
        base = CUTOFF + timedelta(minutes=i)
        for offset, event_type, category in [
            (timedelta(0), "view", "9990001"),
            (timedelta(seconds=30), "cart", "9990001"),
            (timedelta(minutes=5), "remove_from_cart", "9990001"),
            (timedelta(hours=2), "purchase", "9990002"),
            (timedelta(days=3), "purchase", "9990002"),
        ]:
            when = (base + offset).strftime("%Y-%m-%d %H:%M:%S UTC")
            rows.append(
                f"{when},{event_type},77{i},{category},late.new,acme,12.50,{user_id},late-{i}"
            )
    path.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
        "user_session\n" + "\n".join(rows) + "\n"
    )
    return len(rows)


def test_events_after_a_cutoff_change_none_of_its_features_or_sequences(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    landing = tmp_path / "landing"
    generate_events(landing, SyntheticConfig(n_users=400, days=20, seed=7))
    ingest_paths(warehouse, [landing], "synthetic")
    run_dbt(warehouse, "run")
    features_before = snapshot(warehouse, "user_features", CUTOFF)
    sequences_before = snapshot(warehouse, "user_sequences", CUTOFF)
    later_features_before = query(
        warehouse, f"select * from marts.user_features where cutoff_time > '{CUTOFF}'"
    )
    assert len(features_before) > 500 and len(sequences_before) == len(features_before)

    with duckdb.connect(str(warehouse), read_only=True) as con:
        raw_user_ids = [
            row[0]
            for row in con.sql(
                f"select distinct user_id from raw.events where event_time < '{CUTOFF}' "
                "order by user_id limit 40"
            ).fetchall()
        ]
    late_file = tmp_path / "late.csv"
    n_late = write_late_events(late_file, raw_user_ids)
    (report,) = ingest_paths(warehouse, [late_file], "rees46")
    assert report.accepted == n_late
    run_dbt(warehouse, "run")

    assert snapshot(warehouse, "user_features", CUTOFF) == features_before
    assert snapshot(warehouse, "user_sequences", CUTOFF) == sequences_before
    # The late events did arrive: features after the cutoff moved for those users.
    later_features_after = query(
        warehouse, f"select * from marts.user_features where cutoff_time > '{CUTOFF}'"
    )
    assert sorted(later_features_after) != sorted(later_features_before)
