"""Benchmark of the scoring service: latency (p50/p95/p99) and throughput of `propensity serve`
on 127.0.0.1, with a bounded load generator, for single and batch requests, with XGBoost and
with the sequence model as champion; and a hot swap under load.

It serves a state a run left (default: the project's `.local`, what `make run` leaves: both
families registered, the snapshot published). For each family it moves the champion alias to
that family's newest version, waits until the service has swapped, then sends a fixed number
of requests (a count, not a duration) from `--clients` threads, each with its own keep-alive
connection and one request in flight: single requests (one shopper as of the latest cutoff,
with a cart event of the session five minutes before it; shoppers active there with at most
500 past events), then batch requests of `--batch` such shoppers. As of the latest cutoff,
not now: the demo shop's events are of 2025, and "now" would find every shopper cold.
Finally it moves the alias back and forth while the clients keep sending
single requests, and counts the failed ones. The load generator runs on the same 2 cores as
the service: the figures are of the whole machine.

Writes bench/results/serving.json and bench/results/serving.md.

Usage::

    .venv/bin/python bench/serving.py                  # on .local (after make run)
    .venv/bin/python bench/serving.py --requests 400 --clients 2 --state .local/runs/taobao
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import mlflow
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import PROJECT_ROOT, machine_info  # noqa: E402
from ml.data.dbt_plugin import register_pseudonym  # noqa: E402

RESULTS = PROJECT_ROOT / "bench" / "results"
MODEL = "purchase-propensity"


def shoppers(state: Path, n: int, max_events: int = 500) -> tuple[list[str], str]:
    """Raw ids of shoppers active at the latest cutoff (they have features there) with at most
    `max_events` events before it, and that cutoff. Read from the warehouse (the bench may
    read the raw layer; the snapshot has pseudonyms only)."""
    with duckdb.connect() as con:
        register_pseudonym(con)
        con.execute(f"attach '{state / 'warehouse.duckdb'}' as wh (read_only)")
        (cutoff,) = con.execute("select max(cutoff_time) from wh.marts.cutoffs").fetchall()[0]
        rows = con.execute(
            f"""
            with counts as (
                select user_id as raw_id, pseudonym(user_id) as user_id from wh.raw.events
                where event_time < ? group by user_id having count(*) <= {max_events}
            )
            select raw_id from counts join wh.marts.user_features f using (user_id)
            where f.cutoff_time = ? order by hash(raw_id) limit {n}
            """,
            [cutoff, cutoff],
        ).fetchall()
    return [row[0] for row in rows], cutoff.isoformat()


def cart_event(cutoff: str) -> dict:
    """A cart event of the session, five minutes before the cutoff asked about."""
    at = (datetime.fromisoformat(cutoff) - timedelta(minutes=5)).isoformat()
    return {"event_time": at, "event_type": "cart", "product_id": "1004767", "price": 25.0}


class Client:
    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: dict) -> tuple[int, float]:
        started = time.perf_counter()
        self.connection.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started


def load(port: int, bodies: list[tuple[str, dict]], clients: int) -> dict:
    """Sends every body once from `clients` threads; latency percentiles and throughput."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    queue = list(reversed(bodies))

    def worker() -> None:
        client = Client(port)
        while True:
            with lock:
                if not queue:
                    return
                path, body = queue.pop()
            status, seconds = client.post(path, body)
            with lock:
                latencies.append(seconds)
                statuses.append(status)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "failed": sum(s != 200 for s in statuses),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def wait_for(port: int, version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/model")
            if json.loads(connection.getresponse().read())["propensity"]["version"] == version:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service did not load version {version}")
        time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=PROJECT_ROOT / ".local")
    parser.add_argument("--requests", type=int, default=300, help="single requests per family")
    parser.add_argument("--batch", type=int, default=10, help="shoppers per batch request")
    parser.add_argument("--batches", type=int, default=30, help="batch requests per family")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    state = args.state.resolve()
    tracking = mlflow.MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    newest: dict[str, str] = {}
    for version in tracking.search_model_versions(f"name='{MODEL}'"):
        family = version.tags.get("family", "?")
        if int(version.version) > int(newest.get(family, 0)):
            newest[family] = str(version.version)
    original = str(tracking.get_model_version_by_alias(MODEL, "champion").version)
    ids, cutoff = shoppers(state, args.requests)

    env = {**os.environ, "PROPENSITY_DEVELOPMENT": os.environ.get("PROPENSITY_DEVELOPMENT", "1")}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "propensity"), "serve", "--state", str(state)]
        + ["--port", str(args.port), "--poll-seconds", "1"],
        env=env,
    )
    results: dict = {"families": {}, "machine": machine_info(["duckdb", "fastapi"], "ml")}
    try:
        wait_for(args.port, original)
        for family, version in sorted(newest.items()):
            tracking.set_registered_model_alias(MODEL, "champion", version)
            wait_for(args.port, version)
            singles = [
                ("/score", {"user_id": i, "as_of": cutoff, "events": [cart_event(cutoff)]})
                for i in ids
            ]
            load(args.port, singles[:20], args.clients)  # warm-up, not counted
            single = load(args.port, singles, args.clients)
            plain = [(path, {**body, "explain": False}) for path, body in singles]
            unexplained = load(args.port, plain, args.clients)
            batches = [
                (
                    "/score/batch",
                    {
                        "requests": [
                            {"user_id": i, "as_of": cutoff} for i in ids[k : k + args.batch]
                        ]
                    },
                )
                for k in range(0, args.batches * args.batch, args.batch)
            ]
            batch = load(args.port, batches, args.clients)
            batch["shoppers_per_s"] = round(batch["requests_per_s"] * args.batch, 1)
            results["families"][family] = {
                "version": version,
                "single": single,
                "single, explain false": unexplained,
                "batch": batch,
            }
            print(family, "single", single, "\n", family, "batch", batch, flush=True)

        # The hot swap under load: the alias moves twice while the clients keep sending.
        swaps: list[str] = []
        stop = threading.Event()

        def move_alias() -> None:
            for version in [*sorted(newest.values()), original]:
                if stop.wait(2.0):
                    return
                tracking.set_registered_model_alias(MODEL, "champion", version)
                swaps.append(version)

        mover = threading.Thread(target=move_alias)
        mover.start()
        singles = [("/score", {"user_id": i, "as_of": cutoff}) for i in ids] * 2
        swap = load(args.port, singles, args.clients)
        stop.set()
        mover.join()
        swap["alias_moves"] = len(swaps)
        results["hot_swap"] = swap
        print("hot swap", swap, flush=True)
    finally:
        tracking.set_registered_model_alias(MODEL, "champion", original)
        server.terminate()
        server.wait(timeout=30)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| champion | request | requests | failed | p50 ms | p95 ms | p99 ms | requests/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, figures in results["families"].items():
        for kind in ("single", "single, explain false", "batch"):
            f = figures[kind]
            lines.append(
                f"| {family} v{figures['version']} | {kind} | {f['requests']} | {f['failed']} | "
                f"{f['p50_ms']} | {f['p95_ms']} | {f['p99_ms']} | {f['requests_per_s']} |"
            )
    s = results["hot_swap"]
    lines.append(
        f"\nHot swap: {s['alias_moves']} alias moves during {s['requests']} single requests, "
        f"{s['failed']} failed."
    )
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
