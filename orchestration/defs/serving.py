"""`serving/snapshot`: what the scoring service reads, published once a run has scored.

The service never opens the live warehouse: after scoring, this asset compiles the dbt models
for the `serving` target with the vars the warehouse was built with and writes one read-only
snapshot file (ml.serving.snapshot) under $PROPENSITY_HOME/serving/, then points current.json
at it.
"""

import dagster as dg

from ml import settings
from ml.serving.snapshot import DEFAULT_ANSWERABLE_CUTOFFS, publish_snapshot
from ml.serving.sql import compile_serving_models
from orchestration.defs.features import FeatureWindowConfig
from orchestration.defs.reporting import CHAMPION_KEY, CUTOFFS, INTERVENTIONS
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.defs.schedules import DBT_OP
from orchestration.defs.scoring import NEXT_CATEGORIES

SNAPSHOT_KEY = dg.AssetKey(["serving", "snapshot"])
SNAPSHOT_FOLDER = "serving"
# The vars that shape features; as_of and data_end only bound the nightly build's own events
# and label windows (the service sets its cutoff per request).
SERVING_VARS = ("cutoff_step", "lookback", "horizon", "sequence_length", "timezone", "data_start")


class SnapshotConfig(dg.Config):
    """answerable_cutoffs: how many of the newest cutoffs the snapshot lists for "as of"
    requests (any moment after the shop's first day can be asked "at")."""

    answerable_cutoffs: int = DEFAULT_ANSWERABLE_CUTOFFS


def warehouse_dbt_vars(instance: dg.DagsterInstance) -> dict[str, str | int]:
    """The feature vars of the run that last built marts.cutoffs (its dbt op's config over
    the defaults), so the service computes features the way the warehouse did."""
    values = FeatureWindowConfig().model_dump()
    event = instance.get_latest_materialization_event(CUTOFFS)
    if event is not None and event.run_id:
        run = instance.get_run_by_id(event.run_id)
        if run is not None:
            values.update(run.run_config.get("ops", {}).get(DBT_OP, {}).get("config", {}))
    return {name: values[name] for name in SERVING_VARS if values.get(name, "") != ""}


@dg.asset(
    key=SNAPSHOT_KEY,
    group_name="serving",
    deps=[INTERVENTIONS, NEXT_CATEGORIES, CHAMPION_KEY, CUTOFFS],
    pool=WAREHOUSE_POOL,  # reads the warehouse (read-only): no writer may hold it meanwhile
    description=(
        "The scoring service's read-only snapshot: every shopper's events under pseudonymous "
        "keys, the category vocabulary, the grid's span and the dbt models compiled for the "
        "serving target with this warehouse's vars. Published under $PROPENSITY_HOME/serving/ "
        "(current.json names the newest) after scoring."
    ),
)
def serving_snapshot(
    context: dg.AssetExecutionContext, config: SnapshotConfig
) -> dg.MaterializeResult:
    dbt_vars = warehouse_dbt_vars(context.instance)
    folder = settings.local_dir() / SNAPSHOT_FOLDER
    statements = compile_serving_models(dbt_vars, target_path=folder / "dbt")
    snapshot = publish_snapshot(
        settings.warehouse_path(),
        folder,
        dbt_vars,
        statements,
        context.run_id,
        config.answerable_cutoffs,
    )
    context.log.info(
        f"Published {snapshot.path.name}: {snapshot.events:,} events of {snapshot.shoppers:,} "
        f"shoppers, latest cutoff {snapshot.latest_cutoff}"
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(snapshot.path)),
            "events": snapshot.events,
            "shoppers": snapshot.shoppers,
            "latest_cutoff": snapshot.latest_cutoff.isoformat(),
            "dbt_vars": dg.MetadataValue.json(dbt_vars),
            "statements": len(statements),
        }
    )
