"""A one-asset job that holds the warehouse pool for a while: the run a test kills."""

import os
import time
from pathlib import Path

import dagster as dg

from orchestration.defs.resources import WAREHOUSE_POOL


class HoldConfig(dg.Config):
    seconds: float = 0.0
    pid_file: str = ""


@dg.asset(pool=WAREHOUSE_POOL)
def holds_the_warehouse(config: HoldConfig) -> None:
    if config.pid_file:
        Path(config.pid_file).write_text(str(os.getpid()))
    time.sleep(config.seconds)


def hold_job() -> dg.JobDefinition:
    return dg.Definitions(
        assets=[holds_the_warehouse], jobs=[dg.define_asset_job("hold", selection="*")]
    ).resolve_job_def("hold")
