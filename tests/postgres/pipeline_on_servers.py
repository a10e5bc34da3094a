"""Run by test_servers.py in a process of its own, as a team's scheduler process would: the
project's Dagster instance (DAGSTER_HOME, its storage in PostgreSQL by
PROPENSITY_DAGSTER_POSTGRES_URL), MLflow and Optuna from the environment. Materializes the
ingestion and feature assets and a short XGBoost training up to the champion, the study on two
tuning workers; prints the run's id and outcome as JSON."""

import json
import os
import sys
from datetime import datetime

import dagster as dg

from orchestration.definitions import defs
from orchestration.defs.jobs import CUTOFF_TAG, full_pipeline_job, in_process_execution
from orchestration.instance import prepare_dagster_home

SHOP = {"n_users": 600, "days": 30, "seed": 5}
SHOP_CUTOFF = datetime(2025, 10, 1)
TRAINING = [
    ["training", "time_split"],
    ["training", "xgb_study"],
    ["training", "xgb_model"],
    ["training", "champion"],
]


def main() -> int:
    prepare_dagster_home()
    selection = dg.AssetSelection.groups("ingest", "features") | dg.AssetSelection.assets(
        *[dg.AssetKey(key) for key in TRAINING]
    )
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(full_pipeline_job),
            instance=instance,
            run_config={
                "ops": {
                    "landing__synthetic_events": {"config": SHOP},
                    "training__xgb_study": {"config": {"n_trials": 4, "n_workers": 2}},
                },
                **in_process_execution(),
            },
            tags={CUTOFF_TAG: SHOP_CUTOFF.isoformat()},
            asset_selection=sorted(selection.resolve(defs().resolve_asset_graph())),
            raise_on_error=False,
        )
        outcome = {"run_id": result.run_id, "success": result.success, "pid": os.getpid()}
        print(json.dumps(outcome))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
