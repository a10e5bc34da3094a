"""Real-browser tests: Playwright for Python driving Debian's Chromium, offline.

Playwright never downloads a browser here: it starts /usr/bin/chromium with the flags a machine
without internet needs (no background networking, updates, sync or QUIC, so Chromium does not
try to reach Google at every start) and a fresh profile folder in the test's tmp folder.
Screenshots are test artifacts in test-artifacts/screenshots/ (gitignored; a failed test leaves
failed-<test>.png there). The copies in docs/screenshots/ (README, docs/ui.md) are refreshed
only when asked: `PROPENSITY_PUBLISH_SCREENSHOTS=1 make test`, so a test run never changes
tracked files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.settings import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
ARTIFACT_SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "screenshots"
PUBLISHED_SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
PUBLISH_VARIABLE = "PROPENSITY_PUBLISH_SCREENSHOTS"
# Generous: the CI machine has 2 cores and the servers share them with the test.
ACTION_TIMEOUT_MS = 60_000


class Screenshots:
    """Saves screenshots as test artifacts and, when asked, publishes chosen ones to the docs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def take(self, page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    def publish(self, *paths: Path) -> None:
        if os.environ.get(PUBLISH_VARIABLE) != "1":
            return
        PUBLISHED_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copyfile(path, PUBLISHED_SCREENSHOTS / path.name)


@pytest.fixture(scope="session")
def screenshots() -> Screenshots:
    ARTIFACT_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return Screenshots(ARTIFACT_SCREENSHOTS)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One Chromium for the session, as a persistent context: Playwright passes the fresh
    profile folder as --user-data-dir itself (it refuses that flag among `args`)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; in CI the browser tests must run", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=ACTION_TIMEOUT_MS)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport=VIEWPORT,
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        yield context
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keeps each phase's report on the test item, so the page fixture knows if the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, screenshots: Screenshots, request: pytest.FixtureRequest) -> Iterator:
    """A new tab per test; when the test fails, a screenshot of where it stopped."""
    page = browser.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        path = screenshots.take(page, f"failed-{request.node.name}")
        print(f"screenshot of the failure: {path}")
    page.close()
