"""`propensity`, the command for one's own event files: its help, its pre-flight refusals with
advice, and a whole small run on a Taobao-format file that ends with the summary (and the same
summary again from `propensity summary`). The installed console script is run, as a user runs
it, each in its own state folder."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ml.data.taobao_sample import write_taobao_file
from ml.preflight import (
    EventSpan,
    PreflightError,
    Windows,
    cutoff_grid,
    event_span,
    format_interval,
    parse_interval,
    utc_offset,
)
from tests.conftest import query
from tests.orchestration.service_checks import check_the_service

PROPENSITY = Path(sys.executable).parent / "propensity"
REES46_SAMPLE = "rees46_oct2019_head/events.csv"
TAOBAO_WINDOWS = Windows("1 day", "4 days", "1 day", "Asia/Shanghai")


def propensity(*args: str, home: Path, development: bool = True) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROPENSITY_") and key not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")
    }
    if development:  # generated and public data: the development salt will do
        env["PROPENSITY_DEVELOPMENT"] = "1"
    return subprocess.run(
        [str(PROPENSITY), *args], cwd=home, env=env, capture_output=True, text=True
    )


def test_help_documents_every_option_with_its_default(tmp_path: Path) -> None:
    top = propensity("--help", home=tmp_path)
    assert top.returncode == 0
    assert all(command in top.stdout for command in ("run", "summary", "serve"))
    run = propensity("run", "--help", home=tmp_path)
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    for option, default in (
        ("--cutoff-step", "1 day"),
        ("--lookback", "30 days"),
        ("--horizon", "7 days"),
        ("--timezone", "UTC"),
        ("--budget", "default"),
        ("--validation-cutoffs", "3"),
        ("--promotion-cutoffs", "3"),
    ):
        assert option in text and f"(default: {default})" in text
    for option in ("--source", "--path", "--state", "--features-only", "--check"):
        assert option in text
    assert "{synthetic,rees46,retailrocket,taobao}" in text


def test_too_few_cutoffs_are_refused_before_anything_is_written(
    tmp_path: Path, shared_datasets: Path
) -> None:
    """README's old REES46 example: 2 h 50 min of events with hourly cutoffs hold 3 cutoffs,
    and the roles need 8. The refusal says so and what would do, and writes nothing."""
    state = tmp_path / "state"
    result = propensity(
        "run",
        "--source",
        "rees46",
        "--path",
        str(shared_datasets / REES46_SAMPLE),
        "--cutoff-step",
        "1 hour",
        "--lookback",
        "2 hours",
        "--horizon",
        "1 hour",
        "--state",
        str(state),
        home=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot train on these files" in result.stderr
    assert "need at least 8 consecutive cutoffs" in result.stderr
    assert "there are 3 cutoffs" in result.stderr
    assert "give more days of events" in result.stderr
    assert "Or add --features-only" in result.stderr
    assert not state.exists()


@pytest.mark.slow(0.7)
def test_features_only_on_the_rees46_sample_ends_with_the_summary_and_a_data_report(
    tmp_path: Path, shared_datasets: Path
) -> None:
    """The sample too short to train on still loads: ingestion, the features and a report of
    the data, whose figures match the file read independently; `--check` writes nothing."""
    sample = shared_datasets / REES46_SAMPLE
    state = tmp_path / "state"
    options = ["run", "--source", "rees46", "--path", str(sample), "--cutoff-step", "1 hour"]
    options += ["--lookback", "2 hours", "--horizon", "1 hour", "--state", str(state)]
    checked = propensity(*options, "--features-only", "--check", home=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "3 cutoffs (1 with a complete label window)" in checked.stdout
    assert "nothing was written" in checked.stdout and not state.exists()

    result = propensity(*options, "--features-only", home=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout[result.stdout.index("propensity run succeeded") :]
    assert re.search(r"predictions\.user_propensity\s+not built", summary)
    assert "No model has been trained in this state yet" in summary
    events = pd.read_csv(sample).drop_duplicates()  # ingestion drops exact duplicates
    assert re.search(rf"raw\.events\s+{len(events):,} rows", summary)
    report = Path(re.search(r"^Report: (\S+report\.html)$", summary, re.M).group(1))
    page = ReportPage.read(report)
    assert page.headings == ["The data", "The models", "Checks and monitoring"]
    figures = dict(row for row in page.tables[0][1:])
    assert figures["events ingested"] == f"{len(events):,}"
    assert figures["shoppers"] == f"{events['user_id'].nunique():,}"
    assert figures["cutoffs (with a complete label window)"] == "3 (1)"
    assert figures["rows quarantined"] == "0"

    again = propensity("summary", "--state", str(state), home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Report: {report}" in again.stdout


def test_without_a_pseudonym_key_nothing_is_read(tmp_path: Path, shared_datasets: Path) -> None:
    result = propensity(
        "run",
        "--source",
        "rees46",
        "--path",
        str(shared_datasets / REES46_SAMPLE),
        "--state",
        str(tmp_path / "state"),
        home=tmp_path,
        development=False,
    )
    assert result.returncode == 2
    assert "PROPENSITY_PSEUDONYM_SALT is not set" in result.stderr
    assert not (tmp_path / "state").exists()


def test_roles_without_a_purchase_are_refused(tmp_path: Path, shared_datasets: Path) -> None:
    """Half-hour windows fit the sample's span, but its early windows hold no purchase."""
    result = propensity(
        "run",
        "--source",
        "rees46",
        "--path",
        str(shared_datasets / REES46_SAMPLE),
        "--cutoff-step",
        "30 minutes",
        "--lookback",
        "2 hours",
        "--horizon",
        "30 minutes",
        "--validation-cutoffs",
        "1",
        "--promotion-cutoffs",
        "1",
        "--state",
        str(tmp_path / "state"),
        home=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "The train role's label windows" in result.stderr
    assert "hold no purchase by a shopper seen in the lookback" in result.stderr
    assert "so there is nothing to learn from" in result.stderr


@pytest.mark.slow(1.7)
def test_a_small_run_on_a_taobao_file_ends_with_the_summary(tmp_path: Path) -> None:
    path = write_taobao_file(tmp_path / "UserBehavior.csv", seed=0)
    state = tmp_path / "shop"
    result = propensity(
        "run",
        "--source",
        "taobao",
        "--path",
        str(path),
        "--cutoff-step",
        TAOBAO_WINDOWS.cutoff_step,
        "--lookback",
        TAOBAO_WINDOWS.lookback,
        "--horizon",
        TAOBAO_WINDOWS.horizon,
        "--timezone",
        TAOBAO_WINDOWS.timezone,
        "--state",
        str(state),
        "--budget",
        "small",
        home=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert "Pre-flight: " in out and "3 validation, 3 promotion cutoffs" in out
    assert "propensity run succeeded" in out
    # A progress view, not Dagster's DEBUG stream or dbt's lines (the instance keeps those).
    assert " - DEBUG - " not in out and " START sql table model " not in out
    assert re.search(r"^\[ *\d+:\d\d\] training/seq_study done in ", out, re.MULTILINE)
    assert re.search(r"^\[ *\d+:\d\d\]   trial 1 \(2/2 this run\)", out, re.MULTILINE)
    champion = next(line for line in out.splitlines() if "purchase-propensity@champion" in line)
    for expected in ("predictions.intervention_targets", "next-category", "promotion window"):
        assert expected in out
    warehouse = state / "warehouse.duckdb"
    lines = len(path.read_text().splitlines())
    assert query(warehouse, "select count(*) from raw.events")[0][0] == lines
    assert query(warehouse, "select count(*) from predictions.intervention_targets")[0][0] > 0

    # The pre-flight's cutoff grid is the one dbt built.
    built = query(
        warehouse,
        "select cutoff_time, horizon_complete, lookback_complete from marts.cutoffs order by 1",
    )
    grid = cutoff_grid(event_span("taobao", [path]), TAOBAO_WINDOWS)
    assert built == [
        (row.cutoff_time.to_pydatetime(), row.horizon_complete, row.lookback_complete)
        for row in grid.itertuples()
    ]

    # The run's report: one HTML page with the comparison, the charts embedded and beside it.
    report = Path(re.search(r"^Report: (.+report\.html)$", out, re.MULTILINE).group(1))
    page = ReportPage.read(report)
    assert page.headings == [
        "The data",
        "The models",
        "Charts",
        "What the gate decided, and why",
        "Checks and monitoring",
        "Who to act on",
    ]
    models = page.tables[1]
    assert models[0][:2] == ["model", "promotion-window PR-AUC [95 % interval]"]
    assert any(row[0].startswith("xgboost v") for row in models[1:])
    assert any(row[0] == "baseline: base_rate" for row in models[1:])
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", models[1][1])
    assert {"champion_lift.png", "champion_calibration.png"} <= set(page.images)
    for name in page.images:
        assert (report.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The run is tagged with the files' own cutoff, so freshness is judged against it.
    checks = next(t for t in page.tables if t and t[0][:3] == ["asset", "check", "result"])
    fresh = [row for row in checks[1:] if row[1] == "raw_events_fresh"]
    assert fresh and fresh[0][2] == "passed"
    who = page.tables[-1]
    assert who[0][:4] == ["rank", "shopper", "score", "action"] and len(who) == 21
    client = mlflow.MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    (report_run,) = client.search_runs(
        [client.get_experiment_by_name("purchase-propensity").experiment_id],
        "attributes.run_name = 'run-report'",
    )
    logged = {f.path for f in client.list_artifacts(report_run.info.run_id, "report")}
    assert "report/report.html" in logged

    summary = propensity("summary", "--state", str(state), home=tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert champion in summary.stdout
    nothing = propensity("summary", "--state", str(tmp_path / "empty"), home=tmp_path)
    assert nothing.returncode == 2 and "nothing has run" in nothing.stderr

    # The run published the serving snapshot: `propensity serve` answers on it.
    check_the_service(state, tmp_path)


class ReportPage(HTMLParser):
    """The headings, tables (rows of cell texts) and embedded images of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.text: list[str] | None = None

    @classmethod
    def read(cls, path: Path) -> ReportPage:
        page = cls()
        page.feed(path.read_text())
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "h2"):
            self.text = []
        elif tag == "img" and str(values.get("src", "")).startswith("data:image/png;base64,"):
            self.images.append(str(values["data-file"]))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.text is not None:
            self.tables[-1][-1].append("".join(self.text).strip())
        elif tag == "h2" and self.text is not None:
            self.headings.append("".join(self.text).strip())
        if tag in ("td", "th", "h2"):
            self.text = None

    def handle_data(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)


def test_intervals_and_timezones_read_as_dbt_reads_them() -> None:
    assert parse_interval("4 days") == parse_interval("96 hours")
    assert format_interval(parse_interval("120 minutes")) == "2 hours"
    assert format_interval(parse_interval("1 day")) == "1 day"
    with pytest.raises(PreflightError, match="number and a unit"):
        parse_interval("fortnight")
    at = datetime(2020, 1, 1)
    assert utc_offset("Asia/Shanghai", at) == utc_offset("+08:00", at)
    assert utc_offset("UTC", at).total_seconds() == 0
    with pytest.raises(PreflightError, match="Unknown timezone"):
        utc_offset("Mars/Olympus", at)
    span = EventSpan(datetime(2020, 1, 1, 5), datetime(2020, 1, 3, 5), 10)
    with pytest.raises(PreflightError, match="must divide one day"):
        cutoff_grid(span, Windows("7 hours", "7 hours", "7 hours"))
    grid = cutoff_grid(span, Windows("1 day", "1 day", "1 day", "+08:00"))
    # Local midnights (16:00 UTC) from the first after the first event to the first after the
    # last: Jan 1 16:00, Jan 2 16:00, Jan 3 16:00 UTC.
    assert [t.hour for t in grid["cutoff_time"]] == [16, 16, 16]
    assert list(grid["horizon_complete"]) == [True, False, False]


def test_the_retailrocket_sample_is_refused_for_want_of_returning_buyers(
    tmp_path: Path, shared_datasets: Path
) -> None:
    """138 days but 46 purchases, none in the validation windows by a shopper seen before:
    refused in a second instead of failing at calibration after the dbt build."""
    result = propensity(
        "run",
        "--source",
        "retailrocket",
        "--path",
        str(shared_datasets / "retailrocket_sample"),
        "--cutoff-step",
        "1 day",
        "--lookback",
        "7 days",
        "--horizon",
        "1 day",
        "--state",
        str(tmp_path / "state"),
        home=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "9,385 rows, 46 purchases" in result.stderr
    assert "The validation role's label windows" in result.stderr
    assert "no purchase by a shopper seen in the lookback" in result.stderr


def test_the_pre_flight_windows_default_to_the_dbt_vars_defaults() -> None:
    """`propensity run` without window options must check the grid dbt will build: the
    pre-flight's defaults (ml stays free of Dagster) are the feature asset's config defaults."""
    from orchestration.defs.features import FeatureWindowConfig

    dbt_defaults = FeatureWindowConfig()
    for field in dataclasses.fields(Windows):
        assert getattr(Windows(), field.name) == getattr(dbt_defaults, field.name), field.name
