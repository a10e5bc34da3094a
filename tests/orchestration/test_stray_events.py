"""Stray events: the rule (ml.monitoring.check_stray_events) on hand-made day counts, and the
asset check no_stray_events on a real warehouse built by the real dbt CLI: quiet on the normal
data, a warning naming the stray event and the data_start var once one arrives two months early,
and quiet again after a rebuild with data_start."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from ml.data.ingest import ingest_paths
from ml.data.synthetic import SyntheticConfig, generate_events
from ml.monitoring import check_stray_events
from tests.conftest import query, run_dbt

SEPTEMBER = {date(2025, 9, 1) + timedelta(days=i): 1_000 for i in range(30)}


def test_rule_passes_on_a_dense_span_even_with_short_gaps() -> None:
    days = {day: n for day, n in SEPTEMBER.items() if day.day not in (10, 11, 12)}  # 3 empty days
    outcome = check_stray_events(days)
    assert outcome.passed, outcome.message
    assert outcome.metadata["dense_span_start"] == "2025-09-01"
    assert outcome.metadata["dense_span_end"] == "2025-09-30"


def test_rule_finds_a_stray_day_two_months_early_and_names_data_start() -> None:
    outcome = check_stray_events({**SEPTEMBER, date(2025, 7, 1): 1})
    assert not outcome.passed
    assert outcome.metadata["stray_events"] == 1 and outcome.metadata["stray_days"] == 1
    assert "1 stray event(s) on 2025-07-01" in outcome.message
    assert "61 empty days before the dense span 2025-09-01 .. 2025-09-30" in outcome.message
    assert "set the dbt var data_start to '2025-09-01'" in outcome.message


def test_rule_finds_strays_after_the_span_and_names_as_of() -> None:
    outcome = check_stray_events({**SEPTEMBER, date(2025, 12, 24): 2, date(2025, 12, 25): 3})
    assert not outcome.passed and outcome.metadata["stray_events"] == 5
    assert "on 2025-12-24, 2025-12-25" in outcome.message
    assert "set the dbt var as_of to '2025-10-01'" in outcome.message


def test_rule_leaves_a_second_large_block_of_data_alone() -> None:
    # A month apart but with half of the events: a gap in the data, not a few strays.
    august = {day - timedelta(days=60): n for day, n in SEPTEMBER.items()}
    outcome = check_stray_events({**august, **SEPTEMBER})
    assert outcome.passed, outcome.message
    # ... and a gap shorter than min_gap_days joins the stray day to the span.
    assert check_stray_events({**SEPTEMBER, date(2025, 8, 27): 1}).passed


def write_stray_event(path: Path, raw_user_id: str, when: str) -> None:
    path.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
        f"user_session\n{when} UTC,view,1,2,stray.thing,acme,9.99,{raw_user_id},stray-1\n"
    )


def run_check() -> dg.AssetCheckEvaluation:
    from orchestration.defs.checks import ASSET_CHECKS, CUTOFFS, no_stray_events

    assert no_stray_events in ASSET_CHECKS  # part of the code location
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [dg.AssetSpec(CUTOFFS), no_stray_events],
            selection=dg.AssetSelection.all_asset_checks(),
            instance=instance,
        )
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "no_stray_events"
    return evaluation


def test_check_warns_of_a_stray_event_until_data_start_is_set(
    project_home: Path, tmp_path: Path
) -> None:
    warehouse = project_home / "warehouse.duckdb"  # where the checks look (PROPENSITY_HOME)
    warehouse.parent.mkdir(parents=True)
    landing = tmp_path / "landing"
    generate_events(landing, SyntheticConfig(n_users=150, days=14, seed=3))
    ingest_paths(warehouse, [landing], "synthetic")
    run_dbt(warehouse, "run")
    (first_cutoff, n_cutoffs) = query(
        warehouse, "select min(cutoff_time)::date::varchar, count(*) from marts.cutoffs"
    )[0]

    normal = run_check()
    assert normal.passed, normal.description

    # One view two months before the rest, from a user of the shop.
    (raw_user,) = query(warehouse, "select min(user_id) from raw.events")[0]
    first_day = date.fromisoformat(first_cutoff) - timedelta(days=1)
    stray_day = first_day - timedelta(days=60)
    stray_file = tmp_path / "stray.csv"
    write_stray_event(stray_file, raw_user, f"{stray_day} 09:30:00")
    ingest_paths(warehouse, [stray_file], "rees46")
    run_dbt(warehouse, "run")
    (stretched,) = query(warehouse, "select count(*) from marts.cutoffs")[0]
    assert stretched == n_cutoffs + 60  # the grid reaches back to the stray event

    stray = run_check()
    assert not stray.passed
    assert stray.severity == dg.AssetCheckSeverity.WARN
    assert f"1 stray event(s) on {stray_day}" in stray.description
    assert f"set the dbt var data_start to '{first_day}'" in stray.description
    assert stray.metadata["stray_events"].value == 1

    # Following the advice: the grid starts where it did, and the check is quiet again.
    run_dbt(warehouse, "run", dbt_vars={"data_start": str(first_day)})
    assert query(
        warehouse, "select min(cutoff_time)::date::varchar, count(*) from marts.cutoffs"
    ) == [(first_cutoff, n_cutoffs)]
    fixed = run_check()
    assert fixed.passed, fixed.description
    # The stray event is still in raw.events; the models no longer see it.
    assert query(warehouse, f"select count(*) from raw.events where event_time < '{first_day}'")[
        0
    ] == (1,)
