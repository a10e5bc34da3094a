"""`propensity`: the whole pipeline on one's own event files in one command, and the summary of
any run's state.

    propensity run --source taobao --path UserBehavior.csv --cutoff-step "1 day" \\
        --lookback "4 days" --horizon "1 day" --timezone Asia/Shanghai --budget small
    propensity summary --state .local/runs/taobao

`run` checks first that the files span enough cutoffs for the roles of time (`ml.preflight`,
the same rule the training assets apply) and says what to change when they do not; then it
runs every asset but the demo generator (the `nightly_retraining` job: ingestion, dbt, the
encoder, both studies, the final models, the gate, the category model, scoring, monitoring) on
the in-process executor that `make run` uses, in its own state folder (warehouse, MLflow,
Optuna, Dagster instance with the pool limits), and ends with `make run`'s summary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ml import settings
from ml.data.pseudonyms import MissingSaltError, pseudonym_salt
from ml.data.sources import CSV_SOURCES
from ml.preflight import (
    EventSpan,
    PreflightError,
    Windows,
    check_roles,
    cutoff_grid,
    event_span,
)
from ml.splits import DEFAULT_PROMOTION_CUTOFFS, DEFAULT_VALIDATION_CUTOFFS
from orchestration.instance import POSTGRES_URL_VARIABLE

SOURCES = ("synthetic", *CSV_SOURCES)
BUDGETS = ("small", "default", "large")
# The dbt vars' defaults (FeatureWindowConfig), as the pre-flight holds them.
DEFAULT_WINDOWS = Windows()
# The small budget: minutes on a 2-core CPU for a file of a few thousand shoppers.
SMALL_BUDGET: dict[str, dict[str, Any]] = {
    "training__xgb_study": {"n_trials": 5},
    "training__seq_study": {
        "n_trials": 2,
        "max_epochs": 2,
        "max_train_rows": 5_000,
        "encoders": ["gru"],
    },
    "training__behaviour_encoder": {"max_epochs": 1, "max_rows": 5_000},
    "training__next_category_model": {"max_epochs": 2, "max_train_rows": 5_000},
}
# The large budget is the GPU example's: every row, GPU-sized batches, more trials.
LARGE_BUDGET_FILE = settings.PROJECT_ROOT / "docs" / "examples" / "gpu_training.yaml"


def budget_ops(budget: str) -> dict[str, Any]:
    """Run config `ops` entries of a budget: small, default (the assets' own defaults, which
    `make run` uses) or large (docs/examples/gpu_training.yaml)."""
    if budget == "small":
        return {op: {"config": dict(config)} for op, config in SMALL_BUDGET.items()}
    if budget == "large":
        return yaml.safe_load(LARGE_BUDGET_FILE.read_text())["ops"]
    return {}


def default_state(source: str) -> Path:
    return settings.PROJECT_ROOT / ".local" / "runs" / source


def use_state(state: Path) -> Path:
    """Points every store at `state` (this process and the ones it starts): the warehouse,
    MLflow, Optuna and the Dagster instance all live under it."""
    state = state.expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    os.environ["PROPENSITY_HOME"] = str(state)
    os.environ["DAGSTER_HOME"] = str(state / "dagster")
    for variable in (
        "PROPENSITY_WAREHOUSE",
        "PROPENSITY_LANDING_DIR",
        "MLFLOW_TRACKING_URI",
        "PROPENSITY_MLFLOW_ARTIFACTS",
        "PROPENSITY_OPTUNA_STORAGE",
        "PROPENSITY_TRAINING_DIR",
        POSTGRES_URL_VARIABLE,
    ):
        os.environ.pop(variable, None)  # a state folder holds all of its stores
    return state


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none (required options, computed defaults)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    formatter = _Help
    main_parser = argparse.ArgumentParser(
        prog="propensity",
        description="Shopper propensity: train, gate and score on your own event files.",
        formatter_class=formatter,
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="ingest event files and run the whole pipeline on them",
        description=(
            "Ingest the event files, build the features, tune and train both model families, "
            "gate the champion and score the latest cutoff, then print the summary. Checks "
            "first that the files span enough cutoffs for the roles of time."
        ),
        formatter_class=formatter,
    )
    run.add_argument("--source", required=True, choices=SOURCES, help="the files' format")
    run.add_argument(
        "--path",
        required=True,
        nargs="+",
        action="extend",
        type=Path,
        help="event files, or folders whose files of that source are all read",
    )
    run.add_argument(
        "--cutoff-step", default=DEFAULT_WINDOWS.cutoff_step, help="a cutoff every this long"
    )
    run.add_argument(
        "--lookback", default=DEFAULT_WINDOWS.lookback, help="features read this much history"
    )
    run.add_argument(
        "--horizon", default=DEFAULT_WINDOWS.horizon, help="the label: a purchase within this"
    )
    run.add_argument(
        "--timezone",
        default=DEFAULT_WINDOWS.timezone,
        help="the shop's clock for the cutoff grid: UTC, +08:00 or an IANA zone",
    )
    run.add_argument(
        "--state",
        type=Path,
        default=None,
        help="folder of this run's warehouse, MLflow, Optuna and Dagster instance "
        "(default: .local/runs/<source> in the project)",
    )
    run.add_argument(
        "--budget",
        choices=BUDGETS,
        default="default",
        help="small: minutes on a laptop; default: the demo's; large: a GPU's "
        "(docs/examples/gpu_training.yaml)",
    )
    run.add_argument(
        "--validation-cutoffs",
        type=int,
        default=DEFAULT_VALIDATION_CUTOFFS,
        help="cutoffs of the validation role (tuning)",
    )
    run.add_argument(
        "--promotion-cutoffs",
        type=int,
        default=DEFAULT_PROMOTION_CUTOFFS,
        help="cutoffs of the promotion role (the gate's window)",
    )
    run.add_argument(
        "--features-only",
        action="store_true",
        help="ingest the files and build the features, labels and sequences, then the summary "
        "and the data report; no training or scoring (for files too short to train on, or to "
        "look at the data first)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="only check the files against the windows (the pre-flight) and say what the run "
        "would do; writes nothing",
    )

    summary = commands.add_parser(
        "summary",
        help="print what a run left in a state folder",
        description="The summary `make run` and `propensity run` end with, for any state.",
        formatter_class=formatter,
    )
    summary.add_argument(
        "--state",
        type=Path,
        default=None,
        help="the state folder (default: $PROPENSITY_HOME, else the project's .local/)",
    )

    serve = commands.add_parser(
        "serve",
        help="score shoppers over HTTP with the champion (FastAPI; docs at /docs)",
        description=(
            "The scoring service: POST /score and /score/batch, GET /health and /model, on "
            "the state's published snapshot and MLflow registry. Swaps in a new champion or "
            "snapshot when one appears."
        ),
        formatter_class=formatter,
    )
    serve.add_argument(
        "--state",
        type=Path,
        default=None,
        help="the state folder (default: $PROPENSITY_HOME, else the project's .local/)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=int, default=8000, help="port to bind")
    serve.add_argument(
        "--poll-seconds",
        type=float,
        default=10.0,
        help="how often to look for a moved champion alias or a new snapshot",
    )

    worker = commands.add_parser(
        "tune-worker",
        help="run queued trials of an Optuna study (scaling out; docs/scaling.md)",
        description=(
            "A tuning worker: runs the trials a study asset queued (its n_workers config) until "
            "none is queued or running, against the study storage in "
            "PROPENSITY_OPTUNA_STORAGE (a postgresql:// URL to share one study across "
            "machines) and the MLflow server in MLFLOW_TRACKING_URI."
        ),
        formatter_class=formatter,
    )
    worker.add_argument("--study", required=True, help="the study's name (e.g. xgboost)")
    worker.add_argument(
        "--snapshot-dir",
        type=Path,
        default=None,
        help="where this machine sees the training snapshot folder (default: the work order's)",
    )
    worker.add_argument(
        "--wait-seconds",
        type=float,
        default=0.0,
        help="keep looking this long for a new round once the study has nothing to run",
    )
    return main_parser


def event_files(source: str, paths: list[Path]) -> list[Path]:
    """The files named, and the files of a named folder (*.parquet for the simulator's
    output, *.csv otherwise), sorted."""
    pattern = "*.parquet" if source == "synthetic" else "*.csv"
    files: list[Path] = []
    for path in (p.expanduser().resolve() for p in paths):
        files.extend(sorted(path.glob(pattern)) if path.is_dir() else [path])
    return files


def run_command(args: argparse.Namespace) -> int:
    windows = Windows(args.cutoff_step, args.lookback, args.horizon, args.timezone)
    paths = event_files(args.source, args.path)
    try:
        pseudonym_salt()  # MissingSaltError (a ValueError) says what to set
        span = event_span(args.source, paths)
        grid = cutoff_grid(span, windows)
        if args.features_only:
            plan = _features_plan(span, grid)
        else:
            roles = check_roles(span, windows, args.validation_cutoffs, args.promotion_cutoffs)
            plan = (
                f"Pre-flight: {span.rows:,} events from {span.first:%Y-%m-%d %H:%M} to "
                f"{span.last:%Y-%m-%d %H:%M} UTC; roles of time: {len(roles.train_cutoffs)} "
                f"train, {len(roles.validation_cutoffs)} validation, "
                f"{len(roles.promotion_cutoffs)} promotion cutoffs (promotion "
                f"{roles.describe()['promotion_cutoffs']})."
                + (f"\nWarning: {roles.history_warning}" if roles.history_warning else "")
            )
    except (PreflightError, ValueError, MissingSaltError) as error:
        what = "build features from" if args.features_only else "train on"
        print(f"propensity run: cannot {what} these files.\n{error}", file=sys.stderr)
        if isinstance(error, PreflightError) and not args.features_only:
            print(
                "Or add --features-only: ingest the files, build the features and get the "
                "data report, without training.",
                file=sys.stderr,
            )
        return 2
    print(plan)
    if args.check:
        print("Check only (--check): nothing was written.")
        return 0
    state = use_state(args.state or default_state(args.source))
    print(f"State: {state}")
    # The run's cutoff is the files' own scoring cutoff (as `make run` tags the demo's): the
    # freshness check then measures the newest event against it, not against today.
    scoring_cutoff = grid["cutoff_time"].max().to_pydatetime()
    return _execute(args, windows, paths, scoring_cutoff)


def _features_plan(span: EventSpan, grid: pd.DataFrame) -> str:
    """What --features-only will build; PreflightError when the files hold no whole cutoff."""
    if grid.empty:
        raise PreflightError(
            f"The events span {span.first:%Y-%m-%d %H:%M} to {span.last:%Y-%m-%d %H:%M} UTC, "
            "which holds no cutoff of this --cutoff-step: choose a shorter one."
        )
    complete = int(grid["horizon_complete"].sum())
    return (
        f"Pre-flight: {span.rows:,} events from {span.first:%Y-%m-%d %H:%M} to "
        f"{span.last:%Y-%m-%d %H:%M} UTC; {len(grid)} cutoffs ({complete} with a complete "
        "label window). Features only (--features-only): no training or scoring."
    )


def _prepare_dbt() -> None:
    """dbt on PATH and its manifest parsed, as `make` does, before the definitions load."""
    # dagster-dbt runs the `dbt` executable installed beside this Python.
    bin_dir = Path(sys.executable).parent
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    if not (settings.DBT_PROJECT_DIR / "target" / "manifest.json").exists():
        # What `make manifest` does; Dagster reads the manifest when the definitions load.
        subprocess.run(
            [str(bin_dir / "dbt"), "parse", "--quiet", "--profiles-dir", "."],
            cwd=settings.DBT_PROJECT_DIR,
            check=True,
        )


def _execute(
    args: argparse.Namespace, windows: Windows, paths: list[Path], scoring_cutoff: datetime
) -> int:
    _prepare_dbt()
    # Imported here: Dagster, dbt and MLflow take seconds to import, and `--help` or a refused
    # pre-flight need none of them.
    import dagster as dg

    from orchestration.defs.jobs import (
        CUTOFF_TAG,
        in_process_execution,
        nightly_retraining_job,
    )
    from orchestration.defs.progress import PROGRESS_LOGGING, quiet_libraries
    from orchestration.defs.schedules import DBT_OP
    from orchestration.instance import prepare_dagster_home
    from orchestration.recovery import fail_dead_runs
    from orchestration.run import run_summary

    quiet_libraries()
    home = prepare_dagster_home()
    run_config = {
        "ops": {
            "raw__events": {"config": {"source": args.source, "paths": [str(p) for p in paths]}},
            DBT_OP: {
                "config": {
                    "cutoff_step": windows.cutoff_step,
                    "lookback": windows.lookback,
                    "horizon": windows.horizon,
                    "timezone": windows.timezone,
                }
            },
        },
        **in_process_execution(),
        **PROGRESS_LOGGING,
    }
    selection = None
    if args.features_only:
        selection = features_only_selection()
    else:
        run_config["ops"].update(budget_ops(args.budget))
        run_config["resources"] = {
            "time_roles": {
                "config": {
                    "n_validation_cutoffs": args.validation_cutoffs,
                    "n_promotion_cutoffs": args.promotion_cutoffs,
                }
            }
        }
    with dg.DagsterInstance.get() as instance:
        fail_dead_runs(instance)  # a killed earlier run must not hold the pools
        result = dg.execute_job(
            dg.reconstructable(nightly_retraining_job),
            instance=instance,
            run_config=run_config,
            tags={CUTOFF_TAG: scoring_cutoff.isoformat()},
            asset_selection=selection,
            raise_on_error=False,
        )
        if not result.success:
            print(
                f"propensity run failed (run {result.run_id}); the log is in the Dagster "
                f"instance at {home} (DAGSTER_HOME={home} dagster dev, or `make ui`).",
                file=sys.stderr,
            )
            return 1
        print(f"\npropensity run succeeded (run {result.run_id})")
        print("\n".join(run_summary(instance, home)))
    return 0


def features_only_selection() -> list:
    """`--features-only`: ingestion, the dbt feature warehouse and the report (of the data)."""
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.defs.jobs import RAW_EVENTS
    from orchestration.defs.reporting import REPORT_KEY

    selection = dg.AssetSelection.assets(RAW_EVENTS, REPORT_KEY) | dg.AssetSelection.groups(
        "features"
    )
    return sorted(selection.resolve(defs().resolve_asset_graph()))


def summary_command(args: argparse.Namespace) -> int:
    if args.state is not None:
        use_state(args.state)
    if not settings.warehouse_path().exists():
        print(
            f"propensity summary: no warehouse at {settings.warehouse_path()}: nothing has run "
            "in this state folder yet (propensity run, or make run for the demo).",
            file=sys.stderr,
        )
        return 2
    import dagster as dg

    from orchestration.instance import prepare_dagster_home
    from orchestration.run import run_summary

    home = prepare_dagster_home()
    with dg.DagsterInstance.get() as instance:
        print("\n".join(run_summary(instance, home)))
    return 0


def serve_command(args: argparse.Namespace) -> int:
    if args.state is not None:
        use_state(args.state)
    try:
        pseudonym_salt()  # the service pseudonymises request ids as the warehouse did
    except MissingSaltError as error:
        print(f"propensity serve: {error}", file=sys.stderr)
        return 2
    import uvicorn

    from ml.serving.service import create_app
    from orchestration.defs.serving import SNAPSHOT_FOLDER

    try:
        app = create_app(
            settings.local_dir() / SNAPSHOT_FOLDER,
            settings.mlflow_tracking_uri(),
            poll_seconds=args.poll_seconds,
        )
    except (FileNotFoundError, LookupError) as error:
        print(f"propensity serve: {error}", file=sys.stderr)
        return 2
    print(f"Serving on http://{args.host}:{args.port} (OpenAPI docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def tune_worker_command(args: argparse.Namespace) -> int:
    from ml.tuning_workers import NoSuchStudy, work  # imports mlflow and optuna: only here

    try:
        ran = work(args.study, snapshot_dir=args.snapshot_dir, wait_s=args.wait_seconds)
    except NoSuchStudy as missing:
        print(f"propensity tune-worker: {missing}", file=sys.stderr)
        return 2
    print(f"worker {os.getpid()}: {ran} trials of study {args.study!r} run")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":
        return run_command(args)
    if args.command == "serve":
        return serve_command(args)
    if args.command == "tune-worker":
        return tune_worker_command(args)
    return summary_command(args)


if __name__ == "__main__":
    sys.exit(main())
