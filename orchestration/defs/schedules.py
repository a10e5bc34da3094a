"""Nightly retraining at 02:00: ingest what arrived, rebuild the warehouse as of the new day,
tune, train, gate the champion and score.

The cutoff of a night is the start of the day the tick falls in (in the schedule's timezone),
rounded down to the UTC cutoff grid: at 02:00 on 2025-10-02 in UTC that is 2025-10-02 00:00, so
the newest complete day is 2025-10-01 and everything after midnight waits for the next night. The
cutoff travels in the run config (dbt var `as_of`, the study names) and as the run tag
`propensity/cutoff`; the nightly demo (orchestration/nightly.py) builds the same request.

Off by default, like every Dagster schedule: turn it on in the UI (Automation), with
`dagster schedule start nightly_retraining_schedule -w workspace.yaml`, or start the code
location with PROPENSITY_AUTOMATION=running. The timezone is PROPENSITY_SCHEDULE_TIMEZONE (an
IANA name, default UTC). A running daemon (`make ui` / `dagster dev` starts one) launches the runs.
"""

import os
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from ml.families import all_families
from orchestration.defs.jobs import CUTOFF_TAG, nightly_retraining
from orchestration.recovery import fail_dead_runs

NIGHTLY_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"
TIMEZONE_VARIABLE = "PROPENSITY_SCHEDULE_TIMEZONE"
AUTOMATION_VARIABLE = "PROPENSITY_AUTOMATION"
DBT_OP = "warehouse_dbt_models"


def study_ops() -> dict[str, tuple[str, str]]:
    """Each model family's study base name and the ops that read the study by name (its study
    and final model). A study per data window: a study's best value is a validation PR-AUC, and
    a best trial scored on last week's validation days cannot be compared with today's."""
    return {
        family.study_name: (
            f"training__{family.asset_prefix}_study",
            f"training__{family.asset_prefix}_model",
        )
        for family in all_families()
    }


def schedule_timezone() -> str:
    """The schedule's IANA timezone (PROPENSITY_SCHEDULE_TIMEZONE, default UTC), validated."""
    name = os.environ.get(TIMEZONE_VARIABLE) or DEFAULT_TIMEZONE
    ZoneInfo(name)  # raises for an unknown name when the definitions load, not at 02:00
    return name


def automation_status() -> dg.DefaultScheduleStatus:
    """STOPPED unless PROPENSITY_AUTOMATION=running (the UI toggle overrides either way)."""
    running = os.environ.get(AUTOMATION_VARIABLE, "").lower() == "running"
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED


def nightly_cutoff(
    scheduled: datetime, timezone: str = DEFAULT_TIMEZONE, step: timedelta = timedelta(days=1)
) -> datetime:
    """The cutoff (naive UTC) of a tick: the start of its local day, down to the UTC grid."""
    zone = ZoneInfo(timezone)
    local = scheduled.astimezone(zone) if scheduled.tzinfo else scheduled.replace(tzinfo=zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return (epoch + ((midnight - epoch) // step) * step).replace(tzinfo=None)


def cutoff_text(cutoff: datetime) -> str:
    return cutoff.strftime("%Y-%m-%d %H:%M:%S")


def window_study_name(cutoff: datetime, base_name: str) -> str:
    return f"{base_name}-{cutoff:%Y%m%d}"


def nightly_run_config(cutoff: datetime, n_trials: int | None = None) -> dict[str, Any]:
    """Run config of a night: dbt as of the cutoff, and a study per data window; `n_trials`,
    when given, is every study's budget."""
    ops: dict[str, Any] = {DBT_OP: {"config": {"as_of": cutoff_text(cutoff)}}}
    for base_name, (study_op, model_op) in study_ops().items():
        config = {"study_name": window_study_name(cutoff, base_name)}
        ops[study_op] = {
            "config": {**config, **({} if n_trials is None else {"n_trials": n_trials})}
        }
        ops[model_op] = {"config": config}
    return {"ops": ops}


def nightly_run_request(cutoff: datetime, n_trials: int | None = None) -> dg.RunRequest:
    """The request of one night; run_key makes a second tick for the same cutoff a no-op."""
    return dg.RunRequest(
        run_key=f"nightly-{cutoff_text(cutoff)}",
        run_config=nightly_run_config(cutoff, n_trials),
        tags={CUTOFF_TAG: cutoff.isoformat()},
    )


def build_nightly_schedule(timezone: str | None = None) -> dg.ScheduleDefinition:
    """The 02:00 schedule in `timezone` (default: PROPENSITY_SCHEDULE_TIMEZONE or UTC)."""
    zone = timezone or schedule_timezone()

    @dg.schedule(
        name="nightly_retraining_schedule",
        cron_schedule=NIGHTLY_CRON,
        execution_timezone=zone,
        job=nightly_retraining,
        default_status=automation_status(),
        description=(
            f"02:00 {zone}: nightly_retraining with the cutoff advanced to the new day "
            "(dbt var as_of, study per window, tag propensity/cutoff)."
        ),
    )
    def nightly_retraining_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        if context.instance_ref is not None:  # a test may evaluate a tick without one
            fail_dead_runs(context.instance, context.log.warning)
        cutoff = nightly_cutoff(context.scheduled_execution_time, zone)
        context.log.info(f"Nightly run as of {cutoff_text(cutoff)} UTC")
        return nightly_run_request(cutoff)

    return nightly_retraining_schedule
