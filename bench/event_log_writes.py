"""Dagster's SQLite event log on this disk against memory (/dev/shm): why `make test` puts the
tests' temporary folders in /dev/shm (docs/testing.md). One in-process run of an op that logs
400 debug events (what a dbt build's lines cost) per folder, alternating, twice each.

    .venv/bin/python bench/event_log_writes.py
"""

import sys
import tempfile
import time

import dagster as dg

EVENTS = 400
FOLDERS = ("/tmp", "/dev/shm")


@dg.op
def chatty(context: dg.OpExecutionContext) -> None:
    for i in range(EVENTS):
        context.log.debug(f"line {i} " + "x" * 80)


@dg.job
def chatty_job() -> None:
    chatty()


def seconds_in(folder: str) -> float:
    with (
        tempfile.TemporaryDirectory(dir=folder) as scratch,
        dg.instance_for_test(temp_dir=scratch) as instance,
    ):
        start = time.perf_counter()
        chatty_job.execute_in_process(instance=instance)
        return time.perf_counter() - start


def main() -> int:
    for _ in range(2):
        for folder in FOLDERS:
            print(f"{folder}: {EVENTS} events in {seconds_in(folder):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
