"""The product on shared servers, all on one real PostgreSQL: Dagster's storage
(dagster-postgres, by configuration in orchestration/instance.py), an `mlflow server` whose
backend store is PostgreSQL, and the Optuna study with two tuning workers. A short training run
ends with a champion alias in that server's registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from ml.study import optuna_storage
from orchestration.instance import POSTGRES_URL_VARIABLE
from tests.postgres.conftest import query_postgres
from tests.privacy_scan import files_holding

BIN = Path(sys.executable).parent
PIPELINE = Path(__file__).with_name("pipeline_on_servers.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(
    tmp_path: Path, postgres_database: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and a proxied artifact root;
    yields its URL and the store's URL."""
    store = postgres_database("mlflow")
    port = free_port()
    env = {
        **os.environ,
        # The store's URL (and password) through the environment, not the command line.
        "MLFLOW_BACKEND_STORE_URI": store,
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "mlflow-artifacts"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [*command, "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "mlflow-server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, store
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow(1.4)
def test_a_short_training_run_on_postgresql_servers_ends_with_a_champion(
    tmp_path: Path, postgres_database: Callable[[str], str], mlflow_server: tuple[str, str]
) -> None:
    tracking, mlflow_store = mlflow_server
    dagster_store = postgres_database("dagster")
    optuna_store = postgres_database("optuna")
    home = tmp_path / "state"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PROPENSITY_", "MLFLOW_")) and key != "DAGSTER_HOME"
    }
    env.update(
        {
            "PROPENSITY_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            "PROPENSITY_DEVELOPMENT": "1",
            POSTGRES_URL_VARIABLE: dagster_store,
            "MLFLOW_TRACKING_URI": tracking,
            "PROPENSITY_OPTUNA_STORAGE": optuna_store,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
    )
    result = subprocess.run(
        [sys.executable, str(PIPELINE)], env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["success"]

    # Dagster kept the run and its materializations in PostgreSQL, not in SQLite files; its
    # dagster.yaml names the URL's variable, never the URL, and keeps the pools and monitoring.
    config = yaml.safe_load((home / "dagster" / "dagster.yaml").read_text())
    assert config["storage"] == {"postgres": {"postgres_url": {"env": POSTGRES_URL_VARIABLE}}}
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_monitoring"]["enabled"] is True
    assert not list((home / "dagster").rglob("*.db"))
    ((status,),) = query_postgres(
        dagster_store, "select status from runs where run_id = %s", (run["run_id"],)
    )
    rows = query_postgres(
        dagster_store,
        "select distinct asset_key from event_logs "
        "where run_id = %s and dagster_event_type = 'ASSET_MATERIALIZATION'",
        (run["run_id"],),
    )
    materialized = {key for (key,) in rows}
    assert status == "SUCCESS"
    # The warehouse pool's limit lives in PostgreSQL now, still 1 (DuckDB's one writer).
    slots = query_postgres(
        dagster_store,
        "select \"limit\" from concurrency_limits where concurrency_key = 'duckdb_warehouse'",
    )
    assert slots == [(1,)], slots
    for key in (
        '["raw", "events"]',
        '["marts", "user_features"]',
        '["marts", "labels"]',
        '["training", "xgb_study"]',
        '["training", "champion"]',
    ):
        assert key in materialized, sorted(materialized)

    # The study ran on two tuning workers against the PostgreSQL study.
    study = optuna.load_study(
        study_name="purchase-propensity-xgb", storage=optuna_storage(optuna_store)
    )
    order = study.user_attrs["work_order"]  # the asset queued its round for workers
    assert all(t.user_attrs["round"] == order["round_id"] for t in study.trials)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    # ... and its trials ran in worker processes, not in the step's own.
    assert all(t.user_attrs["worker"].split(":")[1] != str(run["pid"]) for t in study.trials)

    # The registry behind the server: version 1 registered, the champion alias on it, its
    # artifacts served by the server (the client never wrote to the server's folder itself).
    client = mlflow.MlflowClient(tracking, registry_uri=tracking)
    champion = client.get_model_version_by_alias("purchase-propensity", "champion")
    assert str(champion.version) == "1"
    model = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri("purchase-propensity", "1"),
        tracking_uri=tracking,
        dst_path=str(tmp_path / "champion"),
    )
    assert (Path(model) / "MLmodel").exists()
    assert not (home / "mlartifacts").exists()
    assert list((tmp_path / "mlflow-artifacts").rglob("MLmodel"))

    # No password of the stores landed in the state folder or in Dagster's event log.
    secret = f":{dagster_store.split(':')[2].split('@')[0]}@"
    assert files_holding([home], secret, set()) == {}
    ((leaks,),) = query_postgres(
        dagster_store, "select count(*) from event_logs where event like %s", (f"%{secret}%",)
    )
    assert leaks == 0
    assert mlflow_store != tracking
