"""`make nightly`: one simulated night of the demo shop, then the job the 02:00 schedule runs.

    python -m orchestration.nightly [--n-trials N]     # the next day, then nightly_retraining
    python -m orchestration.nightly backfill FIRST LAST  # days FIRST..LAST (ISO dates), rebuilt

A night: the shop simulator writes the day after the last simulated one ("the next day" of the
same shop: same users and seed, read from landing/synthetic/shop.json) into the landing folder,
then the nightly schedule is evaluated for 02:00 after that day and its run request (cutoff =
midnight after the new day, dbt var as_of, a study per data window, tag propensity/cutoff) is
executed on the multiprocess executor in the project's Dagster instance. Each night registers a
new model version with a promotion decision. Run `make run` first.
"""

import argparse
import contextlib
import copy
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import mlflow

from ml import settings
from ml.data.synthetic import SyntheticConfig, generate_events
from ml.registry import CHAMPION, MODEL_NAME
from orchestration.defs.ingest import SyntheticEventsConfig, read_shop, record_shop, shop_day
from orchestration.defs.jobs import (
    backfill_days_job,
    multiprocess_execution,
    nightly_retraining_job,
)
from orchestration.defs.schedules import build_nightly_schedule, study_ops
from orchestration.instance import prepare_dagster_home
from orchestration.recovery import fail_dead_runs

SYNTHETIC_OP = "landing__synthetic_events"
BACKFILL_TAG = "propensity/backfill"


@dataclass(frozen=True)
class NightResult:
    """What one night produced, for the summary line and for tests."""

    run_id: str
    success: bool
    cutoff: datetime
    new_day: date
    events: int
    model_version: str | None
    decision: str | None
    reason: str | None
    champion: str | None
    # Every version this night registered (one per model family): (version, family, decision).
    new_versions: tuple[tuple[str, str, str], ...] = ()


def simulate_next_day() -> tuple[date, int, datetime]:
    """Writes the day after the shop's last simulated day into the landing folder.

    Returns the new day, its number of events and the cutoff after it (naive UTC midnight).
    """
    folder = settings.landing_dir() / "synthetic"
    shop = read_shop(folder)
    if shop is None:
        raise SystemExit(f"No demo shop in {folder}: run `make run` first.")
    config = SyntheticConfig(
        n_users=shop["n_users"], seed=shop["seed"], start_day=shop["end_day"], days=1
    )
    summary = generate_events(folder, config)
    record_shop(folder, config)
    new_day = shop_day(shop, config.start_day)
    return (
        new_day,
        summary.n_events,
        datetime.combine(new_day + timedelta(days=1), datetime.min.time()),
    )


def nightly_request(cutoff: datetime, n_trials: int | None) -> tuple[dict, dict[str, str]]:
    """Run config and tags of the schedule's own request for the tick at 02:00 (UTC) after
    `cutoff`, with the tuning budget changed where asked."""
    schedule = build_nightly_schedule("UTC")
    tick = (cutoff + timedelta(hours=2)).replace(tzinfo=UTC)
    context = dg.build_schedule_context(scheduled_execution_time=tick)
    (request,) = schedule.evaluate_tick(context).run_requests
    run_config = copy.deepcopy(dict(request.run_config))
    if n_trials is not None:
        for study_op, _ in study_ops().values():
            run_config["ops"][study_op]["config"]["n_trials"] = n_trials
    return run_config, dict(request.tags)


def registered_versions() -> list:
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
    return client.search_model_versions(f"name='{MODEL_NAME}'")


def versions_after(version: int) -> tuple[tuple[str, str, str], ...]:
    """(version, family, promotion decision) of every version newer than `version`, oldest first."""
    newer = sorted(
        (v for v in registered_versions() if int(v.version) > version), key=lambda v: int(v.version)
    )
    return tuple(
        (str(v.version), v.tags.get("family", "?"), v.tags.get("promotion_decision", "none"))
        for v in newer
    )


