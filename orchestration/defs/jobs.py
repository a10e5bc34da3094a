"""Jobs that a user launches from the UI or the command line."""

import dagster as dg

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all(),
    description=(
        "Everything end to end: demo events, ingestion, the dbt feature warehouse, tuning, "
        "training, promotion and scoring."
    ),
)
