"""The project's Dagster instance: DAGSTER_HOME and a dagster.yaml that limits the warehouse pool.

DuckDB allows one writing process per file, and a read-only open fails while another process
writes, so every asset and check that opens the warehouse is in the pool `duckdb_warehouse`
(orchestration/defs/resources.py). The limit of 1 lives in the instance: `concurrency.pools`
with op granularity, so the multiprocess executor and concurrent runs (the nightly schedule, the
landing sensor, a Launchpad run) take turns at the warehouse while other steps run in parallel.

`make run`, `make nightly`, orchestration/run.py, orchestration/nightly.py and `make ui` call
`prepare_dagster_home()` before anything opens the instance.
"""

import os
from pathlib import Path
from typing import Any

import yaml

from ml import settings

# Marks a dagster.yaml written here: such a file is rewritten when the settings change; a file
# without it was written by a person and is left alone.
MANAGED_MARKER = "# Managed by orchestration/instance.py"
WAREHOUSE_POOL_LIMIT = 1
# Set to a postgresql:// URL, Dagster keeps its runs, event logs and schedules in PostgreSQL
# (dagster-postgres) instead of SQLite files under DAGSTER_HOME: what a Dagster service shared
# by a team, or several machines, needs (docs/scaling.md). dagster.yaml names the variable,
# never its value, so the password stays out of the file.
POSTGRES_URL_VARIABLE = "PROPENSITY_DAGSTER_POSTGRES_URL"


def instance_settings(pool_limit: int = WAREHOUSE_POOL_LIMIT) -> dict[str, Any]:
    """dagster.yaml content; also usable as `dg.instance_for_test(overrides=...)`.

    The default limit is the limit of both pools: the warehouse (DuckDB's one writer) and
    training_compute (studies and final models take turns at the cores); change one with
    `dagster instance concurrency set <pool> <n>`.
    """
    return {
        "concurrency": {
            "pools": {"granularity": "op", "default_limit": pool_limit},
        },
        # The daemon (make ui, dagster dev) fails runs whose worker died and frees the slots of
        # finished runs; runs it does not watch are repaired by orchestration/recovery.py.
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": 60,
            "free_slots_after_run_end_seconds": 60,
        },
        "telemetry": {"enabled": False},
        **storage_settings(),
    }


def storage_settings() -> dict[str, Any]:
    """dagster.yaml's `storage`: PostgreSQL when POSTGRES_URL_VARIABLE is set, else none (the
    SQLite files Dagster keeps under DAGSTER_HOME)."""
    if not os.environ.get(POSTGRES_URL_VARIABLE):
        return {}
    return {"storage": {"postgres": {"postgres_url": {"env": POSTGRES_URL_VARIABLE}}}}


def prepare_dagster_home(home: Path | None = None) -> Path:
    """Creates DAGSTER_HOME with the pool limit in dagster.yaml, exports DAGSTER_HOME, and
    returns it. A dagster.yaml without the marker is kept as is (with a warning when it has no
    pool limit), so a hand-tuned instance is never overwritten."""
    home = Path(home) if home is not None else settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "dagster.yaml"
    existing = config_path.read_text() if config_path.exists() else ""
    if existing.strip() and not existing.startswith(MANAGED_MARKER):
        pools = (yaml.safe_load(existing) or {}).get("concurrency", {}).get("pools", {})
        if "default_limit" not in pools:
            print(
                f"warning: {config_path} sets no concurrency.pools.default_limit; run "
                "`dagster instance concurrency set duckdb_warehouse 1` or DuckDB lock errors "
                "may follow"
            )
    else:
        config_path.write_text(
            f"{MANAGED_MARKER}: edits are overwritten; remove this line to keep them.\n"
            + yaml.safe_dump(instance_settings(), sort_keys=False)
        )
    os.environ["DAGSTER_HOME"] = str(home)
    return home


if __name__ == "__main__":
    print(prepare_dagster_home())
