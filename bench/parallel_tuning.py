"""Benchmark of tuning on several workers (ml.tuning_workers): trials per minute with 1, 2 and 4
worker processes, and what a PostgreSQL study storage costs per trial against a journal file.

1. **Throughput.** `run_on_workers` with the XGBoost family runs `--trials` trials (pruning on,
   as the pipeline tunes) on 1, 2 and 4 local workers, on a journal file and, with
   `--postgres-url`, on a fresh PostgreSQL database. The data is `make_labeled_features`
   (`--train-rows` synthetic rows, a snapshot in a temporary folder); MLflow is a SQLite store
   there. Trials per minute are counted twice: over the whole call (worker start-up included:
   each worker imports the project and loads the snapshot) and over the span from the first
   trial's start to the last one's end. A first call, not recorded, warms the disk cache.
2. **Storage overhead per trial.** The same search space with a trivial objective that reports
   `--steps` intermediate values (as boosting rounds do) and asks the pruner after each:
   `--storage-trials` trials in one process, journal file against PostgreSQL. The difference per
   trial is what the storage costs a real trial.

XGBoost uses one thread per worker (OMP_NUM_THREADS=1), so that N workers use N cores. This
machine has 2 cores: beyond 2 workers, throughput cannot grow, and the figures say so.

Usage::

    bash .ci/postgres.sh start          # prints the URL below
    .venv/bin/python bench/parallel_tuning.py \\
        --postgres-url postgresql://propensity_test:propensity_test@127.0.0.1:5432/postgres

Writes bench/results/parallel_tuning.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
os.environ["OMP_NUM_THREADS"] = "1"  # before xgboost loads; the workers inherit it

import mlflow  # noqa: E402
import optuna  # noqa: E402
import psycopg2  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from bench.machine import Meter, machine_info  # noqa: E402
from ml.families.xgboost import FAMILY as XGBOOST  # noqa: E402
from ml.families.xgboost.search import XGBoostSearch  # noqa: E402
from ml.settings import without_password  # noqa: E402
from ml.splits import save_split_snapshot  # noqa: E402
from ml.study import StudyBudget, family_pruner, optuna_storage  # noqa: E402
from ml.synthetic_split import make_labeled_features  # noqa: E402
from ml.tracking import configure_mlflow  # noqa: E402
from ml.tuning_workers import Round, run_on_workers  # noqa: E402

RESULTS = PROJECT_ROOT / "bench" / "results"


def fresh_database(admin_url: str, name: str) -> str:
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def throughput(
    storage: str, n_workers: int, n_trials: int, work: Path, snapshot_id: str, rounds: int
) -> dict:
    search = XGBoostSearch(num_boost_round=rounds, early_stopping_rounds=20)
    study_name = f"bench-{n_workers}"
    budget = StudyBudget(n_trials=n_trials, storage=storage, study_name=study_name)
    with Meter() as meter, mlflow.start_run(run_name=study_name) as parent:
        trials = Round(
            XGBOOST,
            budget,
            search,
            work / "split",
            snapshot_id,
            parent.info.run_id,
            parent.info.experiment_id,
        )
        result = run_on_workers(trials, n_workers, log=lambda _: None)
    trials = optuna.load_study(study_name=study_name, storage=optuna_storage(storage)).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    return {
        "workers": n_workers,
        "trials": len(done),
        "pruned": result.n_pruned,
        "wall_s": round(meter.seconds, 1),
        "trials_per_min": round(len(done) / meter.seconds * 60, 1),
        "trials_per_min_in_span": round(len(done) / span * 60, 1),
        # Busy cores before the call: the workers' own CPU would count as "others" during it.
        "load_average_before": meter.load_average_before,
    }


def storage_overhead(storage: str, n_trials: int, steps: int) -> dict:
    """Seconds per trial of ask, suggest, `steps` reports with a pruning check each, and tell."""
    study = optuna.create_study(
        storage=optuna_storage(storage),
        study_name="bench-storage",
        direction="maximize",
        pruner=family_pruner(XGBOOST),
        load_if_exists=True,
    )
    search = XGBoostSearch()

    def objective(trial: optuna.Trial) -> float:
        XGBOOST.suggest(trial, search)
        for step in range(steps):
            trial.report(step / steps, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1.0

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    seconds = time.perf_counter() - started
    per_trial = seconds / n_trials
    return {
        "trials": n_trials,
        "steps": steps,
        "ms_per_trial": round(per_trial * 1e3, 1),
        "ms_per_step": round(per_trial / steps * 1e3, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default="", help="a role that may create databases")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--storage-trials", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    figures: dict = {"throughput": {}, "storage_overhead": {}}
    with tempfile.TemporaryDirectory(prefix="parallel-tuning-") as folder:
        work = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        configure_mlflow(os.environ["MLFLOW_TRACKING_URI"], "bench", work / "artifacts")
        labeled, split = make_labeled_features(n_train=args.train_rows, n_eval=args.train_rows // 4)
        snapshot_id = save_split_snapshot(labeled, split, work / "split")
        # Not recorded: the first call of a process reads the libraries from a cold disk cache
        # (a worker's first start took 14 s here, later ones 7 s).
        throughput(str(work / "warm-up.journal"), 1, 2, work, snapshot_id, args.rounds)
        storages = {"journal": lambda name: str(work / f"{name}.journal")}
        if args.postgres_url:
            storages["postgresql"] = lambda name: fresh_database(args.postgres_url, f"bench_{name}")
        for kind, make in storages.items():
            rows = []
            for n_workers in args.workers:
                row = throughput(
                    make(f"w{n_workers}"), n_workers, args.trials, work, snapshot_id, args.rounds
                )
                print(kind, row, flush=True)
                rows.append(row)
            figures["throughput"][kind] = rows
            overhead = storage_overhead(make("storage"), args.storage_trials, args.steps)
            print(kind, overhead, flush=True)
            figures["storage_overhead"][kind] = overhead

    figures["settings"] = {**vars(args), "postgres_url": without_password(args.postgres_url)}
    figures["machine"] = machine_info(["optuna", "xgboost", "sqlalchemy", "psycopg2-binary"], "ml")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parallel_tuning.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / "parallel_tuning.md").write_text(markdown(figures))
    print((RESULTS / "parallel_tuning.md").read_text())
    return 0


def markdown(figures: dict) -> str:
    lines = [
        "# Tuning on several workers (bench/parallel_tuning.py)",
        "",
        f"{figures['machine']['cores']} cores, {figures['machine']['cpu']}; "
        f"{figures['settings']['trials']} XGBoost trials of {figures['settings']['train_rows']:,} "
        "training rows each run.",
        "",
        "| storage | workers | trials (pruned) | wall s | trials/min (whole call) | "
        "trials/min (span) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, rows in figures["throughput"].items():
        for row in rows:
            lines.append(
                f"| {kind} | {row['workers']} | {row['trials']} ({row['pruned']}) | "
                f"{row['wall_s']} | {row['trials_per_min']} | {row['trials_per_min_in_span']} |"
            )
    lines += [
        "",
        "| storage | ms per trial (trivial objective) | ms per report and pruning check |",
    ]
    lines += ["|---|---:|---:|"]
    for kind, row in figures["storage_overhead"].items():
        lines.append(
            f"| {kind} | {row['ms_per_trial']} ({row['steps']} reports) | {row['ms_per_step']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
