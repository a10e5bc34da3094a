"""`make ui`: the Dagster UI and the MLflow UI together, bound to 127.0.0.1, on the project's
DAGSTER_HOME and MLflow store, so that runs started by `make run` show up in both.
Ctrl-C stops both."""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ml import settings

BIN = Path(sys.executable).parent


def ui_commands(dagster_port: int, mlflow_port: int) -> list[list[str]]:
    return [
        [
            str(BIN / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "--host",
            "127.0.0.1",
            "--port",
            str(dagster_port),
        ],
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            settings.mlflow_tracking_uri(),
            "--default-artifact-root",
            str(settings.mlflow_artifacts_dir()),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
        ],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dagster-port", type=int, default=int(os.environ.get("DAGSTER_PORT", 3000))
    )
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    args = parser.parse_args()

    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()
    settings.mlflow_artifacts_dir().mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    # Each server in its own process group, so that stopping it also stops its workers.
    processes = [
        subprocess.Popen(command, env=env, start_new_session=True)
        for command in ui_commands(args.dagster_port, args.mlflow_port)
    ]
    print(
        f"Dagster UI: http://127.0.0.1:{args.dagster_port}   "
        f"MLflow UI: http://127.0.0.1:{args.mlflow_port}   (Ctrl-C stops both)",
        flush=True,
    )
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
