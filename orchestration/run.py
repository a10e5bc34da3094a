"""`make run`: the full pipeline on the embedded default, recorded in the project's Dagster
instance (so the run shows up in `dagster dev`), then a short summary of what it left where.

It runs on the multiprocess executor, like a run launched from the UI: steps that do not touch
the warehouse run side by side, and the warehouse pool (limit 1, orchestration/instance.py)
serializes the ones that do."""

import sys
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import mlflow
from mlflow.entities.model_registry import ModelVersion

from ml import settings
from ml.data.synthetic import SyntheticConfig
from ml.registry import CHAMPION, MODEL_NAME
from orchestration.defs.ingest import SyntheticEventsConfig
from orchestration.defs.jobs import CUTOFF_TAG, full_pipeline_job, multiprocess_execution
from orchestration.instance import prepare_dagster_home

WAREHOUSE_TABLES = (
    "raw.events",
    "raw.quarantine",
    "marts.cutoffs",
    "marts.user_features",
    "marts.labels",
    "marts.user_sequences",
    "predictions.user_propensity",
    "predictions.intervention_targets",
)


def warehouse_summary() -> list[str]:
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as con:

        def scalar(sql: str) -> float:
            return con.sql(sql).fetchall()[0][0]

        lines = [
            f"  {table:<34} {scalar(f'select count(*) from {table}'):>10,} rows"
            for table in WAREHOUSE_TABLES
        ]
        rate = scalar("select avg(purchased::int) from marts.labels where horizon_complete")
    lines.append(f"  purchase rate within the horizon (complete windows): {rate:.2%}")
    return lines


def model_summary() -> list[str]:
    """The champion, the newest version of each family with its promotion decision, and the
    test PR-AUC of both families and the baselines on the test window they share."""
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    newest_by_family: dict[str, ModelVersion] = {}
    for version in client.search_model_versions(f"name='{MODEL_NAME}'"):
        family = version.tags.get("family", "?")
        if family not in newest_by_family or int(version.version) > int(
            newest_by_family[family].version
        ):
            newest_by_family[family] = version
    lines = [
        f"  {MODEL_NAME}@{CHAMPION} = version {champion.version} "
        f"({champion.tags.get('family', '?')})"
    ]
    test_pr_auc: dict[str, float] = {}
    for family, version in sorted(newest_by_family.items(), key=lambda kv: int(kv[1].version)):
        lines.append(
            f"  newest {family} version {version.version}: "
            f"{version.tags.get('promotion_decision', 'n/a')} "
            f"({version.tags.get('promotion_reason', 'n/a')})"
        )
        for key, value in client.get_run(version.run_id).data.metrics.items():
            if key.startswith("test_") and key.endswith("_pr_auc"):
                test_pr_auc[key.removeprefix("test_").removesuffix("_pr_auc")] = value
    lines.append(
        "  test PR-AUC: "
        + ", ".join(
            f"{name} {value:.3f}"
            for name, value in sorted(test_pr_auc.items(), key=lambda kv: -kv[1])
        )
    )
    return lines


def demo_cutoff() -> datetime:
    """The demo shop's scoring cutoff: midnight after its last simulated day (the defaults of
    landing/synthetic_events). Tagged on the run so the freshness check measures against it."""
    asset = SyntheticEventsConfig()
    start = datetime.combine(SyntheticConfig().start, datetime.min.time())
    return start + timedelta(days=asset.start_day + asset.days)


def main() -> int:
    home = prepare_dagster_home()  # DAGSTER_HOME with the warehouse pool limit
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(full_pipeline_job),
            instance=instance,
            run_config=multiprocess_execution(),
            tags={CUTOFF_TAG: demo_cutoff().isoformat()},
            raise_on_error=False,
        )
    if not result.success:
        print(f"full_pipeline failed (run {result.run_id}); see `make ui` for the logs.")
        return 1
    print(f"\nfull_pipeline succeeded (run {result.run_id})")
    print(f"Warehouse: {settings.warehouse_path()}")
    print("\n".join(warehouse_summary()))
    print(
        f"MLflow: {settings.mlflow_tracking_uri()} (artifacts in {settings.mlflow_artifacts_dir()})"
    )
    print("\n".join(model_summary()))
    print(f"Optuna storage: {settings.optuna_storage()}")
    print(f"Dagster instance: {home}  (browse all of it with `make ui`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
