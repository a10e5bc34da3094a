"""`make ui` for real: `python -m orchestration.ui` starts Dagster, MLflow and the Optuna dashboard
on free ports and a temporary project state, they answer over HTTP, and one Ctrl-C (SIGINT)
stops every process they started and frees every port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from ml.study import optuna_storage
from orchestration import ui
from tests.browser.servers import (
    descendants,
    free_port,
    isolated_env,
    log_tail,
    port_open,
    running,
    start_server,
    wait_for_http,
)

START_TIMEOUT_S = 150
STUDY = "purchase-propensity-xgb"
JOURNAL = "optuna.journal"  # the default Optuna storage under PROPENSITY_HOME


def test_commands_bind_to_localhost_on_the_project_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path))
    for variable in ("MLFLOW_TRACKING_URI", "PROPENSITY_OPTUNA_STORAGE"):
        monkeypatch.delenv(variable, raising=False)
    dagster_dev, mlflow_server, dashboard = ui.ui_servers(3001, 5001, 8081)
    for server, port in ((dagster_dev, 3001), (mlflow_server, 5001), (dashboard, 8081)):
        assert server.command[server.command.index("--host") + 1] == "127.0.0.1"
        assert server.command[server.command.index("--port") + 1] == str(port)
        assert server.url == f"http://127.0.0.1:{port}"
    assert mlflow_server.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert dashboard.command[1:3] == ["-m", "orchestration.optuna_dashboard"]
    assert [s.name for s in ui.ui_servers(3001, 5001)] == ["Dagster", "MLflow"]

    # Store URLs (passwords) reach the servers through the environment, never their arguments.
    monkeypatch.setenv("PROPENSITY_OPTUNA_STORAGE", "postgresql://u:secret@db/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:secret@db/mlflow")
    for server in ui.ui_servers(3001, 5001, 8081):
        assert not any("secret" in word for word in server.command), server.name
    # A shared MLflow server (docs/scaling.md) is not started again here.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert [s.name for s in ui.ui_servers(3001, 5001)] == ["Dagster"]


def test_ctrl_c_stops_dagster_mlflow_and_the_optuna_dashboard(tmp_path: Path) -> None:
    home = tmp_path / "local"
    ports = {"dagster": free_port(), "mlflow": free_port(), "optuna": free_port()}
    env = isolated_env(os.environ, PROPENSITY_HOME=str(home))
    # A study in the project's journal, which the dashboard must list.
    study = optuna.create_study(study_name=STUDY, storage=optuna_storage(str(home / JOURNAL)))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    log = tmp_path / "ui.log"
    command = [sys.executable, "-m", "orchestration.ui", "--optuna-dashboard"]
    command += ["--dagster-port", str(ports["dagster"]), "--mlflow-port", str(ports["mlflow"])]
    command += ["--optuna-port", str(ports["optuna"])]
    process = start_server(command, env, log)
    try:
        wait_for_http(
            f"http://127.0.0.1:{ports['dagster']}/server_info", START_TIMEOUT_S, process, log
        )
        wait_for_http(f"http://127.0.0.1:{ports['mlflow']}/health", START_TIMEOUT_S, process, log)
        wait_for_http(
            f"http://127.0.0.1:{ports['optuna']}/api/studies", START_TIMEOUT_S, process, log
        )
        # Each on the project state given by PROPENSITY_HOME, not on the developer's.
        assert (home / "dagster" / "dagster.yaml").exists() and (home / "mlflow.db").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['optuna']}/api/studies") as answer:
            studies = json.load(answer)["study_summaries"]
        assert [s["study_name"] for s in studies] == [STUDY]
        children = descendants(process.pid)
        # dagster dev, its webserver, daemon and code server; mlflow and uvicorn; the dashboard.
        assert len(children) >= 6, children

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=ui.STOP_TIMEOUT_S + 20) == 0, log_tail(log)
        deadline = time.monotonic() + 10  # orphans are reaped by init a moment later
        while any(running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if running(pid)], log_tail(log)
        assert not [name for name, port in ports.items() if port_open(port)]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=ui.STOP_TIMEOUT_S + 20)
            except subprocess.TimeoutExpired:
                for pid in descendants(process.pid) | {process.pid}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
