"""Whether the process that left something behind (an Optuna trial, an MLflow run, a Dagster
run) is still alive, so that what a killed process left can be repaired without touching the
work of one that is still running.

Work is labelled with its worker, "<host>:<pid>". A label from another host is never judged
(its pid means nothing here); a recycled pid makes dead work look alive, which is the safe side.
"""

from __future__ import annotations

import os
import socket


def this_worker() -> str:
    """This process's label, "<host>:<pid>"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): existence is all we know


def worker_dead(worker: str) -> bool:
    """True only when `worker` is a label of this host whose process is gone."""
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))
