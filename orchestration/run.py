"""`make run`: the full pipeline on the embedded default, recorded in the project's Dagster
instance (so the run shows up in `dagster dev`), then a short summary of what it left where.

It runs on the in-process executor: the steps run one after the other in this process, which
imported the project once. A run launched from the UI or the schedule uses the multiprocess
executor instead; there too the warehouse and training pools (limit 1 each,
orchestration/instance.py) let one step at a time hold the warehouse or the CPUs."""

import sys
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
from mlflow.entities.model_registry import ModelVersion

from ml import settings
from ml.data.pseudonyms import pseudonym_mode
from ml.data.synthetic import SyntheticConfig
from ml.families import all_families
from ml.next_category.evaluation import CATEGORY_MODEL_NAME
from ml.registry import CHAMPION, MODEL_NAME, newest_versions_by_family, trained_champion
from orchestration.defs.ingest import SyntheticEventsConfig
from orchestration.defs.jobs import CUTOFF_TAG, full_pipeline_job, in_process_execution
from orchestration.defs.progress import PROGRESS_LOGGING, quiet_libraries
from orchestration.defs.reporting import (
    CHAMPION_KEY,
    NO_MODEL,
    REPORT_KEY,
    latest_metadata,
    metric_with_interval,
)
from orchestration.defs.schedules import DBT_OP, cutoff_text
from orchestration.defs.training import NEXT_CATEGORY_KEY
from orchestration.instance import prepare_dagster_home
from orchestration.recovery import fail_dead_runs

WAREHOUSE_TABLES = (
    "raw.events",
    "raw.quarantine",
    "marts.cutoffs",
    "marts.user_features",
    "marts.labels",
    "marts.user_sequences",
    "predictions.user_propensity",
    "predictions.intervention_targets",
    "predictions.next_categories",
)


def warehouse_summary() -> list[str]:
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as con:

        def scalar(sql: str) -> float:
            return con.sql(sql).fetchall()[0][0]

        built = {
            f"{schema}.{name}"
            for schema, name in con.sql(
                "select table_schema, table_name from information_schema.tables"
            ).fetchall()
        }
        lines = [
            f"  {table:<34} {scalar(f'select count(*) from {table}'):>10,} rows"
            if table in built
            else f"  {table:<34} {'not built':>15}"
            for table in WAREHOUSE_TABLES
        ]
        rate = scalar("select avg(purchased::int) from marts.labels where horizon_complete")
    lines.append(f"  purchase rate within the horizon (complete windows): {rate:.2%}")
    return lines


def model_summary(instance: dg.DagsterInstance) -> list[str]:
    """The champion; each family's newest version with its promotion-window PR-AUC (95 %
    interval, users resampled), calibrated mean score beside the observed buyer rate and gate
    decision; the paired difference between the families; any study that hit its timeout."""
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
    champion = trained_champion(client)
    if champion is None:
        return [f"  {NO_MODEL}"]
    lines = [
        f"  {MODEL_NAME}@{CHAMPION} = version {champion.version} "
        f"({champion.tags.get('family', '?')})"
    ]
    newest = newest_versions_by_family(client)
    for family, number in sorted(newest.items(), key=lambda kv: int(kv[1])):
        version: ModelVersion = client.get_model_version(MODEL_NAME, number)
        metrics = client.get_run(version.run_id).data.metrics
        pr_auc = metric_with_interval(metrics, "promotion_pr_auc")
        lines.append(
            f"  {family} v{number}: promotion-window PR-AUC {pr_auc}"
            f"; mean score {metrics.get('promotion_mean_score', float('nan')):.4f} vs buyer rate "
            f"{metrics.get('promotion_buyer_rate', float('nan')):.4f}"
        )
        lines.append(
            f"    gate: {version.tags.get('promotion_decision', 'n/a')} "
            f"({version.tags.get('promotion_reason', 'n/a')})"
        )
    baselines = client.get_run(client.get_model_version(MODEL_NAME, champion.version).run_id)
    shown = [
        f"{name} {metric_with_interval(baselines.data.metrics, f'promotion_{name}_pr_auc')}"
        for name in ("logistic_regression", "recency_frequency", "base_rate")
        if f"promotion_{name}_pr_auc" in baselines.data.metrics
    ]
    if shown:
        lines.append("  baselines (promotion-window PR-AUC): " + ", ".join(shown))
    gate = latest_metadata(instance, CHAMPION_KEY)
    for row in gate.get("family_differences", []):
        lines.append(
            f"  {row['comparison']}: PR-AUC difference {row['pr_auc_difference']:+.4f} "
            f"[{row['low']:+.4f}, {row['high']:+.4f}]: {row['reading']}"
        )
    if gate:
        lines.append(
            f"  promotion window {gate.get('promotion_window')}: {gate.get('promotion_rows'):,} "
            f"rows, {gate.get('promotion_buyers'):,} buyers, {gate.get('promotion_users'):,} users"
        )
    for family in all_families():
        study = f"{family.asset_prefix}_study"
        metadata = latest_metadata(instance, dg.AssetKey(["training", study]))
        if metadata.get("timed_out"):
            lines.append(
                f"  WARNING: {study} hit its timeout_s safety net after "
                f"{metadata.get('trials_this_run')} of {metadata.get('trials_requested')} trials"
            )
    return lines


