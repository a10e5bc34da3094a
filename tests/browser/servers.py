"""Real servers for tests: free ports, waiting until a server answers, and the processes a
server leaves behind. Stopping uses `orchestration.ui.stop`, the same code as `make ui`."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ml.settings import PROJECT_ROOT

# Variables that would point a server at the developer's own state instead of a test folder,
# or start the schedules and sensors there.
STATE_VARIABLES = (
    "PROPENSITY_AUTOMATION",
    "DAGSTER_HOME",
    "PROPENSITY_WAREHOUSE",
    "PROPENSITY_LANDING_DIR",
    "PROPENSITY_MLFLOW_ARTIFACTS",
    "PROPENSITY_OPTUNA_STORAGE",
    "PROPENSITY_TRAINING_DIR",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_ID",
)


def isolated_env(base: Mapping[str, str], **values: str) -> dict[str, str]:
    """`base` without the project's state variables, plus `values`."""
    env = {key: value for key, value in base.items() if key not in STATE_VARIABLES}
    return {**env, **values}


def free_port() -> int:
    """A port nobody listens on now (the OS picks it; a race with another process is unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def log_tail(log: Path | None, n_chars: int = 4000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n_chars:]


def start_server(
    command: list[str], env: Mapping[str, str], log: Path, cwd: Path = PROJECT_ROOT
) -> subprocess.Popen:
    """Starts `command` in its own session (so its whole process group can be stopped), with
    stdout and stderr in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_http(
    url: str,
    timeout_s: float,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Polls `url` until it answers 200; fails early, with the server's log, if it exits."""
    deadline = time.monotonic() + timeout_s
    error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"{process.args[:2]} exited with {process.returncode} before {url} answered:\n"
                f"{log_tail(log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            error = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout_s:.0f} s ({error}):\n{log_tail(log)}")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie waiting to be reaped."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, found through the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if running(p)}
