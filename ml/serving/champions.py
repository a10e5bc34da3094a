"""The models the service answers with: `purchase-propensity@champion` and, when it has one,
`next-category@champion`, loaded once and swapped when an alias moves.

A swap replaces one immutable `Loaded` object (a single reference assignment): a request that
started on the old models finishes on them, the next one gets the new ones, and none waits or
fails. A version that fails to load leaves the current models in place, and the failure is
reported (`last_error`, GET /health) until a later load succeeds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow import MlflowClient

from ml.next_category.evaluation import CATEGORY_MODEL_NAME
from ml.registry import CHAMPION, MODEL_NAME, current_champion


@dataclass(frozen=True)
class Loaded:
    propensity: mlflow.pyfunc.PyFuncModel
    version: str
    family: str
    category: mlflow.pyfunc.PyFuncModel | None
    category_version: str | None
    loaded_at: str


class Champions:
    """The loaded champions of a registry, refreshed by `refresh()` (a poller calls it)."""

    def __init__(self, tracking_uri: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one load at a time; requests never take it
        self.current = self._load(*self._aliases())

    def _aliases(self) -> tuple[str, str | None]:
        version = current_champion(self.client, MODEL_NAME)
        if version is None:
            raise LookupError(
                f"{MODEL_NAME} has no {CHAMPION} yet: run the pipeline first (make run, "
                "propensity run)"
            )
        registered = self.client.search_registered_models(f"name='{CATEGORY_MODEL_NAME}'")
        category = current_champion(self.client, CATEGORY_MODEL_NAME) if registered else None
        return version, category

    def _load(self, version: str, category_version: str | None) -> Loaded:
        mlflow.set_tracking_uri(self.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
        family = self.client.get_model_version(MODEL_NAME, version).tags.get("family", "?")
        category = (
            mlflow.pyfunc.load_model(f"models:/{CATEGORY_MODEL_NAME}/{category_version}")
            if category_version
            else None
        )
        loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        return Loaded(model, version, family, category, category_version, loaded_at)

    def refresh(self) -> bool:
        """Loads the champions when an alias has moved; True when the models changed. A
        failed load keeps the current models and records the error."""
        with self._lock:
            try:
                version, category_version = self._aliases()
                current = self.current
                if (version, category_version) == (current.version, current.category_version):
                    return False
                self.current = self._load(version, category_version)
                self.last_error = None
                return True
            except Exception as error:  # noqa: BLE001 - any failure keeps the old models
                self.last_error = f"{type(error).__name__}: {error}"
                return False
