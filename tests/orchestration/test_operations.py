"""Operations without the full pipeline: the nightly schedule's cutoff, the landing sensor's
cursor, the asset checks on broken warehouses, the date-range backfill and the instance file.

Real components throughout: a Dagster instance, DuckDB files, the dbt CLI.
"""

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import pytest
import yaml

from ml.data.synthetic import SyntheticConfig, generate_events
from orchestration.defs.jobs import CUTOFF_TAG
from orchestration.defs.resources import TimeRolesResource
from tests.conftest import query

# --- the nightly schedule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "tick", "cutoff"),
    [
        # 02:00 UTC on Oct 2: the new day is Oct 1, so the cutoff is midnight before the tick.
        ("UTC", datetime(2025, 10, 2, 2, 0), "2025-10-02 00:00:00"),
        # 02:00 in New York is 06:00 UTC: local midnight is 04:00 UTC, down to the UTC grid.
        ("America/New_York", datetime(2025, 10, 2, 2, 0), "2025-10-02 00:00:00"),
        # 02:00 in Tokyo is 17:00 UTC the day before: Oct 1 UTC is not over yet.
        ("Asia/Tokyo", datetime(2025, 10, 2, 2, 0), "2025-10-01 00:00:00"),
    ],
)
def test_schedule_request_carries_the_new_days_cutoff(
    project_home: Path, monkeypatch: pytest.MonkeyPatch, timezone: str, tick: datetime, cutoff: str
) -> None:
    monkeypatch.setenv("PROPENSITY_SCHEDULE_TIMEZONE", timezone)
    from orchestration.definitions import defs

    schedule = defs().resolve_schedule_def("nightly_retraining_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == timezone
    assert schedule.job_name == "nightly_retraining"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED

    # No instance: the schedule reads nothing but the tick. (Handing build_schedule_context an
    # instance_for_test enters it twice and leaves Dagster's defs-state storage pointing at the
    # disposed instance, which breaks the next definitions load in this process.)
    context = dg.build_schedule_context(
        scheduled_execution_time=tick.replace(tzinfo=ZoneInfo(timezone))
    )
    (request,) = schedule.evaluate_tick(context).run_requests
    ops = request.run_config["ops"]
    assert ops["warehouse_dbt_models"]["config"]["as_of"] == cutoff
    assert request.tags[CUTOFF_TAG] == cutoff.replace(" ", "T")
    day = cutoff[:10].replace("-", "")
    for prefix, study in (
        ("xgb", "purchase-propensity-xgb"),
        ("seq", "purchase-propensity-torch-seq"),
    ):
        for op in (f"training__{prefix}_study", f"training__{prefix}_model"):
            assert ops[op]["config"]["study_name"] == f"{study}-{day}"
    assert request.run_key == f"nightly-{cutoff}"

    # The request is valid run config for the job it targets.
    job = defs().resolve_job_def("nightly_retraining")
    assert job.run_config_schema.config_type is not None
    assert dg.validate_run_config(job, request.run_config)


def test_schedule_and_sensor_can_start_running(
    project_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROPENSITY_AUTOMATION", "running")
    from orchestration.definitions import defs

    definitions = defs()
    schedule = definitions.resolve_schedule_def("nightly_retraining_schedule")
    sensor = definitions.resolve_sensor_def("landing_files_sensor")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


# --- the landing sensor --------------------------------------------------------------------


def _settle(paths: list[Path]) -> None:
    """Backdate files so the sensor takes them as completely written."""
    past = time.time() - 60
    for path in paths:
        os.utime(path, (past, past))


def test_sensor_ingests_each_landing_file_once(project_home: Path) -> None:
    from orchestration.definitions import defs
    from orchestration.defs.sensors import build_landing_sensor

    landing = project_home / "landing" / "synthetic"
    first = generate_events(landing, SyntheticConfig(n_users=300, days=3, seed=5)).files
    _settle(first)
    sensor = build_landing_sensor()
    job = defs().resolve_job_def("ingest_landing")
    warehouse = project_home / "warehouse.duckdb"

    def ingest(request: dg.RunRequest, instance: dg.DagsterInstance) -> dict:
        result = job.execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags
        )
        assert result.success
        (materialization,) = result.asset_materializations_for_node("raw__events")
        return {key: value.value for key, value in materialization.metadata.items()}

    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context()  # no instance: see the schedule test
        (request,) = sensor.evaluate_tick(context).run_requests
        assert request.run_config["ops"]["raw__events"]["config"]["paths"] == [
            str(path) for path in first
        ]
        assert ingest(request, instance)["files_ingested"] == len(first)
        n_events = query(warehouse, "select count(*) from raw.events")[0][0]

        # Same cursor, nothing new: no request. A half-written (fresh) file waits.
        cursor = context.cursor
        again = sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor))
        assert again.run_requests == [] and again.skip_message

        second = generate_events(
            landing, SyntheticConfig(n_users=300, days=1, start_day=3, seed=5)
        ).files
        waiting = sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor))
        assert waiting.run_requests == []
        _settle(second)
        context = dg.build_sensor_context(cursor=cursor)
        (request,) = sensor.evaluate_tick(context).run_requests
        assert request.run_config["ops"]["raw__events"]["config"]["paths"] == [
            str(path) for path in second
        ]
        assert ingest(request, instance)["files_ingested"] == 1

        # Even a request that is run twice ingests nothing the second time (sha256 skip).
        repeated = ingest(request, instance)
        assert repeated["files_ingested"] == 0 and repeated["files_skipped"] == 1

    files = query(warehouse, "select source_file, count(*) from raw.ingested_files group by all")
    assert sorted(name for name, _ in files) == sorted(str(p) for p in first + second)
    assert all(count == 1 for _, count in files)
    assert query(warehouse, "select count(*) from raw.events")[0][0] > n_events


