"""The MLflow UI in a real browser, on a real store built with the project's own code: two
XGBoost models logged by their family's `log_model` and promoted by `ml.registry.promote`,
served by the same `mlflow server` command as `make ui`. The experiment lists both runs; the
registry shows the champion and challenger aliases on the versions the registry says."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import xgboost as xgb
from playwright.sync_api import Page, expect

from ml.evaluation.final import evaluate_final_model
from ml.families.xgboost.model import predict_proba, train_xgb
from ml.families.xgboost.pyfunc import log_model as log_final_model
from ml.registry import CHALLENGER, CHAMPION, MODEL_NAME, promote
from ml.synthetic_split import make_split_data
from ml.tracking import DEFAULT_EXPERIMENT, configure_mlflow
from orchestration import ui
from tests.browser.conftest import Screenshots
from tests.browser.servers import free_port, isolated_env, start_server, wait_for_http

START_TIMEOUT_S = 120


@dataclass(frozen=True)
class MlflowUI:
    url: str
    aliases: dict[str, str]  # alias -> version, as the registry holds them
    n_runs: int


def build_store(tracking_uri: str, artifacts: Path) -> dict[str, str]:
    """Logs and promotes two small XGBoost models as the training assets do; returns the aliases.

    Depth 2 and depth 4 on the same split: the second is registered as version 2 and becomes the
    challenger; which one is champion is the registry's decision, read back afterwards."""
    configure_mlflow(tracking_uri, DEFAULT_EXPERIMENT, artifacts)
    data = make_split_data()
    client = mlflow.MlflowClient()
    for depth in (2, 4):
        params = {"max_depth": depth, "eta": 0.3}
        with xgb.config_context(nthread=1):
            booster = train_xgb(
                params,
                data.X_train,
                data.y_train,
                data.X_validation,
                data.y_validation,
                device="cpu",
                num_boost_round=60,
                early_stopping_rounds=10,
            )
        evaluation = evaluate_final_model(
            data, "xgboost", lambda X, b=booster: predict_proba(b, X), n_resamples=100
        )
        logged = log_final_model(booster, data, evaluation, {"strategy": "none", **params})
        users = data.keys_promotion["user_id"].to_numpy()
        promote(client, logged.version, data.X_promotion, data.y_promotion, users)
    aliases = client.get_registered_model(MODEL_NAME).aliases
    return {alias: str(version) for alias, version in aliases.items()}


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowUI]:
    root = tmp_path_factory.mktemp("mlflow-ui")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    env = isolated_env(
        os.environ,
        MLFLOW_TRACKING_URI=tracking_uri,
        PROPENSITY_MLFLOW_ARTIFACTS=str(root / "mlartifacts"),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as monkeypatch:
        # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; the context restores it.
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        for variable in ("MLFLOW_TRACKING_URI", "PROPENSITY_MLFLOW_ARTIFACTS"):
            monkeypatch.setenv(variable, env[variable])
        try:
            aliases = build_store(tracking_uri, root / "mlartifacts")
            # Before restoring: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI.
            server = ui.mlflow_server(free_port())
        finally:
            mlflow.set_tracking_uri(previous_uri)
    log = root / "mlflow.log"
    process = start_server(server.command, {**server.env, **env}, log)
    try:
        wait_for_http(f"{server.url}/health", START_TIMEOUT_S, process, log)
        yield MlflowUI(server.url, aliases, n_runs=2)
    finally:
        ui.stop([process])


def open_model_training_view(page: Page, url: str) -> None:
    """MLflow 3 opens in its GenAI view; this project's runs and registry are under "Model
    training". The assistant panel is closed so that screenshots show the page itself."""
    # The registry's one-time "new Model Registry UI" dialog covers the page; accept it.
    promo = page.get_by_role("dialog").filter(has_text="new Model Registry UI")
    page.add_locator_handler(promo, lambda d: d.get_by_role("button", name="Try it now").click())
    page.goto(url)
    page.get_by_role("button", name="Model training").click()
    expect(page.get_by_role("link", name="Model registry")).to_be_visible()
    assistant_close = page.get_by_role("button", name="Close", exact=True)
    if assistant_close.is_visible():
        assistant_close.click()


def test_experiment_lists_its_runs(
    page: Page, mlflow_ui: MlflowUI, screenshots: Screenshots
) -> None:
    open_model_training_view(page, mlflow_ui.url)
    page.get_by_role("link", name="Experiments", exact=True).click()
    page.get_by_role("main").get_by_role("link", name=DEFAULT_EXPERIMENT, exact=True).click()

    expect(page.get_by_text(f"{mlflow_ui.n_runs} matching runs")).to_be_visible()
    runs = page.get_by_role("link", name="xgboost-final", exact=True)
    expect(runs).to_have_count(mlflow_ui.n_runs)
    # Each run links the model version it registered.
    for version in range(1, mlflow_ui.n_runs + 1):
        expect(page.get_by_text(f"v{version}", exact=True)).to_be_visible()
    screenshots.publish(screenshots.take(page, "mlflow-experiment-runs"))


def test_registry_shows_the_champion_alias(
    page: Page, mlflow_ui: MlflowUI, screenshots: Screenshots
) -> None:
    open_model_training_view(page, mlflow_ui.url)
    page.get_by_role("link", name="Model registry").click()
    page.get_by_role("main").get_by_role("link", name=MODEL_NAME, exact=True).click()
    expect(page.get_by_role("heading", name=MODEL_NAME)).to_be_visible()

    for alias in (CHAMPION, CHALLENGER):
        tag = page.get_by_role("status", name=alias, exact=True)
        expect(tag).to_have_text(re.compile(rf"@\s*{alias}"))
        row = page.get_by_role("row").filter(has=tag)
        expect(row).to_have_count(1)
        expect(row.get_by_role("link", name=re.compile(r"^Version \d+$"))).to_have_text(
            f"Version {mlflow_ui.aliases[alias]}"
        )
    screenshots.publish(screenshots.take(page, "mlflow-registered-model"))
