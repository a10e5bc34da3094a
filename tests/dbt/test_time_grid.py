"""The cutoff grid's vars on the real dbt build of a few hand-made events: label windows are
complete only up to the data's end (data_end, else as_of, else the newest event), cutoffs fall at
the shop's local midnight (timezone), and data_start keeps a stray event from stretching the grid.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from ml.data.ingest import ingest_paths
from tests.conftest import query, run_dbt

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
# u1 views on 09-01 and buys on 09-04 at 12:00 UTC (20:00 in Shanghai); u2 arrives on 09-05 and
# the file ends mid-day, with u2's cart add at 16:00 on 09-11.
EVENTS = """\
2025-09-01 10:00:00 UTC,view,p1,c1,shoes.sneakers,nike,50.00,u1,s1
2025-09-04 12:00:00 UTC,purchase,p1,c1,shoes.sneakers,nike,50.00,u1,s2
2025-09-05 08:00:00 UTC,view,p2,c1,shoes.sneakers,adidas,70.00,u2,s3
2025-09-11 16:00:00 UTC,cart,p2,c1,shoes.sneakers,adidas,70.00,u2,s4
"""
STRAY = "2025-07-03 09:30:00 UTC,view,p9,c1,shoes.sneakers,nike,10.00,u1,s0\n"


def ingest(folder: Path, events: str) -> Path:
    (folder / "events.csv").write_text(HEADER + "\n" + events)
    warehouse = folder / "warehouse.duckdb"
    ingest_paths(warehouse, [folder / "events.csv"], "rees46")
    return warehouse


def completeness(warehouse: Path) -> dict[str, bool]:
    rows = query(warehouse, "select cutoff_time::varchar, horizon_complete from marts.cutoffs")
    return {time[:10]: complete for time, complete in rows}


@pytest.fixture(scope="module")
def mid_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    warehouse = ingest(tmp_path_factory.mktemp("mid_day"), EVENTS)
    run_dbt(warehouse, "build")  # every data test holds with the default vars
    return warehouse


def test_a_file_ending_mid_day_leaves_its_last_label_window_incomplete(mid_day: Path) -> None:
    complete = completeness(mid_day)
    assert min(complete) == "2025-09-02" and max(complete) == "2025-09-12"
    # 09-04 + 7 days = 09-11 00:00, before the newest event (16:00): complete. 09-05 + 7 days =
    # 09-12 00:00: the last cutoff, but the data stops at 16:00 the day before.
    assert complete["2025-09-04"] and not complete["2025-09-05"]
    assert [c for c, done in sorted(complete.items()) if done][-1] == "2025-09-04"
    (data_end,) = query(mid_day, "select distinct data_end from marts.cutoffs")[0]
    assert data_end == datetime(2025, 9, 11, 16)
    labels = query(
        mid_day,
        "select count(*), bool_or(horizon_complete), bool_or(purchased) from marts.labels "
        "where cutoff_time = '2025-09-05'",
    )
    assert labels == [(1, False, False)]  # u1's row: no purchase seen, but not observed enough


def test_days_of_history_is_capped_at_the_lookback(mid_day: Path) -> None:
    run_dbt(mid_day, "run", {"lookback": "3 days"}, select="cutoffs")
    days = dict(
        query(mid_day, "select cutoff_time::date::varchar, days_of_history from marts.cutoffs")
    )
    assert days["2025-09-02"] == pytest.approx(14 / 24)  # the data starts 09-01 10:00
    assert days["2025-09-04"] == pytest.approx(2 + 14 / 24)
    assert days["2025-09-05"] == days["2025-09-12"] == 3.0


def test_data_end_says_how_far_the_data_is_complete(mid_day: Path) -> None:
    # The shop says the day is complete: the window ending at 09-12 00:00 is observed.
    run_dbt(mid_day, "run", {"data_end": "2025-09-12 00:00:00"}, select="cutoffs labels")
    complete = completeness(mid_day)
    assert complete["2025-09-05"] and not complete["2025-09-06"]
    (data_end,) = query(mid_day, "select distinct data_end from marts.cutoffs")[0]
    assert data_end == datetime(2025, 9, 12)
    assert query(
        mid_day,
        "select bool_and(horizon_complete) from marts.labels where cutoff_time = '2025-09-05'",
    ) == [(True,)]


def test_as_of_ends_the_data_at_its_cutoff(mid_day: Path) -> None:
    # The nightly run's as_of means "complete up to here"; later events are left out. (Last in
    # this module: it rebuilds int_events without the events from 09-10 on.)
    run_dbt(mid_day, "run", {"as_of": "2025-09-10 00:00:00"}, select="+cutoffs")
    complete = completeness(mid_day)
    assert max(complete) == "2025-09-10"
    assert complete["2025-09-03"] and not complete["2025-09-04"]


def test_cutoffs_fall_at_local_midnight_in_the_shops_timezone(tmp_path: Path) -> None:
    warehouse = ingest(tmp_path, EVENTS)
    run_dbt(warehouse, "build", {"timezone": "Asia/Shanghai"})
    cutoffs = query(warehouse, "select cutoff_time, horizon_end from marts.cutoffs order by 1")
    # Midnight in Shanghai (UTC+8, no daylight saving time) is 16:00 UTC the day before. The
    # first event (09-01 10:00 UTC) is 18:00 local: the first cutoff is local midnight after it.
    assert all(c.hour == 16 and c.minute == 0 for c, _ in cutoffs)
    assert cutoffs[0][0] == datetime(2025, 9, 1, 16)
    # u2's cart at 09-11 16:00 UTC is local midnight itself, so on the local day 09-12: the grid
    # ends at the local midnight after it.
    assert cutoffs[-1][0] == datetime(2025, 9, 12, 16)
    assert all((end - c).days == 7 for c, end in cutoffs)

    # The purchase at 09-04 12:00 UTC is on the local day 09-04: in the cutoff at its end
    # (09-04 16:00 UTC) 4 hours later, where a UTC grid would put it only at 09-05 00:00.
    row = query(
        warehouse,
        """
        select f.purchases_1d, f.hours_since_last_purchase, f.last_event_type,
            q.seconds_before_cutoff
        from marts.user_features f join marts.user_sequences q using (user_id, cutoff_time)
        where f.cutoff_time = '2025-09-04 16:00:00'
        """,
    )
    assert row == [(1, pytest.approx(4.0), 4, [pytest.approx(3 * 86400 + 6 * 3600), 14400.0])]
    # Its label window from the local day before, [09-03 16:00, 09-10 16:00), holds it; the
    # window ending 09-11 16:00 UTC is complete: the data reaches exactly that far.
    labels = dict(query(warehouse, "select cutoff_time::varchar, purchased from marts.labels"))
    assert labels["2025-09-03 16:00:00"] and not labels["2025-09-04 16:00:00"]
    complete = dict(
        query(warehouse, "select cutoff_time::varchar, horizon_complete from marts.cutoffs")
    )
    assert complete["2025-09-04 16:00:00"] and not complete["2025-09-05 16:00:00"]

    # A fixed offset gives the same grid.
    run_dbt(warehouse, "run", {"timezone": "+08:00"}, select="int_events cutoffs")
    assert query(warehouse, "select cutoff_time, horizon_end from marts.cutoffs order by 1") == (
        cutoffs
    )


def test_a_timezone_with_daylight_saving_time_is_refused(tmp_path: Path) -> None:
    result = run_dbt(
        tmp_path / "w.duckdb",
        "compile",
        {"timezone": "Europe/Berlin"},
        select="int_events",
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "timezone 'Europe/Berlin' changes its UTC offset" in output
    assert "'+01:00'" in output


def test_data_start_keeps_a_stray_event_from_stretching_the_grid(tmp_path: Path) -> None:
    # Without data_start the grid would start on 07-04, two months before the data: 71 cutoffs
    # (tests/orchestration/test_stray_events.py builds that and the check that warns of it).
    warehouse = ingest(tmp_path, STRAY + EVENTS)
    run_dbt(warehouse, "run", {"data_start": "2025-09-01"})
    (first, n_cutoffs) = query(warehouse, "select min(cutoff_time), count(*) from marts.cutoffs")[0]
    assert first == datetime(2025, 9, 2) and n_cutoffs == 11
    # No model sees the stray event: u1's history starts on 09-01 10:00, and so does the data.
    (row,) = query(
        warehouse,
        "select events_lookback, hours_since_first_event, days_of_history, last_session_events "
        "from marts.user_features where cutoff_time = '2025-09-03' and events_lookback = 1",
    )
    assert row == (1, pytest.approx(38.0), pytest.approx(1 + 14 / 24), 1)
    assert query(warehouse, "select count(*) from raw.events where event_time < '2025-09-01'") == [
        (1,)
    ]


def test_a_runaway_cutoff_grid_stops_the_build_naming_the_events(tmp_path: Path) -> None:
    # The stray is two months early: with hourly cutoffs, 1,688 of them; a bound of 1,000 stops
    # the build at int_events, before any per-user work, and says what to do.
    warehouse = ingest(tmp_path, STRAY + EVENTS)
    hourly = {"cutoff_step": "1 hour", "lookback": "1 day", "horizon": "1 day"}
    result = run_dbt(warehouse, "run", {**hourly, "max_cutoffs": 1000}, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "The events span 1688 cutoffs of 1 hour" in output
    assert "The earliest events: 2025-07-03 09:30:00, 2025-09-01 10:00:00" in output
    assert "set the dbt var data_start after them" in output
    assert "int_events" in output
    # The same bound with data_start after the stray builds.
    run_dbt(warehouse, "run", {**hourly, "max_cutoffs": 1000, "data_start": "2025-09-01"})
    assert query(warehouse, "select count(*) < 1000 from marts.cutoffs") == [(True,)]