# --- the asset checks on broken data -------------------------------------------------------

CUTOFF = datetime(2025, 10, 1)


def _write_warehouse(path: Path, broken: bool) -> None:
    """A tiny warehouse with the tables the checks read: 20 daily cutoffs, 2-day horizon."""
    from ml.monitoring import KEY_FEATURES

    cutoffs = [CUTOFF - timedelta(days=19 - i) for i in range(20)]
    with duckdb.connect(str(path)) as con:
        for schema in ("raw", "intermediate", "marts", "predictions"):
            con.execute(f"create schema {schema}")
        last_event = CUTOFF - timedelta(days=4 if broken else 0, minutes=5)
        con.execute(
            "create table raw.events as select $t::timestamp as event_time", {"t": last_event}
        )
        # The events the models use: 100 a day, and when broken a stray one 80 days earlier.
        event_times = [CUTOFF - timedelta(days=d, hours=3) for d in range(20)] * 100
        con.execute(
            "create table intermediate.int_events as select unnest($t::timestamp[]) as event_time",
            {"t": event_times + ([CUTOFF - timedelta(days=80)] if broken else [])},
        )
        con.execute(
            """
            create table marts.cutoffs as
            select c as cutoff_time, c + interval 2 day as horizon_end,
                c + interval 2 day <= $latest as horizon_complete, c = $latest as is_latest,
                true as lookback_complete
            from unnest($cutoffs::timestamp[]) as t(c)
            """,
            {"cutoffs": cutoffs, "latest": CUTOFF},
        )
        # Features: the latest cutoff is shifted by +3 when broken (drift), with NULLs.
        features = ", ".join(
            f"(random() * 10 + case when $broken and c = $latest then 30 else 0 end)"
            f"::double as {name}"
            for name in KEY_FEATURES
        )
        con.execute("select setseed(0.5)")
        con.execute(
            f"""
            create table marts.user_features as
            select u as user_id, c as cutoff_time, {features}
            from unnest($cutoffs::timestamp[]) as t(c), range(300) as r(u)
            """,
            {"cutoffs": cutoffs, "latest": CUTOFF, "broken": broken},
        )
        if broken:
            con.execute("update marts.user_features set events_7d = null where user_id < 7")
        con.execute(
            """
            create table marts.labels as
            select user_id, cutoff_time,
                case when $broken then false else user_id % 25 = 0 end as purchased,
                cutoff_time + interval 2 day <= $latest as horizon_complete
            from marts.user_features
            """,
            {"broken": broken, "latest": CUTOFF},
        )
        con.execute(
            """
            create table predictions.user_propensity as
            select user_id, cutoff_time,
                case when $broken then 0.7 else (user_id % 50) / 100.0 end as score
            from marts.user_features where cutoff_time = $latest
            """,
            {"broken": broken, "latest": CUTOFF},
        )


def _run_checks(warehouse: Path) -> dict[str, dg.AssetCheckEvaluation]:
    from orchestration.defs.checks import ASSET_CHECKS

    targets = [
        dg.AssetSpec(key)
        for key in (
            ["raw", "events"],
            ["marts", "cutoffs"],
            ["marts", "labels"],
            ["marts", "user_features"],
            ["predictions", "user_propensity"],
        )
    ]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*targets, *ASSET_CHECKS],
            selection=dg.AssetSelection.all_asset_checks(),
            instance=instance,
            tags={CUTOFF_TAG: CUTOFF.isoformat()},
            resources={"time_roles": TimeRolesResource()},
        )
    assert result.success
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def test_asset_checks_pass_on_healthy_data(project_home: Path) -> None:
    warehouse = project_home / "warehouse.duckdb"
    warehouse.parent.mkdir(parents=True)
    _write_warehouse(warehouse, broken=False)
    checks = _run_checks(warehouse)
    assert set(checks) == {
        "raw_events_fresh",
        "label_rate_in_band",
        "feature_drift_psi",
        "key_features_not_null",
        "score_distribution_sane",
        "no_stray_events",
    }
    failed = {name: check.description for name, check in checks.items() if not check.passed}
    assert failed == {}