def newest_version_summary() -> tuple[str | None, str | None, str | None, str | None]:
    """(newest version, its promotion decision and reason, the champion) from the registry."""
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri())
    versions = registered_versions()
    if not versions:
        return None, None, None, None
    newest = max(versions, key=lambda v: int(v.version))
    champion = client.get_registered_model(MODEL_NAME).aliases.get(CHAMPION)
    return (
        str(newest.version),
        newest.tags.get("promotion_decision"),
        newest.tags.get("promotion_reason"),
        None if champion is None else str(champion),
    )


def run_night(
    n_trials: int | None = None, instance: dg.DagsterInstance | None = None
) -> NightResult:
    """Simulates the next day and runs nightly_retraining as the schedule would, in `instance`
    (default: the project's, DAGSTER_HOME with the pool limit)."""
    newest_before = max((int(v.version) for v in registered_versions()), default=0)
    new_day, n_events, cutoff = simulate_next_day()
    run_config, tags = nightly_request(cutoff, n_trials)
    with contextlib.ExitStack() as stack:
        if instance is None:
            prepare_dagster_home()
            instance = stack.enter_context(dg.DagsterInstance.get())
        fail_dead_runs(instance)  # a killed earlier run must not hold the pools
        result = dg.execute_job(
            dg.reconstructable(nightly_retraining_job),
            instance=instance,
            run_config={**run_config, **multiprocess_execution()},
            tags=tags,
        )
    version, decision, reason, champion = newest_version_summary()
    return NightResult(
        result.run_id,
        result.success,
        cutoff,
        new_day,
        n_events,
        version,
        decision,
        reason,
        champion,
        versions_after(newest_before),
    )


def backfill_run_config(first: date, last: date, shop: dict | None) -> dict:
    """landing/synthetic_events config simulating the days first..last of the demo shop."""
    defaults = SyntheticEventsConfig()
    shop = shop or {
        "n_users": defaults.n_users,
        "seed": defaults.seed,
        "start": SyntheticConfig().start.isoformat(),
    }
    start = date.fromisoformat(shop["start"])
    if first < start or last < first:
        raise ValueError(f"Need {start} <= FIRST <= LAST, got {first} .. {last}")
    config = {
        "n_users": shop["n_users"],
        "seed": shop["seed"],
        "start_day": (first - start).days,
        "days": (last - first).days + 1,
    }
    return {"ops": {SYNTHETIC_OP: {"config": config}}}


def run_backfill(first: date, last: date) -> tuple[str, bool]:
    """Loads days first..last and rebuilds the warehouse (every cutoff) in one run; returns
    the run id and whether it succeeded."""
    prepare_dagster_home()
    shop = read_shop(settings.landing_dir() / "synthetic")
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(backfill_days_job),
            instance=instance,
            run_config={**backfill_run_config(first, last, shop), **multiprocess_execution()},
            tags={BACKFILL_TAG: f"{first.isoformat()}..{last.isoformat()}"},
        )
        return result.run_id, result.success


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n-trials",
        type=int,
        help="Optuna trials of every study this night (default: each family's)",
    )
    sub = parser.add_subparsers(dest="command")
    backfill = sub.add_parser("backfill", help="simulate and rebuild days FIRST..LAST")
    backfill.add_argument("first", type=date.fromisoformat)
    backfill.add_argument("last", type=date.fromisoformat)
    args = parser.parse_args(argv)

    if args.command == "backfill":
        run_id, success = run_backfill(args.first, args.last)
        state = "succeeded" if success else "failed"
        print(f"backfill_days {args.first}..{args.last} {state} (run {run_id})")
        return 0 if success else 1

    night = run_night(args.n_trials)
    if not night.success:
        print(f"nightly_retraining failed (run {night.run_id}); see `make ui` for the logs.")
        return 1
    reasons = {str(v.version): v.tags.get("promotion_reason", "") for v in registered_versions()}
    print(
        f"\nnightly_retraining succeeded (run {night.run_id})\n"
        f"  new day {night.new_day}: {night.events:,} events; cutoff {night.cutoff} UTC\n"
        + "".join(
            f"  {MODEL_NAME} version {version} ({family}): {decision}\n"
            f"    {reasons.get(version, '')}\n"
            for version, family, decision in night.new_versions
        )
        + f"  {MODEL_NAME}@{CHAMPION} = version {night.champion}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
