"""Every command in the `bash` blocks of README.md and docs/*.md works as written: the cheap ones
run here, in order, one shell session per page, from a folder laid out like a checkout (the
shared samples beside it); `propensity run` runs with `--check` appended (its pre-flight on the
files the page's earlier commands generated), and the long runs are matched to the test that
runs them as written. A command added to the docs that this test does not know fails it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ml.settings import PROJECT_ROOT
from orchestration.cli import parser as propensity_parser
from tests.orchestration.test_examples import EXAMPLES, SOURCE_EXAMPLES, header_command

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
VENV = Path(sys.executable).parent.parent
# Commands that run for minutes, and the tests that run them (or what they do) as written.
LONG_RUNS = {
    "orchestration.nightly": "tests/orchestration/test_operations.py::"
    "test_backfill_job_loads_a_date_range_and_rebuilds_its_cutoffs",
    "dagster asset materialize": "tests/orchestration/test_examples.py::"
    "test_an_example_config_runs_as_written",
    "propensity summary": "tests/orchestration/test_cli.py::"
    "test_a_small_run_on_a_taobao_file_ends_with_the_summary",
    "mlflow models serve": "tests/orchestration/test_materialize.py::"
    "test_full_pipeline_multiprocess_with_the_pool_then_a_night",
    "mlflow server": "tests/postgres/test_servers.py::"
    "test_a_short_training_run_on_postgresql_servers_ends_with_a_champion",
    ".ci/postgres.sh start": "tests/postgres/conftest.py::postgres_admin_url",
}


def documented_commands(page: Path) -> list[str]:
    """The command lines of a page's ```bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(line.strip())
    return commands


def test_the_pages_have_commands() -> None:
    assert len(documented_commands(PROJECT_ROOT / "README.md")) >= 6
    assert any("propensity run" in c for p in PAGES for c in documented_commands(p))


def test_the_long_runs_are_tested() -> None:
    for test_id in LONG_RUNS.values():
        path, name = test_id.split("::")
        assert f"def {name}(" in (PROJECT_ROOT / path).read_text(), test_id
    # CI starts the PostgreSQL server the tests in tests/postgres/ use with the documented script.
    assert "bash .ci/postgres.sh start" in (PROJECT_ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", [p for p in PAGES if documented_commands(p)], ids=lambda p: p.name)
def test_every_documented_command_works_as_written(
    page: Path, tmp_path: Path, shared_datasets: Path
) -> None:
    commands = documented_commands(page)
    checkout = tmp_path / "repo"
    checkout.mkdir()
    (tmp_path / "shared").symlink_to(shared_datasets.parent)
    for name in ("docs", "tests", "Makefile", "dbt_project"):
        (checkout / name).symlink_to(PROJECT_ROOT / name)
    (checkout / ".venv").symlink_to(VENV)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROPENSITY_") and key not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")
    }
    for command in commands:
        env = run_documented(command, checkout, env)


def run_documented(command: str, checkout: Path, env: dict[str, str]) -> dict[str, str]:
    """Runs or checks one command line; returns the shell's environment after it."""
    words = shlex.split(command, comments=True)
    assignments = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        assignments[name] = value
    program = " ".join(words[:2])

    def shell(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True
        )

    if words[0] in ("export", "mkdir"):
        # As a shell would: $PWD, $(...) and the variables of earlier lines expand.
        result = shell(f"{command.split('#')[0] if words[0] == 'mkdir' else command}\nenv -0")
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)
    if words[0] == "make":
        check_make(words[1:], assignments)
    elif words[:3] == [".venv/bin/python", "-m", "pytest"]:
        result = shell(f"{shlex.join(words)} --collect-only -q")
        assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}"
    elif words[:2] == [".venv/bin/python", "-m"] and words[2] in LONG_RUNS:
        result = shell(f"{shlex.join(words[:3])} --help")
        assert result.returncode == 0, f"{command}: {result.stderr}"
    elif words[:2] == [".venv/bin/python", "-m"]:  # the data generators: seconds
        result = subprocess.run(
            words, cwd=checkout, env={**env, **assignments}, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
    elif words[0] == ".venv/bin/propensity":
        check_propensity(words, checkout, {**env, **assignments}, command)
    elif words[0].endswith("mlflow") and words[1:3] == ["models", "serve"]:
        # A server: the test named in LONG_RUNS serves a registered champion with it. Here:
        # the command's own environment, from a bare PATH, finds mlflow and the `uvicorn` that
        # mlflow starts from the PATH.
        prefix = " ".join(f"{name}={value}" for name, value in assignments.items())
        bare = {**env, "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [
                "bash",
                "-c",
                f"{prefix} bash -c 'command -v uvicorn && {words[0]} models serve --help'",
            ],
            cwd=checkout,
            env=bare,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{command}: {result.stdout} {result.stderr}"
    elif words[0].endswith("mlflow") and words[1] == "server":
        # A server on PostgreSQL: the test named in LONG_RUNS starts one so. Here: its options
        # and the environment variable that carries the store's URL are mlflow's own.
        result = shell(f"{words[0]} server --help")
        assert result.returncode == 0, f"{command}: {result.stderr}"
        for option in [w for w in words[2:] if w.startswith("--")]:
            assert option in result.stdout, f"{command}: mlflow server has no {option}"
        from mlflow.cli import server as mlflow_server

        variables = {p.envvar for p in mlflow_server.params}
        assert set(assignments) <= variables, f"{command}: mlflow server ignores {assignments}"
    elif words[:2] == ["bash", ".ci/postgres.sh"]:
        # Starts a system service (CI runs it before the tests): checked, not run, here.
        script = (PROJECT_ROOT / ".ci" / "postgres.sh").read_text()
        assert f"  {words[2]})" in script, f"{command}: no such subcommand"
        result = shell(f"bash -n {PROJECT_ROOT / '.ci' / 'postgres.sh'}")
        assert result.returncode == 0, f"{command}: {result.stderr}"
    elif program == "dagster asset":
        examples = [header_command(EXAMPLES / name) for name in SOURCE_EXAMPLES]
        assert words in [[w for w in e if w] for e in examples], (
            f"{command}: not the command of an example config, which test_examples runs"
        )
    else:
        pytest.fail(f"a documented command this test does not know: {command}")
    return env


def check_make(arguments: list[str], assignments: dict[str, str]) -> None:
    """The target exists and every variable given is one the Makefile reads."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    variables = dict(assignments)
    for word in arguments:
        if "=" in word:
            name, value = word.split("=", 1)
            variables[name] = value
        else:
            assert re.search(rf"^{re.escape(word)}:", makefile, re.M), f"no make target {word}"
    for name in variables:
        assert f"$({name})" in makefile or f"{name} ?=" in makefile, f"make ignores {name}"


def check_propensity(words: list[str], checkout: Path, env: dict[str, str], line: str) -> None:
    """The options parse; `run` passes its pre-flight on the page's files (`--check`), except
    the REES46 sample without --features-only, which the page shows refused (status 2)."""
    arguments = propensity_parser().parse_args(words[1:])
    if arguments.command != "run":
        return
    result = subprocess.run(
        [*words, "--check"], cwd=checkout, env=env, capture_output=True, text=True
    )
    refused = arguments.source == "rees46" and not arguments.features_only
    assert result.returncode == (2 if refused else 0), f"{line}: {result.stderr}"
    if not refused:
        assert "nothing was written" in result.stdout, line
