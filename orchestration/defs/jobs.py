"""Jobs that a user launches from the UI or the command line, or that a schedule or sensor runs.

`full_pipeline` and `nightly_retraining` select by group and key rather than by listing assets, so
the training assets added later (another model family) join them without an edit here.
"""

import dagster as dg

from orchestration.recovery import die_with_parent

# The run's cutoff (ISO, naive UTC) as a run tag: the nightly schedule, the nightly demo and
# `make run` set it; the freshness check measures the newest raw event against it.
CUTOFF_TAG = "propensity/cutoff"

SYNTHETIC_EVENTS = dg.AssetKey(["landing", "synthetic_events"])
RAW_EVENTS = dg.AssetKey(["raw", "events"])

# Every step process ends with the server it forked from, which ends with the run's worker: a
# killed run leaves no orphan step still writing to a study or the warehouse.
die_with_parent()

# Steps of a multiprocess run fork from one server that imported the project once, instead of
# every step importing Dagster, dbt, MLflow and XGBoost anew. Measured on the test shop
# (full_pipeline, 2 busy cores): 249 s with spawned steps, 111 s with this.
PRELOAD_MODULES = [
    "orchestration.defs.ingest",
    "orchestration.defs.features",
    "orchestration.defs.training",
    "orchestration.defs.scoring",
    "orchestration.defs.checks",
    "orchestration.defs.reporting",
    "orchestration.defs.serving",
]


def multiprocess_execution() -> dict:
    """Run config for the multiprocess executor with a preloading forkserver."""
    start_method = {"forkserver": {"preload_modules": PRELOAD_MODULES}}
    return {"execution": {"config": {"multiprocess": {"start_method": start_method}}}}


# Every job's own default: a run launched from the UI, a schedule or a sensor gets the
# preloading forkserver without anyone pasting run config (the Launchpad shows it, and a run
# config may still choose `in_process`, as `make run` does).
PRELOADED = multiprocess_execution()

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    config=PRELOADED,
    selection=dg.AssetSelection.all(),
    description=(
        "Everything end to end: demo events, ingestion, the dbt feature warehouse, tuning, "
        "training, promotion and scoring."
    ),
)

nightly_retraining = dg.define_asset_job(
    "nightly_retraining",
    config=PRELOADED,
    # Everything but the demo generator: the night ingests what arrived in the landing folder.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(SYNTHETIC_EVENTS),
    description=(
        "What the 02:00 schedule runs: ingest new files from the landing folder, rebuild the "
        "warehouse as of the new day's cutoff, tune (a study per data window), train, gate the "
        "champion and score the new day."
    ),
)

ingest_landing = dg.define_asset_job(
    "ingest_landing",
    config=PRELOADED,
    selection=dg.AssetSelection.assets(RAW_EVENTS),
    description="What the landing sensor runs: ingest the new files it found into raw.events.",
)

backfill_days = dg.define_asset_job(
    "backfill_days",
    config=PRELOADED,
    # Unpartitioned on purpose (see docs/operations.md, backfilling): the day range is in the
    # run config of landing/synthetic_events (start_day, days) or in the files given to raw/events,
    # and dbt rebuilds every cutoff, so the range's features, labels and sequences are rebuilt.
    selection=dg.AssetSelection.assets(SYNTHETIC_EVENTS, RAW_EVENTS)
    | dg.AssetSelection.groups("features"),
    description=(
        "Load a range of days (simulated, or files named in raw/events' paths) and rebuild the "
        "warehouse for every cutoff. `python -m orchestration.nightly backfill FIRST LAST`."
    ),
)


def in_process_execution() -> dict:
    """Run config for the in-process executor: every step in the calling process, one after
    the other, with the project imported once. `make run` uses it: its steps run one at a
    time anyway (the warehouse and training pools hold one each), and a step process costs
    2-4 s of start-up on 2 cores."""
    return {"execution": {"config": {"in_process": {}}}}


def _job(name: str) -> dg.JobDefinition:
    from orchestration.definitions import defs

    return defs().resolve_job_def(name)


# Module-level factories for dg.reconstructable: execute_job on the multiprocess executor needs
# to rebuild the job in every step's process.
def full_pipeline_job() -> dg.JobDefinition:
    return _job("full_pipeline")


def nightly_retraining_job() -> dg.JobDefinition:
    return _job("nightly_retraining")


def backfill_days_job() -> dg.JobDefinition:
    return _job("backfill_days")


def ingest_landing_job() -> dg.JobDefinition:
    return _job("ingest_landing")
