"""Benchmark of the dbt feature build: synthetic events -> staging -> intermediate -> marts.

For each requested size (events, default 1M and 10M) the script

1. generates the synthetic events once and caches the parquet files under
   ``.local/bench/events-<n>/`` (a later run reuses them; ``--regenerate`` forces new ones),
2. ingests them into a fresh DuckDB file under ``.local/bench/`` (not part of the timed build;
   its seconds are reported separately; ``--reuse-ingested`` keeps and reuses that file),
3. copies that file to ``.local/bench/warehouse.duckdb`` and times ``dbt run`` of every model
   (not the data tests) as a child process, with ``PROPENSITY_WAREHOUSE`` pointing at it and
   ``--target-path .local/bench/target``: wall seconds, CPU seconds and peak resident memory
   of the dbt process (``os.wait4`` returns the rusage of that one child, so sizes measured
   one after the other do not mix), the 1-minute load average before the run (other work on
   the machine inflates wall time), and the per-model seconds from ``run_results.json``,
4. counts the rows of every mart.

The warehouse path is the same for every size, as for a deployed warehouse, and ``dbt parse``
runs once (untimed) before the timed runs: dbt keys its partial parsing on the profile, so
the timed runs parse only what changed, as they would in production.

It prints a summary per size and writes ``bench/results/feature_build.json`` (everything,
including the machine and the versions) and ``bench/results/feature_build.md`` (short tables).

Usage::

    .venv/bin/python bench/feature_build.py                      # 1M and 10M events
    .venv/bin/python bench/feature_build.py --events 1000000 --repeat 3
    .venv/bin/python bench/feature_build.py --profiles-dir /tmp/p  # try other DuckDB settings

Run it on an otherwise idle machine: the headline figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # so `ml` imports when run as a plain script

from bench.machine import GIB, machine_info  # noqa: E402
from ml.data.ingest import ingest_paths  # noqa: E402
from ml.data.synthetic import SyntheticConfig, generate_events  # noqa: E402

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
DEFAULT_WORK_DIR = PROJECT_ROOT / ".local" / "bench"
DEFAULT_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
MARTS = ("cutoffs", "user_features", "labels", "user_sequences")
CACHE_MARKER = "_generated.json"  # written last: a folder without it is incomplete


@dataclass
class BuildRun:
    """One timed `dbt run`."""

    wall_seconds: float
    cpu_seconds: float  # user + system time of the dbt process: less sensitive to other load
    peak_rss_gb: float
    load_average_before: float  # 1-minute load average when the run started (busy machine?)
    dbt_elapsed_seconds: float  # dbt's own figure from run_results.json (excludes start-up)
    model_seconds: dict[str, float]  # model name -> execution time, in build order


@dataclass
class SizeResult:
    """Everything measured for one number of events."""

    target_events: int
    events: int  # rows in raw.events
    users: int
    generated: dict
    ingest_seconds: float
    runs: list[BuildRun] = field(default_factory=list)
    mart_rows: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> BuildRun:
        return min(self.runs, key=lambda run: run.wall_seconds)

    def summary(self) -> dict:
        """The headline figures: the fastest of the repeats, the median wall time, and the
        highest peak memory of all repeats."""
        best = self.best
        return {
            "events": self.events,
            "wall_seconds": best.wall_seconds,
            "median_wall_seconds": round(statistics.median(r.wall_seconds for r in self.runs), 2),
            "events_per_second": round(self.events / best.wall_seconds),
            "cpu_seconds": best.cpu_seconds,
            "peak_rss_gb": max(r.peak_rss_gb for r in self.runs),
            "load_average_before": best.load_average_before,
            "model_seconds": best.model_seconds,
            "mart_rows": self.mart_rows,
        }


# ----------------------------------------------------------------------------- data


def cached_events(work_dir: Path, n_events: int, seed: int, regenerate: bool) -> tuple[Path, dict]:
    """The folder of parquet files for about ``n_events`` events, generated when missing."""
    folder = work_dir / f"events-{n_events}"
    marker = folder / CACHE_MARKER
    config = SyntheticConfig.for_target_events(n_events, seed=seed)
    expected = {"n_users": config.n_users, "days": config.days, "seed": config.seed}
    if not regenerate and marker.exists():
        generated = json.loads(marker.read_text())
        if generated.get("config") == expected:
            return folder, generated
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    summary = generate_events(folder, config)
    generated = {
        "config": expected,
        "n_events": summary.n_events,
        "n_users": summary.n_users,
        "first_event": str(summary.first_event),
        "last_event": str(summary.last_event),
        "files": len(summary.files),
        "seconds": round(time.perf_counter() - started, 2),
    }
    marker.write_text(json.dumps(generated, indent=2) + "\n")
    return folder, generated


def fresh_warehouse(
    work_dir: Path, n_events: int, events_dir: Path, reuse: bool = False
) -> tuple[Path, float]:
    """Ingest the events into a new DuckDB file; returns its path and the seconds it took.

    With ``reuse``, a file ingested (and kept) by an earlier run is used as is (0 seconds).
    """
    warehouse = work_dir / f"ingested-{n_events}.duckdb"
    if reuse and warehouse.exists() and not Path(f"{warehouse}.wal").exists():
        return warehouse, 0.0
    warehouse.unlink(missing_ok=True)
    Path(f"{warehouse}.wal").unlink(missing_ok=True)
    started = time.perf_counter()
    ingest_paths(warehouse, [events_dir], "synthetic")
    return warehouse, time.perf_counter() - started


# ----------------------------------------------------------------------------- dbt


def dbt_executable() -> str:
    """The dbt of this interpreter's environment (dbt must run in the project's venv)."""
    candidate = Path(sys.executable).parent / "dbt"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dbt")
    if found is None:
        raise SystemExit("dbt not found: run with the project's .venv/bin/python")
    return found


def dbt_command(
    command: str, warehouse: Path, target_dir: Path, profiles_dir: Path, project_dir: Path
) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment for one dbt command on ``warehouse``."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PROPENSITY_WAREHOUSE": str(warehouse),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        # The simulated shop needs no secret pseudonym key (ml/data/pseudonyms.py).
        "PROPENSITY_DEVELOPMENT": os.environ.get("PROPENSITY_DEVELOPMENT", "1"),
    }
    args = [
        dbt_executable(),
        command,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(profiles_dir),
        "--target-path",
        str(target_dir),
        "--log-path",
        str(target_dir / "logs"),
    ]
    return args, env


def prepare_dbt(warehouse: Path, target_dir: Path, profiles_dir: Path, project_dir: Path) -> None:
    """`dbt parse` (untimed), so the timed runs start from an up-to-date partial parse."""
    args, env = dbt_command("parse", warehouse, target_dir, profiles_dir, project_dir)
    result = subprocess.run(args, cwd=project_dir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"dbt parse failed:\n{result.stdout[-4000:]}")


def timed_dbt_run(
    warehouse: Path,
    target_dir: Path,
    log_path: Path,
    profiles_dir: Path = DBT_PROJECT_DIR,
    project_dir: Path = DBT_PROJECT_DIR,
) -> BuildRun:
    """Run `dbt run` (all models) on ``warehouse`` as a child process and measure it."""
    shutil.rmtree(target_dir / "run", ignore_errors=True)
    (target_dir / "run_results.json").unlink(missing_ok=True)
    args, env = dbt_command("run", warehouse, target_dir, profiles_dir, project_dir)
    load_before = os.getloadavg()[0]
    with log_path.open("w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(args, cwd=project_dir, env=env, stdout=log, stderr=log)
        # wait4 gives the resource usage of exactly this child (and what it waited for).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise SystemExit(f"dbt run failed ({process.returncode}); log {log_path}:\n{tail}")

    results = json.loads((target_dir / "run_results.json").read_text())
    model_seconds = {
        r["unique_id"].split(".")[-1]: round(r["execution_time"], 2) for r in results["results"]
    }
    # ru_maxrss is in kilobytes on Linux.
    return BuildRun(
        wall_seconds=round(wall, 2),
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 2),
        peak_rss_gb=round(usage.ru_maxrss * 1024 / GIB, 2),
        load_average_before=round(load_before, 2),
        dbt_elapsed_seconds=round(results["elapsed_time"], 2),
        model_seconds=model_seconds,
    )


def count_rows(warehouse: Path) -> dict[str, int]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            mart: con.execute(f"select count(*) from marts.{mart}").fetchone()[0] for mart in MARTS
        }


def raw_counts(warehouse: Path) -> tuple[int, int]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        events, users = con.execute(
            "select count(*), count(distinct user_id) from raw.events"
        ).fetchone()
    return events, users


# ----------------------------------------------------------------------------- the benchmark


def bench_size(n_events: int, args: argparse.Namespace) -> SizeResult:
    work_dir: Path = args.work_dir
    events_dir, generated = cached_events(work_dir, n_events, args.seed, args.regenerate)
    print(f"\n== {n_events:,} events: {generated['n_events']:,} generated in {events_dir}")
    ingested, ingest_seconds = fresh_warehouse(
        work_dir, n_events, events_dir, reuse=args.reuse_ingested
    )
    events, users = raw_counts(ingested)
    print(f"   ingested {events:,} events of {users:,} users in {ingest_seconds:.1f} s")
    result = SizeResult(n_events, events, users, generated, round(ingest_seconds, 2))

    # Every repeat starts from a copy of the freshly ingested file, so each is a first build.
    # The copy has the same path for every size, as a deployed warehouse would: dbt keys its
    # partial parsing on the profile, so a path that changed would force a full parse.
    warehouse = work_dir / "warehouse.duckdb"
    # A target folder per project, so the partial parsing of two projects never mixes.
    is_default = args.project_dir == DBT_PROJECT_DIR
    target_dir = work_dir / ("target" if is_default else f"target-{args.project_dir.name}")
    target_dir.mkdir(parents=True, exist_ok=True)
    prepare_dbt(warehouse, target_dir, args.profiles_dir, args.project_dir)
    for repeat in range(args.repeat):
        warehouse.unlink(missing_ok=True)
        Path(f"{warehouse}.wal").unlink(missing_ok=True)
        shutil.copyfile(ingested, warehouse)
        log_path = work_dir / f"dbt-run-{n_events}.log"
        run = timed_dbt_run(warehouse, target_dir, log_path, args.profiles_dir, args.project_dir)
        result.runs.append(run)
        print(
            f"   run {repeat + 1}/{args.repeat}: {run.wall_seconds:.1f} s wall "
            f"({events / run.wall_seconds:,.0f} events/s), {run.cpu_seconds:.1f} s CPU, "
            f"peak {run.peak_rss_gb:.2f} GB (load average before: {run.load_average_before})"
        )
    result.mart_rows = count_rows(warehouse)
    if not (args.keep_warehouse or args.reuse_ingested):
        ingested.unlink(missing_ok=True)

    best = result.best
    for model, seconds in best.model_seconds.items():
        print(f"     {model:<28} {seconds:7.2f} s")
    for mart, rows in result.mart_rows.items():
        print(f"     rows in marts.{mart:<20} {rows:>12,}")
    return result


def write_results(results: list[SizeResult], args: argparse.Namespace) -> None:
    machine = machine_info(("duckdb", "dbt-core", "dbt-duckdb", "pyarrow"), "dbt_project/models")
    report = {
        "benchmark": "dbt run of all models (staging -> intermediate -> marts), no data tests",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "dbt_project_dir": str(args.project_dir),
        "dbt_profiles_dir": str(args.profiles_dir),
        "repeat": args.repeat,
        "sizes": [
            {
                **result.summary(),
                "target_events": result.target_events,
                "users": result.users,
                "ingest_seconds": result.ingest_seconds,
                "generated": result.generated,
                "runs": [asdict(run) for run in result.runs],
            }
            for result in results
        ],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "feature_build.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")

    models = list(results[0].best.model_seconds) if results else []
    lines = [
        "# Feature build benchmark",
        "",
        f"`dbt run` of all models on synthetic events, {report['date']}, "
        f"{machine['cores']} cores, {machine['ram_gb']} GB RAM ({machine['cpu']}); "
        f"duckdb {machine['versions']['duckdb']}, dbt-core {machine['versions']['dbt-core']}, "
        f"dbt-duckdb {machine['versions']['dbt-duckdb']}. Fastest of {args.repeat} run(s). "
        "Wall and CPU time of the dbt process, start-up included; peak = its maximum resident "
        "memory; load = the 1-minute load average as the run started (it still counts the "
        "previous run; well above 1, other work shared the machine: compare CPU s).",
        "",
        "| events | wall s | events/s | CPU s | peak GB | load | " + " | ".join(MARTS) + " rows |",
        "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(MARTS),
    ]
    for result in results:
        s = result.summary()
        rows = " | ".join(f"{s['mart_rows'][m]:,}" for m in MARTS)
        lines.append(
            f"| {s['events']:,} | {s['wall_seconds']:.1f} | {s['events_per_second']:,} "
            f"| {s['cpu_seconds']:.1f} | {s['peak_rss_gb']:.2f} | {s['load_average_before']:.2f} "
            f"| {rows} |"
        )
    lines += [
        "",
        "Seconds per model (from dbt's run_results.json, in build order):",
        "",
        "| model | " + " | ".join(f"{r.events:,} events" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for model in models:
        cells = " | ".join(f"{r.best.model_seconds.get(model, 0.0):.2f}" for r in results)
        lines.append(f"| {model} | {cells} |")
    md_path = args.results_dir / "feature_build.md"
    md_path.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {json_path} and {md_path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="target numbers of events, one benchmark each (default: 1M and 10M)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="timed builds per size")
    parser.add_argument("--seed", type=int, default=42, help="generator seed")
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="events cache and warehouses"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS_DIR, help="where to write results"
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="generate events even if they are cached"
    )
    parser.add_argument(
        "--keep-warehouse",
        action="store_true",
        help="keep the freshly ingested file too (the built warehouse is always kept)",
    )
    parser.add_argument(
        "--profiles-dir",
        type=Path,
        default=DBT_PROJECT_DIR,
        help="folder of the profiles.yml to use (default: the project's), e.g. to try settings",
    )
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=DBT_PROJECT_DIR,
        help="the dbt project to build (default: dbt_project/), e.g. a copy of older models",
    )
    parser.add_argument(
        "--reuse-ingested",
        action="store_true",
        help="reuse (and keep) the ingested file of an earlier run instead of ingesting again",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(n < 1 for n in args.events):
        parser.error("--events and --repeat must be positive")
    args.work_dir = args.work_dir.resolve()
    args.results_dir = args.results_dir.resolve()
    args.profiles_dir = args.profiles_dir.resolve()
    args.project_dir = args.project_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> list[SizeResult]:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = [bench_size(n, args) for n in args.events]
    write_results(results, args)
    return results


if __name__ == "__main__":
    main()
