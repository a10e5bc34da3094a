"""The code location loads the way `dagster dev` loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from ml.settings import PROJECT_ROOT


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    dagster_cli = Path(sys.executable).parent / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(dagster_cli), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_assets_are_grouped_by_stage_and_dbt_tests_are_checks() -> None:
    from orchestration.definitions import defs

    graph = defs().resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups["raw/events"] == groups["landing/synthetic_events"] == "ingest"
    assert groups["marts/user_features"] == groups["staging/stg_events"] == "features"
    # raw/events feeds the dbt source, so the lineage runs from ingestion to the marts.
    upstream = graph.get(dg.AssetKey(["staging", "stg_events"])).parent_keys
    assert dg.AssetKey(["raw", "events"]) in upstream
    check_keys = {key.asset_key.to_user_string() for key in graph.asset_check_keys}
    assert {"marts/user_features", "marts/labels", "marts/user_sequences"} <= check_keys


def test_the_gpu_run_config_example_is_valid_for_the_training_jobs() -> None:
    """docs/examples/gpu_training.yaml names real ops and config keys of both jobs that train."""
    import yaml

    from orchestration.defs.jobs import full_pipeline_job, nightly_retraining_job

    config = yaml.safe_load((PROJECT_ROOT / "docs/examples/gpu_training.yaml").read_text())
    for job in (full_pipeline_job(), nightly_retraining_job()):
        result = dg.validate_run_config(job, config)
        assert result["ops"]["training__seq_study"]["config"]["max_train_rows"] == 0
        assert result["ops"]["training__behaviour_encoder"]["config"]["batch_size"] == 8192


def test_every_job_runs_on_the_preloading_forkserver_unless_told_otherwise() -> None:
    """UI, schedule and sensor runs get the preloading executor from the jobs themselves; a
    run config can still ask for in-process execution (`make run`, `propensity run`)."""
    from orchestration.defs import jobs

    for make_job in (
        jobs.full_pipeline_job,
        jobs.nightly_retraining_job,
        jobs.ingest_landing_job,
        jobs.backfill_days_job,
    ):
        job = make_job()
        executor = dg.validate_run_config(job, {})["execution"]["multi_or_in_process_executor"]
        start = executor["multiprocess"]["start_method"]["forkserver"]
        assert start["preload_modules"] == jobs.PRELOAD_MODULES
        chosen = dg.validate_run_config(job, jobs.in_process_execution())["execution"]
        assert "in_process" in chosen["multi_or_in_process_executor"]


def test_every_dbt_check_says_what_it_asserts() -> None:
    """Each dbt test is a check with a description (generated from its kind and arguments
    when its YAML gives none), the raw.events source tests included."""
    from orchestration.defs.features import describe_dbt_test, warehouse_dbt_models

    specs = list(warehouse_dbt_models.check_specs)
    assert len(specs) >= 150
    assert all(spec.description for spec in specs)
    on_raw = [spec for spec in specs if spec.asset_key == dg.AssetKey(["raw", "events"])]
    assert on_raw and all("(dbt test)" in spec.description for spec in on_raw)
    node = {
        "name": "accepted_values_x",
        "test_metadata": {
            "name": "accepted_values",
            "kwargs": {"column_name": "has_open_cart", "values": [0, 1]},
        },
    }
    assert describe_dbt_test(node) == "has_open_cart only takes the values 0, 1 (dbt test)"
    relation = {
        "test_metadata": {
            "name": "relationships",
            "kwargs": {"column_name": "code", "to": "ref('event_types')", "field": "event_code"},
        }
    }
    assert describe_dbt_test(relation) == "every code exists in event_types.event_code (dbt test)"
