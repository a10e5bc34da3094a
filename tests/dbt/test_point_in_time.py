"""The point-in-time guarantee, proven on the real dbt build: events that arrive after a cutoff,
purchases included, change none of that cutoff's features or sequences, the order-aware ones
(last event, carts since the last purchase, the last session) included."""

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


def write_late_events(path: Path, users: list[tuple[str, str]]) -> int:
    """REES46-format events at and after CUTOFF for existing (user, last session) pairs:
    purchases, carts, a removal, views of a never-seen category, one exactly at the cutoff, and
    a cart add exactly at the cutoff and a purchase in the user's last session before it (a
    session running across the cutoff, which last_session_* must cut there)."""
    rows = []
    for i, (user_id, last_session) in enumerate(users):
        base = CUTOFF + timedelta(minutes=i)
        for offset, event_type, category, session in [
            (timedelta(0), "view", "9990001", f"late-{i}"),
            (timedelta(seconds=30), "cart", "9990001", f"late-{i}"),
            (timedelta(minutes=5), "remove_from_cart", "9990001", f"late-{i}"),
            (timedelta(hours=2), "purchase", "9990002", f"late-{i}"),
            (timedelta(days=3), "purchase", "9990002", f"late-{i}"),
            (-timedelta(minutes=i), "cart", "9990001", last_session),
            (timedelta(seconds=10), "purchase", "9990001", last_session),
        ]:
            when = (base + offset).strftime("%Y-%m-%d %H:%M:%S UTC")
            rows.append(
                f"{when},{event_type},77{i},{category},late.new,acme,12.50,{user_id},{session}"
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

    # The new columns are in the comparison, and not trivially: every state occurs.
    columns = [row[0] for row in query(warehouse, "describe marts.user_features")]
    state = dict(
        zip(
            columns,
            query(
                warehouse,
                f"select {', '.join(f'count(distinct {c})' for c in columns)} "
                f"from marts.user_features where cutoff_time <= '{CUTOFF}'",
            )[0],
            strict=True,
        )
    )
    assert state["last_event_type"] == 4  # view, cart, remove, purchase (no wishlists here)
    assert state["has_open_cart"] == state["last_cart_removed"] == 2
    for column in (
        "carts_since_last_purchase",
        "removes_since_last_purchase",
        "seconds_since_last_remove",
        "last_session_events",
        "last_session_carts",
        "hours_since_first_event",
        "days_of_history",
    ):
        assert state[column] >= 2, column  # not constant

    with duckdb.connect(str(warehouse), read_only=True) as con:
        users = con.sql(
            f"""
            select user_id, arg_max(user_session, event_time) from raw.events
            where event_time < '{CUTOFF}' group by user_id order by user_id limit 40
            """
        ).fetchall()
    late_file = tmp_path / "late.csv"
    n_late = write_late_events(late_file, users)
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
