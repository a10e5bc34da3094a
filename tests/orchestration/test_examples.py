"""Each example run config under docs/examples/ runs as written: the command in its header,
from a checkout laid out like this one (the shared samples beside it, a generated Taobao file
under .local/), in its own state folder. The GPU example is checked against the jobs' config
schema instead (tests/orchestration/test_definitions.py): on a CPU it would train for hours."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ml.data.taobao_sample import write_taobao_file
from ml.settings import PROJECT_ROOT
from tests.conftest import query

EXAMPLES = PROJECT_ROOT / "docs" / "examples"


def header_command(config: Path) -> list[str]:
    """The `dagster asset materialize ...` command in the config's comment header."""
    lines = [
        line.removeprefix("#").strip()
        for line in config.read_text().splitlines()
        if line.startswith("#")
    ]
    text = " ".join(lines)
    match = re.search(r"(dagster asset materialize .*?-c docs/examples/\S+\.yaml)", text)
    assert match, f"{config.name} shows no command"
    return shlex.split(match.group(1).replace("\\", " "))


SOURCE_EXAMPLES = ("rees46_sample.yaml", "retailrocket_sample.yaml", "taobao.yaml")


def test_every_source_example_is_valid_config_with_a_command() -> None:
    import dagster as dg
    import yaml

    from orchestration.defs.jobs import full_pipeline_job

    job = full_pipeline_job()
    for example in SOURCE_EXAMPLES:
        config = yaml.safe_load((EXAMPLES / example).read_text())
        resolved = dg.validate_run_config(job, config)
        assert resolved["ops"]["raw__events"]["config"]["paths"]
        assert header_command(EXAMPLES / example)[:3] == ["dagster", "asset", "materialize"]


@pytest.mark.slow(0.5)
@pytest.mark.parametrize(
    ("example", "events"),
    # Each as written: 35-40 s on 2 cores (every step in one process, as the examples say).
    [("rees46_sample.yaml", 17_434), ("retailrocket_sample.yaml", 9_385), ("taobao.yaml", 91_205)],
)
def test_an_example_config_runs_as_written(
    example: str, events: int, tmp_path: Path, shared_datasets: Path
) -> None:
    checkout = tmp_path / "repo"
    (checkout / "docs").mkdir(parents=True)
    (checkout / "docs" / "examples").symlink_to(EXAMPLES)
    (tmp_path / "shared").symlink_to(shared_datasets.parent)
    (checkout / ".local").mkdir()
    write_taobao_file(checkout / ".local" / "UserBehavior.csv")
    state = checkout / ".local" / "state"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROPENSITY_") and key not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")
    }
    env.update(
        PROPENSITY_HOME=str(state),
        DAGSTER_HOME=str(state / "dagster"),
        PROPENSITY_DEVELOPMENT="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    (state / "dagster").mkdir(parents=True)
    result = subprocess.run(
        header_command(EXAMPLES / example), cwd=checkout, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warehouse = state / "warehouse.duckdb"
    # Every line of the file is accounted for: kept, quarantined or a duplicate.
    read, reconciled, kept = query(
        warehouse,
        "select sum(rows_read), sum(accepted + quarantined + duplicates), sum(accepted) "
        "from raw.ingested_files",
    )[0]
    assert read == reconciled == events
    assert query(warehouse, "select count(*) from raw.events")[0][0] == kept > 0
    assert query(warehouse, "select count(*) from marts.user_features")[0][0] > 0
