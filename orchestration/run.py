"""`make run`: the full pipeline on the embedded default, recorded in the project's Dagster
instance (so the run shows up in `dagster dev`), then a short summary of what it left where."""

from __future__ import annotations

import os
import sys

import dagster as dg
import duckdb

from ml import settings

MART_TABLES = ("marts.cutoffs", "marts.user_features", "marts.labels", "marts.user_sequences")


def warehouse_summary() -> list[str]:
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as con:

        def scalar(sql: str) -> float:
            return con.sql(sql).fetchall()[0][0]

        lines = [
            f"  {table:<24} {scalar(f'select count(*) from {table}'):>12,} rows"
            for table in ("raw.events", "raw.quarantine", *MART_TABLES)
        ]
        rate = scalar("select avg(purchased::int) from marts.labels where horizon_complete")
    lines.append(f"  purchase rate within the horizon (complete windows): {rate:.2%}")
    return lines


def main() -> int:
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").touch()  # an empty instance config: everything stored in home
    os.environ["DAGSTER_HOME"] = str(home)
    from orchestration.definitions import defs

    job = defs().resolve_job_def("full_pipeline")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        print(f"full_pipeline failed (run {result.run_id}); see `make ui` for the logs.")
        return 1
    print(f"\nfull_pipeline succeeded (run {result.run_id})")
    print(f"Warehouse: {settings.warehouse_path()}")
    print("\n".join(warehouse_summary()))
    print(f"Dagster instance: {home}  (browse it with `make ui`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
