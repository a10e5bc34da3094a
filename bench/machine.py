"""The machine and versions behind a benchmark figure, shared by the bench scripts."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*git_args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *git_args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def machine_info(packages: Sequence[str], watched_folder: str) -> dict:
    """Cores, memory, CPU model, the versions of `packages`, the git commit, and whether
    `watched_folder` (the code being measured) had uncommitted changes."""
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    dirty_key = "git_dirty_" + Path(watched_folder).name
    return {
        "cores": cores,
        "ram_gb": round(ram_bytes / GIB, 1),
        "cpu": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in packages},
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        dirty_key: bool(_git("status", "--porcelain", "--", watched_folder)),
    }


# Other processes' busy cores above which a measurement is flagged as taken on a shared machine.
SHARED_MACHINE_CORES = 0.25


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall seconds, this process's CPU seconds, and how many cores other processes kept busy
    meanwhile (the machine's busy CPU time minus ours, per wall second): a figure taken while
    other work ran is slower than the machine can do."""

    def __enter__(self) -> Meter:
        self.load_average_before = round(os.getloadavg()[0], 2)
        self._busy = machine_busy_seconds()
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        busy = machine_busy_seconds()
        self.other_busy_cores = (
            None
            if busy is None or self._busy is None
            else round(max(0.0, busy - self._busy - self.cpu_seconds) / self.seconds, 2)
        )