def next_category_summary(instance: dg.DagsterInstance) -> list[str]:
    """The next-category model against its baselines (Recall@10, NDCG@10, MRR with intervals),
    its gate decision, and the actions on the intervention list."""
    metadata = latest_metadata(instance, NEXT_CATEGORY_KEY)
    if not metadata:
        return []
    if "skipped" in metadata:
        lines = [f"  {CATEGORY_MODEL_NAME}: skipped ({metadata['skipped']})"]
    else:
        lines = [
            f"  {CATEGORY_MODEL_NAME} v{metadata['model_version']}: "
            f"{metadata['promotion_rows_with_targets']:,} promotion rows with a category in "
            "their window (95 % intervals, users resampled)"
        ]
        comparison = str(metadata.get("comparison", ""))
        table = [line for line in comparison.splitlines() if line.startswith("|")]
        lines += [f"    {line}" for line in table]
        lines.append(f"    gate: {metadata['decision']}")
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as con:
        actions = con.execute(
            "select action, count(*) from predictions.intervention_targets "
            "where cutoff_time = (select max(cutoff_time) from predictions.intervention_targets) "
            "group by action order by count(*) desc"
        ).fetchall()
        source = con.execute(
            "select any_value(category_source) from predictions.intervention_targets "
            "where cutoff_time = (select max(cutoff_time) from predictions.intervention_targets)"
        ).fetchall()[0][0]
    shown = ", ".join(f"{action} {count}" for action, count in actions)
    lines.append(f"  intervention list actions: {shown} (categories from {source})")
    return lines


def demo_cutoff() -> datetime:
    """The demo shop's scoring cutoff: midnight after its last simulated day (the defaults of
    landing/synthetic_events). Tagged on the run so the freshness check measures against it."""
    asset = SyntheticEventsConfig()
    start = datetime.combine(SyntheticConfig().start, datetime.min.time())
    return start + timedelta(days=asset.start_day + asset.days)


def main() -> int:
    quiet_libraries()
    home = prepare_dagster_home()  # DAGSTER_HOME with the warehouse pool limit
    with dg.DagsterInstance.get() as instance:
        fail_dead_runs(instance)  # a killed earlier run must not hold the pools
        result = dg.execute_job(
            dg.reconstructable(full_pipeline_job),
            instance=instance,
            # dbt as of the demo's cutoff, as the nightly schedule does: the data is complete up
            # to it, so the label windows ending there are complete.
            run_config={
                "ops": {DBT_OP: {"config": {"as_of": cutoff_text(demo_cutoff())}}},
                **in_process_execution(),
                **PROGRESS_LOGGING,
            },
            tags={CUTOFF_TAG: demo_cutoff().isoformat()},
            raise_on_error=False,
        )
        if not result.success:
            print(f"full_pipeline failed (run {result.run_id}); see `make ui` for the logs.")
            return 1
        print(f"\nfull_pipeline succeeded (run {result.run_id})")
        print("\n".join(run_summary(instance, home)))
    return 0


def run_summary(instance: dg.DagsterInstance, home: Path) -> list[str]:
    """What a run left where: the warehouse's tables, the models with their intervals and gate
    decisions, the next-category model and the stores (`make run` and `propensity summary`)."""
    return [
        f"Warehouse: {settings.warehouse_path()}",
        f"  pseudonyms: {pseudonym_mode()}",
        *warehouse_summary(),
        f"MLflow: {settings.without_password(settings.mlflow_tracking_uri())} "
        f"(artifacts in {settings.mlflow_artifacts_dir()})",
        *model_summary(instance),
        *next_category_summary(instance),
        f"Report: {latest_metadata(instance, REPORT_KEY).get('path', 'none yet')}",
        f"Optuna storage: {settings.without_password(settings.optuna_storage())}",
        f"Dagster instance: {home}  (browse all of it with `make ui`)",
    ]


if __name__ == "__main__":
    sys.exit(main())
