"""Ingestion: event files (the synthetic demo shop or a real export) into raw.events."""

import json
from datetime import date, datetime
from pathlib import Path

import dagster as dg

from ml import settings
from ml.data.ingest import DEFAULT_PLAUSIBILITY, SOURCES, Plausibility, ingest_paths
from ml.data.synthetic import SyntheticConfig, generate_events
from orchestration.defs.resources import WAREHOUSE_POOL

# Written beside the demo shop's files, so that the nightly demo and a backfill simulate more
# days of the same shop (same users, same seed) without being told again. Not a *.parquet, so
# neither ingestion nor the landing sensor reads it.
SHOP_FILE = "shop.json"


def read_shop(folder: Path) -> dict | None:
    """The demo shop's identity and the last simulated day, or None before the first run."""
    path = folder / SHOP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def record_shop(folder: Path, config: SyntheticConfig) -> dict:
    """Remembers the shop and extends its last simulated day (end_day) to cover `config`."""
    before = read_shop(folder) or {}
    same_shop = before.get("n_users") == config.n_users and before.get("seed") == config.seed
    shop = {
        "n_users": config.n_users,
        "seed": config.seed,
        "start": config.start.isoformat(),
        "end_day": max(config.end_day, before.get("end_day", 0) if same_shop else 0),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SHOP_FILE).write_text(json.dumps(shop, indent=1))
    return shop


def shop_day(shop: dict, day: int) -> date:
    """The calendar date of a day index of the simulated shop."""
    return date.fromordinal(date.fromisoformat(shop["start"]).toordinal() + day)


class SyntheticEventsConfig(dg.Config):
    """The simulated shop: same seed, same events. 60 days, so that with the 30-day lookback
    every cutoff the training roles use sees a complete history, as the scored cutoff does."""

    n_users: int = 20_000
    days: int = 60
    start_day: int = 0
    seed: int = 42


class IngestConfig(dg.Config):
    """Which source format to read, and from where (default: the landing folder of that source).

    Values past the plausibility bounds are quarantined with a reason (ml.data.ingest
    .Plausibility): events before earliest_event_time (an ISO date), prices above max_price,
    text fields longer than max_field_length characters.
    """

    source: str = "synthetic"
    paths: list[str] = []
    earliest_event_time: str = f"{DEFAULT_PLAUSIBILITY.earliest_event_time:%Y-%m-%d}"
    max_price: float = DEFAULT_PLAUSIBILITY.max_price
    max_field_length: int = DEFAULT_PLAUSIBILITY.max_field_length


@dg.asset(
    key=["landing", "synthetic_events"],
    group_name="ingest",
    description="Demo event files from the seeded shop simulator, written to the landing folder.",
)
def synthetic_event_files(
    context: dg.AssetExecutionContext, config: SyntheticEventsConfig
) -> dg.MaterializeResult:
    out_dir = settings.landing_dir() / "synthetic"
    shop_config = SyntheticConfig(
        n_users=config.n_users, days=config.days, start_day=config.start_day, seed=config.seed
    )
    summary = generate_events(out_dir, shop_config)
    record_shop(out_dir, shop_config)
    context.log.info(f"Generated {summary.n_events:,} events in {len(summary.files)} files")
    return dg.MaterializeResult(
        metadata={
            "events": summary.n_events,
            "users": summary.n_users,
            "files": len(summary.files),
            "first_event": str(summary.first_event),
            "last_event": str(summary.last_event),
            "folder": dg.MetadataValue.path(str(out_dir)),
        }
    )


@dg.asset(
    key=["raw", "events"],
    group_name="ingest",
    deps=[synthetic_event_files],
    pool=WAREHOUSE_POOL,  # one writer per DuckDB file
    description=(
        "Validated events in the canonical schema. Rejected rows go to raw.quarantine with a "
        "reason; exact duplicates are dropped; read = accepted + quarantined + duplicates."
    ),
)
def raw_events(context: dg.AssetExecutionContext, config: IngestConfig) -> dg.MaterializeResult:
    if config.source not in SOURCES:
        raise dg.Failure(f"Unknown source {config.source!r}; expected one of {', '.join(SOURCES)}")
    paths = [Path(p) for p in config.paths] or [settings.landing_dir() / config.source]
    plausibility = Plausibility(
        earliest_event_time=datetime.fromisoformat(config.earliest_event_time),
        max_price=config.max_price,
        max_field_length=config.max_field_length,
    )
    reports = ingest_paths(
        settings.warehouse_path(), paths, config.source, plausibility=plausibility
    )
    totals = {
        key: sum(getattr(report, key) for report in reports)
        for key in ("rows_read", "accepted", "quarantined", "duplicates")
    }
    for report in reports:
        state = "skipped (already ingested)" if report.skipped else "ingested"
        context.log.info(f"{report.source_file}: {state} {report.as_metadata()}")
    reasons: dict[str, int] = {}
    for report in reports:
        for reason, count in report.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    refused = {r.source_file: r.error for r in reports if r.refused}
    all_quarantined = [r.source_file for r in reports if r.all_quarantined]
    metadata = {
        **totals,
        "reconciles": totals["rows_read"]
        == totals["accepted"] + totals["quarantined"] + totals["duplicates"],
        "files_ingested": sum(not (r.skipped or r.refused) for r in reports),
        "files_skipped": sum(r.skipped for r in reports),
        "files_refused": len(refused),
        "quarantine_reasons": dg.MetadataValue.json(reasons),
        "warehouse": dg.MetadataValue.path(str(settings.warehouse_path())),
    }
    if refused or all_quarantined:
        # The good files of the batch are stored (each in its own transaction); the run fails
        # so that nobody mistakes a refused file for an ingested one.
        problems = [f"{file}: refused: {error}" for file, error in refused.items()]
        problems += [
            f"{file}: every row was quarantined (wrong source or delimiter?); see raw.quarantine"
            for file in all_quarantined
        ]
        raise dg.Failure(
            description=f"{len(problems)} of {len(reports)} file(s) not ingested:\n"
            + "\n".join(problems),
            metadata={**metadata, "refused": dg.MetadataValue.json(refused)},
        )
    return dg.MaterializeResult(metadata=metadata)