def test_asset_checks_fail_on_data_made_to_break_them(project_home: Path) -> None:
    warehouse = project_home / "warehouse.duckdb"
    warehouse.parent.mkdir(parents=True)
    _write_warehouse(warehouse, broken=True)
    checks = _run_checks(warehouse)
    assert not any(check.passed for check in checks.values())
    messages = {name: check.description for name, check in checks.items()}
    assert "stale" in messages["raw_events_fresh"]
    assert "0.00%" in messages["label_rate_in_band"]
    assert "purchases missing" in messages["label_rate_in_band"]
    assert "9 feature(s) drifted" in messages["feature_drift_psi"]
    assert "events_7d (140 of 6,000 rows)" in messages["key_features_not_null"]
    assert "ranks nobody" in messages["score_distribution_sane"]
    assert "mean score 0.7000" in messages["score_distribution_sane"]
    assert "1 stray event(s)" in messages["no_stray_events"]
    assert "set the dbt var data_start" in messages["no_stray_events"]
    # Drift is a warning; the broken data itself fails as errors.
    assert checks["feature_drift_psi"].severity == dg.AssetCheckSeverity.WARN
    assert checks["no_stray_events"].severity == dg.AssetCheckSeverity.WARN
    assert checks["label_rate_in_band"].severity == dg.AssetCheckSeverity.ERROR


def test_warehouse_assets_and_checks_share_the_pool() -> None:
    from orchestration.definitions import defs
    from orchestration.defs.resources import WAREHOUSE_POOL

    job = defs().resolve_job_def("full_pipeline")
    pools = {node.name: node.definition.pool for node in job.nodes_in_topological_order}
    for name in (
        "raw__events",
        "warehouse_dbt_models",
        "propensity_scores",
        "raw__events_raw_events_fresh",
        "mart_checks",
        "predictions__user_propensity_score_distribution_sane",
    ):
        assert pools[name] == WAREHOUSE_POOL, name
    assert pools["landing__synthetic_events"] is None  # writes files, never the warehouse


# --- backfill of a date range --------------------------------------------------------------


@pytest.mark.slow(0.9)
def test_backfill_job_loads_a_date_range_and_rebuilds_its_cutoffs(project_home: Path) -> None:
    from orchestration.definitions import defs
    from orchestration.nightly import backfill_run_config

    shop = {"n_users": 400, "seed": 7, "start": "2025-09-01"}
    job = defs().resolve_job_def("backfill_days")
    warehouse = project_home / "warehouse.duckdb"
    span = (
        "select min(event_time)::date, max(event_time)::date, "
        "(select min(cutoff_time)::date from marts.cutoffs), "
        "(select max(cutoff_time)::date from marts.cutoffs) from raw.events"
    )
    with dg.instance_for_test() as instance:
        later = job.execute_in_process(
            run_config=backfill_run_config(date(2025, 9, 10), date(2025, 9, 14), shop),
            instance=instance,
        )
        assert later.success
        assert query(warehouse, span)[0] == (
            date(2025, 9, 10),
            date(2025, 9, 14),
            date(2025, 9, 11),
            date(2025, 9, 15),
        )
        # The earlier days arrive late: backfilled, and every cutoff is rebuilt.
        earlier = job.execute_in_process(
            run_config=backfill_run_config(date(2025, 9, 5), date(2025, 9, 9), shop),
            instance=instance,
        )
        assert earlier.success
    assert query(warehouse, span)[0] == (
        date(2025, 9, 5),
        date(2025, 9, 14),
        date(2025, 9, 6),
        date(2025, 9, 15),
    )
    # The landing folder remembers the shop, with the last simulated day after the later range.
    from orchestration.defs.ingest import read_shop

    assert read_shop(project_home / "landing" / "synthetic")["end_day"] == 14


# --- the instance ----------------------------------------------------------------------------


