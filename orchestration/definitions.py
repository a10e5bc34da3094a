"""The one Dagster code location: every asset, check, job and resource of the project.

Loaded lazily: the stage modules in orchestration/defs/ (listed in the order the data moves)
are imported only when Dagster asks for the definitions, so importing this module reads no file.
"""

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    from orchestration.defs import features, ingest, jobs, scoring, training
    from orchestration.defs.resources import build_resources

    return dg.Definitions(
        assets=[
            ingest.synthetic_event_files,
            ingest.raw_events,
            features.warehouse_dbt_models,
            training.xgb_study,
            training.resampled_train,
            training.xgb_model,
            training.champion,
            scoring.propensity_scores,
        ],
        jobs=[jobs.full_pipeline],
        resources=build_resources(),
    )
