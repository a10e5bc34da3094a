"""The one Dagster code location: every asset, check, job, schedule, sensor and resource.

Loaded lazily: the stage modules in orchestration/defs/ (listed in the order the data moves)
are imported only when Dagster asks for the definitions, so importing this module reads no file.
Environment settings (schedule timezone, automation on or off) are read here, at load time.
"""

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    from orchestration.defs import (
        checks,
        features,
        ingest,
        jobs,
        reporting,
        scoring,
        sensors,
        serving,
        training,
    )
    from orchestration.defs.progress import LOGGERS
    from orchestration.defs.resources import build_resources
    from orchestration.defs.schedules import build_nightly_schedule

    return dg.Definitions(
        assets=[
            ingest.synthetic_event_files,
            ingest.raw_events,
            features.warehouse_dbt_models,
            training.time_split,
            training.behaviour_encoder,
            *training.STUDY_ASSETS.values(),
            *training.CANDIDATE_MODELS,
            training.champion,
            training.next_category_model,
            scoring.propensity_scores,
            scoring.served_performance_monitor,
            reporting.run_report,
            serving.serving_snapshot,
        ],
        asset_checks=checks.ASSET_CHECKS,
        jobs=[jobs.full_pipeline, jobs.nightly_retraining, jobs.ingest_landing, jobs.backfill_days],
        schedules=[build_nightly_schedule()],
        sensors=[sensors.build_landing_sensor()],
        resources=build_resources(),
        # Dagster's console logger by default; the progress view when a run config asks.
        loggers=LOGGERS,
    )
