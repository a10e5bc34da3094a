"""`make ui`: the Dagster UI and the MLflow UI together, and the Optuna dashboard on request,
bound to 127.0.0.1, on the project's DAGSTER_HOME, MLflow store and Optuna storage, so that runs
started by `make run` show up in all of them. Ctrl-C stops them all.

    python -m orchestration.ui [--optuna-dashboard] [--dagster-port 3000] [--mlflow-port 5000]
                               [--optuna-port 8080]

Ports also come from DAGSTER_PORT, MLFLOW_PORT and OPTUNA_DASHBOARD_PORT; OPTUNA_DASHBOARD=1
turns the dashboard on (`make ui OPTUNA_DASHBOARD=1`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml import settings
from orchestration.instance import prepare_dagster_home

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# How long a server may take to stop after Ctrl-C before it is terminated, then killed.
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Server:
    """One UI process: what it is called, where it answers, and how it is started."""

    name: str
    url: str
    command: list[str]
    # Environment defaults of this server; the caller's environment overrides them.
    env: dict[str, str] = field(default_factory=dict)


def dagster_server(port: int) -> Server:
    """`dagster dev`: the webserver plus the daemon that runs queued runs, schedules and sensors.
    Started from the repository root, where workspace.yaml is."""
    command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml"]
    return Server(
        "Dagster", f"http://{HOST}:{port}", [*command, "--host", HOST, "--port", str(port)]
    )


def mlflow_server(port: int) -> Server:
    """The MLflow tracking UI and model registry on the project's store. One worker and no job
    runner (it serves GenAI judges and trace roll-ups, which this project does not use): each
    extra process costs seconds of start-up on a small machine. The store's URI goes in through
    the environment: a postgresql:// one holds a password, which a command line shows to `ps`."""
    command = [
        str(BIN / "mlflow"),
        "server",
        "--default-artifact-root",
        str(settings.mlflow_artifacts_dir()),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_BACKEND_STORE_URI": settings.mlflow_tracking_uri(),
    }
    return Server("MLflow", f"http://{HOST}:{port}", command, env)


def optuna_dashboard_server(port: int) -> Server:
    """optuna-dashboard on the project's study storage (orchestration/optuna_dashboard.py, which
    takes the storage from the environment: never a password on the command line)."""
    command = [str(BIN / "python"), "-m", "orchestration.optuna_dashboard"]
    return Server(
        "Optuna dashboard",
        f"http://{HOST}:{port}",
        [*command, "--host", HOST, "--port", str(port)],
    )


def ui_servers(dagster_port: int, mlflow_port: int, optuna_port: int | None = None) -> list[Server]:
    """The servers `make ui` starts; the Optuna dashboard only when given a port. No MLflow
    server when MLFLOW_TRACKING_URI already names one (a shared server, docs/scaling.md)."""
    servers = [dagster_server(dagster_port)]
    if not settings.mlflow_tracking_uri().startswith(("http://", "https://")):
        servers.append(mlflow_server(mlflow_port))
    if optuna_port is not None:
        servers.append(optuna_dashboard_server(optuna_port))
    return servers


def prepare_state(with_optuna: bool) -> dict[str, str]:
    """Creates the folders the servers expect (DAGSTER_HOME with the project's dagster.yaml and
    its warehouse pool limit) and returns their environment."""
    home = prepare_dagster_home()
    settings.local_dir().mkdir(parents=True, exist_ok=True)
    settings.mlflow_artifacts_dir().mkdir(parents=True, exist_ok=True)
    storage = settings.optuna_storage()
    if with_optuna and "://" not in storage:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def start(server: Server, env: dict[str, str]) -> subprocess.Popen:
    """Starts one server in its own session and process group, so that stopping the group also
    stops the workers it started (dagster dev's webserver, daemon and code server)."""
    return subprocess.Popen(
        server.command,
        env={**server.env, **env},
        cwd=settings.PROJECT_ROOT,
        start_new_session=True,
    )


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(processes: Sequence[subprocess.Popen], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stops every server's process group: SIGINT first (what Ctrl-C in a terminal sends, so each
    server shuts down cleanly), then SIGTERM, then SIGKILL for whatever is still there."""
    for signum, wait_s in (
        (signal.SIGINT, timeout_s),
        (signal.SIGTERM, 5.0),
        (signal.SIGKILL, 5.0),
    ):
        alive = [p for p in processes if p.poll() is None or _group_alive(p.pid)]
        if not alive:
            return
        for process in alive:
            _signal_group(process, signum)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if all(p.poll() is not None and not _group_alive(p.pid) for p in alive):
                break
            time.sleep(0.2)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    environ = os.environ
    parser.add_argument("--dagster-port", type=int, default=int(environ.get("DAGSTER_PORT", 3000)))
    parser.add_argument("--mlflow-port", type=int, default=int(environ.get("MLFLOW_PORT", 5000)))
    parser.add_argument(
        "--optuna-port", type=int, default=int(environ.get("OPTUNA_DASHBOARD_PORT", 8080))
    )
    parser.add_argument(
        "--optuna-dashboard",
        action="store_true",
        default=environ.get("OPTUNA_DASHBOARD", "").lower() in ("1", "true", "yes"),
        help="also serve the Optuna dashboard of the project's study storage",
    )
    args = parser.parse_args(argv)

    # Ctrl-C and SIGTERM both end the wait below and stop every server. Set explicitly, since a
    # process started in the background of a script inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    servers = ui_servers(
        args.dagster_port, args.mlflow_port, args.optuna_port if args.optuna_dashboard else None
    )
    env = prepare_state(args.optuna_dashboard)
    processes: list[subprocess.Popen] = []
    exit_code = 0
    try:
        for server in servers:
            processes.append(start(server, env))
        urls = "   ".join(f"{server.name}: {server.url}" for server in servers)
        if not any(server.name == "MLflow" for server in servers):
            urls += f"   MLflow: {settings.mlflow_tracking_uri()} (shared, not started here)"
        print(f"{urls}   (Ctrl-C stops them all)", flush=True)
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        for server, process in zip(servers, processes, strict=True):
            if process.poll() is not None:
                print(f"{server.name} exited with code {process.returncode}", file=sys.stderr)
                exit_code = 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(processes)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
