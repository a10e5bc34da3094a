"""The Dagster assets on a real instance and a temporary warehouse: ingestion, every dbt model,
and the dbt tests surfaced as asset checks."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import query

SMALL_SHOP = {"n_users": 600, "days": 20, "seed": 3}


@pytest.fixture
def project_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "local"))
    monkeypatch.delenv("PROPENSITY_WAREHOUSE", raising=False)
    monkeypatch.delenv("PROPENSITY_LANDING_DIR", raising=False)
    return tmp_path / "local"


def test_full_pipeline_materializes_ingestion_and_dbt_assets(project_home: Path) -> None:
    from orchestration.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def("full_pipeline")
    run_config = {"ops": {"landing__synthetic_events": {"config": SMALL_SHOP}}}
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=run_config, instance=instance)
        assert result.success

        materialized = {
            event.asset_key.to_user_string()
            for event in result.get_asset_materialization_events()
            for event in [event.event_specific_data.materialization]
        }
        assert {"raw/events", "marts/user_features", "marts/labels"} <= materialized
        assert {"marts/cutoffs", "marts/user_sequences", "staging/stg_events"} <= materialized

        raw = instance.get_latest_materialization_event(dg.AssetKey(["raw", "events"]))
        metadata = {k: v.value for k, v in raw.asset_materialization.metadata.items()}
        assert metadata["rows_read"] == metadata["accepted"] > 0
        assert metadata["reconciles"] is True

        checks = result.get_asset_check_evaluations()
        assert len(checks) > 50, "dbt data tests should surface as asset checks"
        assert all(check.passed for check in checks)
        assert any(check.asset_key == dg.AssetKey(["marts", "user_features"]) for check in checks)

    warehouse = project_home / "warehouse.duckdb"
    (n_features, n_labels, n_sequences, n_cutoffs) = query(
        warehouse,
        "select (select count(*) from marts.user_features), (select count(*) from marts.labels),"
        " (select count(*) from marts.user_sequences), (select count(*) from marts.cutoffs)",
    )[0]
    assert n_features > 0 and n_features == n_labels == n_sequences
    assert n_cutoffs == 20


def test_a_second_run_ingests_nothing_new(project_home: Path) -> None:
    from orchestration.definitions import defs

    job = defs().resolve_job_def("full_pipeline")
    run_config = {"ops": {"landing__synthetic_events": {"config": SMALL_SHOP}}}
    selection = ["landing/synthetic_events", "raw/events"]
    with dg.instance_for_test() as instance:
        for _ in range(2):
            result = job.execute_in_process(
                run_config=run_config,
                instance=instance,
                asset_selection=[dg.AssetKey.from_user_string(key) for key in selection],
            )
            assert result.success
        raw = instance.get_latest_materialization_event(dg.AssetKey(["raw", "events"]))
        metadata = {k: v.value for k, v in raw.asset_materialization.metadata.items()}
    assert metadata["accepted"] == 0 and metadata["files_ingested"] == 0
    assert metadata["files_skipped"] > 0
    (n_raw,) = query(project_home / "warehouse.duckdb", "select count(*) from raw.events")[0]
    assert n_raw > 0
