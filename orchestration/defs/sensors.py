"""The landing sensor: new event files in `$PROPENSITY_LANDING_DIR/<source>/` are ingested as
they appear.

Two guards keep a file from being ingested twice. The cursor lists every file already requested
(path, size and modification time, so a file rewritten with new content counts as new), and each
request's run_key is derived from its files, so Dagster drops a repeated request. Ingestion then
skips any file whose content (sha256) is already in raw.ingested_files. A file modified in the
last SETTLE_SECONDS is left for the next tick, so a half-written file is never read.

Off by default; turn it on in the UI (Automation), with
`dagster sensor start landing_files_sensor -w workspace.yaml`, or with
PROPENSITY_AUTOMATION=running.
"""

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from ml import settings
from ml.data.ingest import SOURCES
from orchestration.defs.jobs import ingest_landing
from orchestration.defs.schedules import automation_status
from orchestration.recovery import fail_dead_runs

SETTLE_SECONDS = 10.0
MINIMUM_INTERVAL_SECONDS = 30
RAW_EVENTS_OP = "raw__events"


def file_pattern(source: str) -> str:
    """The files ingestion reads per source (the synthetic shop writes parquet)."""
    return "*.parquet" if source == "synthetic" else "*.csv"


def file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def new_landing_files(
    landing: Path, seen: set[str], now: float, settle_seconds: float = SETTLE_SECONDS
) -> dict[str, list[Path]]:
    """Settled files per source whose key is not in `seen`, sorted by name."""
    found: dict[str, list[Path]] = {}
    for source in SOURCES:
        folder = landing / source
        if not folder.is_dir():
            continue
        files = [
            path
            for path in sorted(folder.glob(file_pattern(source)))
            if path.is_file()
            and now - path.stat().st_mtime >= settle_seconds
            and file_key(path) not in seen
        ]
        if files:
            found[source] = files
    return found


def ingest_request(source: str, files: list[Path]) -> dg.RunRequest:
    keys = sorted(file_key(path) for path in files)
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"landing-{source}-{digest}",
        run_config={
            "ops": {
                RAW_EVENTS_OP: {
                    "config": {"source": source, "paths": [str(path) for path in files]}
                }
            }
        },
        tags={"propensity/landing_files": str(len(files)), "propensity/source": source},
    )


def evaluate_landing(context: dg.SensorEvaluationContext) -> list[dg.RunRequest | dg.SkipReason]:
    """One tick: a request per source with new files, and the cursor extended by them."""
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    found = new_landing_files(settings.landing_dir(), seen, now=time.time())
    if not found:
        return [dg.SkipReason(f"No new settled files under {settings.landing_dir()}")]
    requests: list[dg.RunRequest | dg.SkipReason] = []
    for source, files in found.items():
        context.log.info(f"{len(files)} new {source} file(s): {', '.join(p.name for p in files)}")
        requests.append(ingest_request(source, files))
        seen.update(file_key(path) for path in files)
    context.update_cursor(json.dumps(sorted(seen)))
    return requests


def build_landing_sensor() -> dg.SensorDefinition:
    """Built when the definitions load, so PROPENSITY_AUTOMATION is read then, not at import."""

    @dg.sensor(
        name="landing_files_sensor",
        job=ingest_landing,
        minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus(automation_status().value),
        description="Ingests new event files from the landing folder, each file once (cursor).",
    )
    def landing_files_sensor(
        context: dg.SensorEvaluationContext,
    ) -> Iterator[dg.RunRequest | dg.SkipReason]:
        if context.instance_ref is not None:  # a killed run must not hold the warehouse pool
            fail_dead_runs(context.instance, context.log.warning)
        yield from evaluate_landing(context)

    return landing_files_sensor
