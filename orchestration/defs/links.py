"""Links from Dagster asset metadata to the MLflow UI: the run an asset logged and the registry
version it registered, one click from the asset page.

The MLflow UI is where `make ui` serves it (127.0.0.1 and MLFLOW_PORT, default 5000), or
PROPENSITY_MLFLOW_UI_URL when the store is served elsewhere.
"""

from __future__ import annotations

import os

import dagster as dg
import mlflow

UI_URL_VARIABLE = "PROPENSITY_MLFLOW_UI_URL"


def mlflow_ui_url() -> str:
    configured = os.environ.get(UI_URL_VARIABLE, "").strip().rstrip("/")
    return configured or f"http://127.0.0.1:{os.environ.get('MLFLOW_PORT', '5000')}"


def mlflow_links(
    run_id: str | None = None, model_name: str | None = None, version: str | None = None
) -> dict[str, dg.MetadataValue]:
    """`mlflow_run` and `mlflow_model_version` URL metadata for what is given."""
    base = mlflow_ui_url()
    links: dict[str, dg.MetadataValue] = {}
    if run_id:
        experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
        links["mlflow_run"] = dg.MetadataValue.url(
            f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
        )
    if model_name and version:
        links["mlflow_model_version"] = dg.MetadataValue.url(
            f"{base}/#/models/{model_name}/versions/{version}"
        )
    return links
