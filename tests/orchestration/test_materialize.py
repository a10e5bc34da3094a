"""The whole pipeline on a real Dagster instance, a temporary warehouse, a real MLflow store and
registry and a real Optuna journal: ingestion, every dbt model with its tests as asset checks,
tuning, training, promotion and scoring, on a small shop, on the CPU."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest

from tests.conftest import query

SMALL_SHOP = {"n_users": 1500, "days": 30, "seed": 3}
FULL_RUN_CONFIG = {
    "ops": {
        "landing__synthetic_events": {"config": SMALL_SHOP},
        "training__xgb_study": {"config": {"n_trials": 4}},
        "propensity_scores": {"config": {"top_k": 25}},
    }
}


@pytest.fixture
def project_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "local"))
    for variable in (
        "PROPENSITY_WAREHOUSE",
        "PROPENSITY_LANDING_DIR",
        "PROPENSITY_MLFLOW_ARTIFACTS",
        "PROPENSITY_OPTUNA_STORAGE",
        "PROPENSITY_TRAINING_DIR",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "local"


def test_full_pipeline_from_events_to_scores(project_home: Path) -> None:
    from orchestration.definitions import defs

    definitions = defs()
    job = definitions.resolve_job_def("full_pipeline")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=FULL_RUN_CONFIG, instance=instance)
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

        def metadata_of(*key: str) -> dict:
            event = instance.get_latest_materialization_event(dg.AssetKey(list(key)))
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}

        assert metadata_of("training", "xgb_study")["trials_this_run"] == 4
        resampled = metadata_of("training", "resampled_train")
        assert resampled["train_positives_before"] > 0
        model = metadata_of("training", "xgb_model")
        assert model["model_version"] == "1" and 0 < model["test_pr_auc"] <= 1
        assert "logistic_regression" in model["comparison"]
        promotion = metadata_of("training", "champion")
        assert promotion["promoted"] is True and promotion["champion_version_before"] == "none"

    warehouse = project_home / "warehouse.duckdb"
    (n_features, n_labels, n_sequences, n_cutoffs) = query(
        warehouse,
        "select (select count(*) from marts.user_features), (select count(*) from marts.labels),"
        " (select count(*) from marts.user_sequences), (select count(*) from marts.cutoffs)",
    )[0]
    assert n_features > 0 and n_features == n_labels == n_sequences
    assert n_cutoffs == 30

    client = mlflow.MlflowClient(f"sqlite:///{project_home / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("purchase-propensity", "champion").version) == "1"
    # Scored users are exactly the users active at the latest cutoff.
    scored, active = query(
        warehouse,
        """
        select
            (select list(user_id order by user_id) from predictions.user_propensity),
            (select list(f.user_id order by f.user_id) from marts.user_features f
             join marts.cutoffs c using (cutoff_time) where c.is_latest)
        """,
    )[0]
    assert scored == active and len(scored) > 100
    (n_targets, n_with_drivers) = query(
        warehouse,
        "select count(*), count(driver_1) from predictions.intervention_targets",
    )[0]
    assert n_targets == 25 and n_with_drivers > 0


def test_materialize_ingestion_and_dbt_assets_then_reingest_nothing(project_home: Path) -> None:
    from orchestration.defs import features, ingest
    from orchestration.defs.resources import build_resources

    assets = [ingest.synthetic_event_files, ingest.raw_events, features.warehouse_dbt_models]
    run_config = {"ops": {"landing__synthetic_events": {"config": SMALL_SHOP}}}
    with dg.instance_for_test() as instance:
        first = dg.materialize(
            assets, resources=build_resources(), run_config=run_config, instance=instance
        )
        assert first.success
        warehouse = project_home / "warehouse.duckdb"
        (n_raw, n_features) = query(
            warehouse,
            "select (select count(*) from raw.events), (select count(*) from marts.user_features)",
        )[0]
        assert n_raw > 0 and n_features > 0

        second = dg.materialize(
            assets[:2], resources=build_resources(), run_config=run_config, instance=instance
        )
        assert second.success
        raw = instance.get_latest_materialization_event(dg.AssetKey(["raw", "events"]))
        metadata = {k: v.value for k, v in raw.asset_materialization.metadata.items()}
    assert metadata["accepted"] == 0 and metadata["files_ingested"] == 0
    assert metadata["files_skipped"] > 0
    assert query(warehouse, "select count(*) from raw.events")[0][0] == n_raw