def test_prepare_dagster_home_writes_the_pool_limit_and_keeps_a_hand_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.instance import prepare_dagster_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = prepare_dagster_home(tmp_path / "dagster")
    assert os.environ["DAGSTER_HOME"] == str(home)
    written = yaml.safe_load((home / "dagster.yaml").read_text())
    assert written["concurrency"]["pools"] == {"granularity": "op", "default_limit": 1}
    with dg.DagsterInstance.get() as instance:
        info = instance.event_log_storage.get_concurrency_info("duckdb_warehouse")
        assert info.limit == 1

    mine = "concurrency:\n  pools:\n    default_limit: 2\n"
    (home / "dagster.yaml").write_text(mine)
    prepare_dagster_home(home)
    assert (home / "dagster.yaml").read_text() == mine


def test_nightly_cutoff_is_midnight_utc_of_the_new_day() -> None:
    from orchestration.defs.schedules import nightly_cutoff

    tick = datetime(2025, 10, 2, 2, 0, tzinfo=UTC)
    assert nightly_cutoff(tick) == datetime(2025, 10, 2)
    assert nightly_cutoff(tick, step=timedelta(hours=6)) == datetime(2025, 10, 2)


# --- dbt as of the run's cutoff --------------------------------------------------------------


def test_dbt_as_of_leaves_later_events_out_and_keeps_earlier_features(tmp_path: Path) -> None:
    from ml.data.ingest import ingest_paths
    from tests.conftest import run_dbt

    warehouse = tmp_path / "warehouse.duckdb"
    generate_events(tmp_path / "landing", SyntheticConfig(n_users=400, days=12, seed=9))
    ingest_paths(warehouse, [tmp_path / "landing"], "synthetic")
    window = {"lookback": "3 days", "horizon": "2 days"}
    features = "select * from marts.user_features where cutoff_time <= '2025-09-10' order by all"
    run_dbt(warehouse, "build", dbt_vars=window)
    without_as_of = query(warehouse, features)
    assert query(warehouse, "select max(cutoff_time) from marts.cutoffs")[0][0] == datetime(
        2025, 9, 13
    )

    run_dbt(warehouse, "build", dbt_vars={**window, "as_of": "2025-09-10 00:00:00"})
    (latest, last_event, scoring_cutoff) = query(
        warehouse,
        "select (select max(cutoff_time) from marts.cutoffs), "
        "(select max(event_time) from staging.stg_events), "
        "(select cutoff_time from marts.cutoffs where is_latest)",
    )[0]
    assert latest == scoring_cutoff == datetime(2025, 9, 10)
    assert last_event < datetime(2025, 9, 10)
    # Point in time: the features of every cutoff up to as_of are exactly those of the full build.
    assert query(warehouse, features) == without_as_of


def test_a_bad_file_is_refused_alone_and_the_run_says_so(project_home: Path) -> None:
    """A batch [good, semicolon-delimited, empty, good, all rows bad]: both good files are
    ingested, the empty one is recorded with its error in raw.ingested_files (and tried again by
    a later run), and the run fails with one clear line per bad file instead of a library
    traceback. Taobao's header is optional, so a semicolon file reads as one-field lines: every
    row is quarantined, which fails the run too."""
    from orchestration.definitions import defs

    landing = project_home / "files"
    landing.mkdir(parents=True)
    header = "user_id,item_id,category_id,behavior_type,timestamp"
    (landing / "1_good.csv").write_text(f"{header}\n1,10,100,pv,1511544070\n")
    (landing / "2_semicolons.csv").write_text(
        "user_id;item_id;category_id;behavior_type;timestamp\n1;10;100;pv;1511544071\n"
    )
    (landing / "3_empty.csv").write_text("")
    (landing / "4_good.csv").write_text(f"{header}\n2,20,200,buy,1511544072\n")
    (landing / "5_all_bad.csv").write_text(f"{header}\n3,30,300,pv,yesterday\n")
    job = defs().resolve_job_def("ingest_landing")
    config = {"ops": {"raw__events": {"config": {"source": "taobao", "paths": [str(landing)]}}}}

    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)

    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "3 of 5 file(s) not ingested" in message
    assert "2_semicolons.csv: every row was quarantined" in message
    assert "3_empty.csv: refused: " in message and "empty file" in message
    assert "5_all_bad.csv: every row was quarantined" in message
    warehouse = project_home / "warehouse.duckdb"
    assert query(warehouse, "select user_id from raw.events order by user_id") == [("1",), ("2",)]
    recorded = dict(
        query(
            warehouse, "select regexp_extract(source_file, '[^/]+$'), error from raw.ingested_files"
        )
    )
    assert recorded["1_good.csv"] is None and recorded["4_good.csv"] is None
    assert recorded["2_semicolons.csv"] is None
    assert "empty file" in recorded["3_empty.csv"]
    assert recorded["5_all_bad.csv"] is None  # read, and its row is in raw.quarantine
