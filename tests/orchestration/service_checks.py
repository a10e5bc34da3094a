"""The scoring service (`propensity serve`) on a state that a real run left: it answers as the
batch scored, says when a shopper is unknown, refuses bad requests with a 4xx, and swaps the
champion while requests keep coming, keeping the old one when the new one fails to load.
Called by tests/orchestration/test_cli.py on its Taobao run's state (a run costs minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow

from tests.conftest import keyed_warehouse
from tests.orchestration.fresh_env import free_port

PROPENSITY = Path(sys.executable).parent / "propensity"


class Service:
    def __init__(self, state: Path, home: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPENSITY_")}
        env.pop("MLFLOW_TRACKING_URI", None)
        env["PROPENSITY_DEVELOPMENT"] = "1"
        self.process = subprocess.Popen(
            [str(PROPENSITY), "serve", "--state", str(state), "--port", str(self.port)]
            + ["--poll-seconds", "1"],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 90
        while True:
            assert self.process.poll() is None, self.process.stdout.read()[-3000:]
            try:
                self.get("/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "propensity serve did not start"
                time.sleep(0.5)

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any, raw: bytes | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=raw if raw is not None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def batch_scores(state: Path, rows: int) -> list[tuple[str, float, datetime]]:
    """(raw id, batch score, cutoff) of `rows` shoppers scored at the latest cutoff."""
    with keyed_warehouse(state / "warehouse.duckdb") as con:
        return con.execute(
            f"""
            with ids as (select distinct user_id as raw_id from wh.raw.events),
            keyed as (select raw_id, pseudonym(raw_id) as user_id from ids)
            select keyed.raw_id, p.score, p.cutoff_time
            from wh.predictions.user_propensity p join keyed using (user_id)
            order by p.score desc limit {rows}
            """
        ).fetchall()


def check_the_service(state: Path, home: Path) -> None:
    tracking = mlflow.MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    champion = tracking.get_model_version_by_alias("purchase-propensity", "champion")
    service = Service(state, home)
    try:
        assert service.get("/health")["status"] == "ok"
        model = service.get("/model")
        assert model["propensity"]["version"] == str(champion.version)
        assert "/score" in service.get("/openapi.json")["paths"]

        # As of the batch's cutoff, the service's probability is the batch's score (float32
        # networks and threaded sums: equal to 1e-5 relative).
        scored = batch_scores(state, 5)
        assert len(scored) == 5
        for raw_id, score, cutoff in scored:
            status, body = service.post("/score", {"user_id": raw_id, "as_of": cutoff.isoformat()})
            assert status == 200, body
            assert not body["cold_start"] and body["model"]["version"] == str(champion.version)
            assert abs(body["probability"] - score) <= 1e-5 * score, (body, score)
            assert body["cutoff"] == cutoff.isoformat() and body["history_events"] > 0
            assert body["action"]["action"] in (
                "win_back_cart",
                "reengage_lapsing_buyer",
                "offer_in_category",
            )
        status, batch = service.post(
            "/score/batch",
            {"requests": [{"user_id": r, "as_of": c.isoformat()} for r, _, c in scored]},
        )
        assert status == 200
        # The batch form answers each shopper as the single form does (one pass of the
        # feature statements and of the model: float32 networks agree to 1e-5 relative).
        singles = [
            service.post("/score", {"user_id": r, "as_of": c.isoformat()})[1]["probability"]
            for r, _, c in scored
        ]
        for one, many in zip(singles, batch["results"], strict=True):
            assert abs(many["probability"] - one) <= 1e-5 * one

        # An unknown shopper gets a cold start that says so; live events make one known.
        status, cold = service.post("/score", {"user_id": "never-seen-7"})
        assert status == 200 and cold["cold_start"] and cold["probability"] is None
        live = [
            {
                "event_time": datetime.now(UTC).replace(tzinfo=None).isoformat(),
                "event_type": kind,
                "product_id": "9",
            }
            for kind in ("view", "view", "cart")
        ]
        status, warm = service.post("/score", {"user_id": "never-seen-7", "events": live})
        assert status == 200 and not warm["cold_start"] and warm["live_events"] == 3
        assert warm["action"]["action"] == "win_back_cart"

        # Bad requests: a 4xx with the reason, never a crash; ids never reach SQL as text.
        future = [{"event_time": "2999-01-01T00:00:00", "event_type": "view", "product_id": "1"}]
        unknown = [{"event_time": "2017-12-01T00:00:00", "event_type": "click", "product_id": "1"}]
        unparseable = [{"event_time": "yesterday", "event_type": "view", "product_id": "1"}]
        too_many = live * 200
        for body, reason in (
            ({"user_id": "1", "events": future}, "in the future"),
            ({"user_id": "1", "events": unknown}, "Input should be 'view'"),
            ({"user_id": "1", "events": unparseable}, "datetime"),
            ({"user_id": "1", "events": too_many}, "at most 500"),
            ({"user_id": " 1 "}, "pattern"),
            ({"user_id": "a\u0000b"}, "pattern"),
            ({"user_id": "1", "as_of": "2017-12-01T05:00:00"}, "not a cutoff of the grid"),
            ({"requests": []}, "at least 1"),
            ({"requests": [{"user_id": "1"}, {"user_id": "1"}]}, "at most once per batch"),
        ):
            path = "/score/batch" if "requests" in body else "/score"
            status, answer = service.post(path, body)
            assert status == 422 and reason in json.dumps(answer), (body, answer)
        status, answer = service.post("/score", None, raw=b'{"user_id": ')
        assert status == 422 and "json_invalid" in json.dumps(answer)
        status, answer = service.post("/score", {"user_id": "x'); drop table raw.events; --"})
        assert status == 200 and answer["cold_start"]

        check_a_hot_swap(service, tracking, str(champion.version), scored[0][0])
    finally:
        service.stop()


def check_a_hot_swap(
    service: Service, tracking: mlflow.MlflowClient, old: str, shopper: str
) -> None:
    """Moving the alias swaps the model within the poll while requests keep coming (none
    fails); an alias moved to a version that cannot load keeps the old model and says so."""
    versions = [
        str(v.version) for v in tracking.search_model_versions("name='purchase-propensity'")
    ]
    new = next(v for v in versions if v != old)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(service.post("/score", {"user_id": shopper})[0])

    client = threading.Thread(target=load)
    client.start()
    try:
        tracking.set_registered_model_alias("purchase-propensity", "champion", new)
        deadline = time.monotonic() + 60
        while service.get("/model")["propensity"]["version"] != new:
            assert time.monotonic() < deadline, "the new champion was not loaded"
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        client.join()
    assert len(statuses) > 3 and set(statuses) == {200}, statuses

    broken = tracking.create_model_version(
        "purchase-propensity", source=str(Path("/nonexistent/model")), tags={"family": "x"}
    )
    tracking.set_registered_model_alias("purchase-propensity", "champion", broken.version)
    deadline = time.monotonic() + 60
    while service.get("/health")["status"] != "degraded":
        assert time.monotonic() < deadline, "the failed load was not reported"
        time.sleep(0.2)
    health = service.get("/health")
    assert health["model_version"] == new and health["problems"]
    assert service.post("/score", {"user_id": shopper})[0] == 200
    tracking.set_registered_model_alias("purchase-propensity", "champion", old)
