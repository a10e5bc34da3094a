"""The Dagster UI in a real browser: `dagster dev` on a free port and a temporary DAGSTER_HOME and
project state; select an asset in the asset graph, materialize it from the UI, and watch the
run succeed on its run page."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from orchestration import ui
from orchestration.instance import prepare_dagster_home
from tests.browser.conftest import Screenshots
from tests.browser.servers import free_port, isolated_env, log_tail, start_server, wait_for_http

LOCATION = "orchestration.definitions"  # workspace.yaml's python_module names the location
START_TIMEOUT_S = 180
RUN_TIMEOUT_MS = 240_000
LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


@dataclass(frozen=True)
class DagsterUI:
    url: str
    home: Path
    log: Path


def wait_for_code_location(url: str, timeout_s: float, log: Path) -> None:
    """Waits until the code location has loaded; fails with Dagster's error when it cannot."""
    deadline = time.monotonic() + timeout_s
    entries: list = []
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{url}/graphql",
            data=json.dumps({"query": LOCATION_QUERY}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
        loaded = [e for e in entries if e["name"] == LOCATION and e["loadStatus"] == "LOADED"]
        if loaded:
            error = loaded[0]["locationOrLoadError"]
            assert error["__typename"] != "PythonError", error["message"]
            return
        time.sleep(1)
    raise AssertionError(f"code location not loaded in {timeout_s} s: {entries}\n{log_tail(log)}")


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """`dagster dev` as `make ui` starts it, on a temporary instance and project state."""
    root = tmp_path_factory.mktemp("dagster-ui")
    home = root / "local"
    env = isolated_env(os.environ, PROPENSITY_HOME=str(home))
    with pytest.MonkeyPatch.context() as monkeypatch:
        # prepare_dagster_home exports DAGSTER_HOME; keep that out of the other tests.
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
        dagster_home = prepare_dagster_home(home / "dagster")
    env["DAGSTER_HOME"] = str(dagster_home)
    # Dagster greets a new instance with a newsletter dialog that hides the page from the
    # accessibility tree; mark it as seen, as clicking "Skip" once would.
    (dagster_home / ".nux").mkdir()
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    port = free_port()
    server = ui.dagster_server(port)
    log = root / "dagster.log"
    process = start_server(server.command, {**server.env, **env}, log)
    try:
        wait_for_http(f"{server.url}/server_info", START_TIMEOUT_S, process, log)
        wait_for_code_location(server.url, START_TIMEOUT_S, log)
        yield DagsterUI(server.url, home, log)
    finally:
        ui.stop([process])


@pytest.mark.slow(0.7)
def test_materialize_an_asset_from_the_asset_graph(
    page: Page, dagster_ui: DagsterUI, screenshots: Screenshots
) -> None:
    graph_url = f"{dagster_ui.url}/locations/{LOCATION}/asset-groups/ingest"
    page.goto(graph_url)
    asset = page.get_by_text("synthetic_events", exact=True)
    expect(page.get_by_text("events", exact=True)).to_be_visible()  # raw/events, downstream
    asset.click()
    expect(page.get_by_text("landing / synthetic_events")).to_be_visible()  # the side panel
    expect(page.get_by_text("No materializations found")).to_be_visible()
    materialize = page.get_by_role("button", name="Materialize selected")
    expect(materialize).to_be_enabled()
    selected_screenshot = screenshots.take(page, "dagster-asset-selected")

    # The asset's config has defaults, so Dagster launches at once (no Launchpad).
    materialize.click()
    expect(page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))).to_be_visible()
    # To the run from the run list (the toast's own link disappears after a few seconds); the
    # temporary instance holds this one run. Accessible names start with the icon's name.
    page.get_by_role("navigation").get_by_role("link", name=re.compile(r"Runs$")).click()
    run_link = page.get_by_role("link", name=re.compile(r"^run [0-9a-f]{8}$")).first
    run_id = run_link.inner_text().strip()
    run_link.click()
    expect(page).to_have_url(re.compile(rf"/runs/{run_id}[0-9a-f-]*$"))

    # The run page updates itself: queued, starting, started, then success or failure.
    outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(outcome).to_be_visible(timeout=RUN_TIMEOUT_MS)
    run_screenshot = screenshots.take(page, "dagster-run")
    assert outcome.inner_text() == "Success", log_tail(dagster_ui.log)
    expect(page.get_by_text("RUN_SUCCESS")).to_be_visible()
    expect(page.get_by_text("ASSET_MATERIALIZATION").first).to_be_visible()
    # The run wrote into the temporary project state that dagster dev was started with.
    assert list((dagster_ui.home / "landing" / "synthetic").glob("*.parquet"))

    # Back on the asset graph, the asset shows its materialization by that run.
    page.goto(graph_url)
    expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
    graph_screenshot = screenshots.take(page, "dagster-asset-graph")
    page.get_by_text("synthetic_events", exact=True).click()
    expect(page.get_by_role("link", name=run_id).first).to_be_visible()
    screenshots.publish(graph_screenshot, selected_screenshot, run_screenshot)
