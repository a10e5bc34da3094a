"""The scoring service: FastAPI on uvicorn, bound to 127.0.0.1 unless told otherwise
(`propensity serve`, `make serve`). OpenAPI docs at /docs.

POST /score scores one shopper now (or "as of" a grid cutoff, to replay the batch) from the
published snapshot's history plus the session's live events; POST /score/batch scores many in
one call; GET /health and GET /model say what is loaded. A poller swaps in a new champion when
an alias moves and a new snapshot when a night publishes one, without dropping a request.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ml.serving.answer import answer_many
from ml.serving.champions import Champions
from ml.serving.features import CutoffError, FeatureEngine
from ml.serving.snapshot import current_snapshot

MAX_EVENTS = 500
MAX_BATCH = 100
# A client's clock may run a little ahead of ours; more than this is an event in the future.
CLOCK_SKEW = timedelta(minutes=1)
DEFAULT_POLL_SECONDS = 10.0

# As ingestion validates a file's rows: no control character (NUL included) in any text, and
# an id neither blank nor space-padded (" 7700019 " is not silently another shopper).
_NO_CONTROL = r"[^\x00-\x1f\x7f]"
_ID_END = r"[^\x00-\x20\x7f]"
Identifier = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=200, pattern=rf"^{_ID_END}({_NO_CONTROL}*{_ID_END})?$"
    ),
]
Text = Annotated[str, StringConstraints(max_length=1000, pattern=rf"^{_NO_CONTROL}*$")]


class Event(BaseModel):
    """One live event in the canonical schema (the shopper is the request's)."""

    model_config = ConfigDict(extra="forbid")
    event_time: datetime = Field(description="ISO time; without an offset it is UTC")
    event_type: Literal["view", "cart", "remove_from_cart", "purchase", "wishlist"]
    product_id: Identifier
    category_id: Text | None = None
    category_code: Text | None = None
    brand: Text | None = None
    price: float | None = Field(default=None, ge=0, le=1e7)
    user_session: Text | None = None

    @field_validator("event_time")
    @classmethod
    def utc_and_not_future(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        if value > datetime.now(UTC).replace(tzinfo=None) + CLOCK_SKEW:
            raise ValueError(f"event_time {value.isoformat()} is in the future")
        return value


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Identifier = Field(description="the shop's own shopper id, as in its event files")
    events: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS)
    as_of: datetime | None = Field(
        default=None,
        description="a cutoff of the grid (UTC), to replay a batch score; default: now",
    )
    explain: bool = Field(
        default=True,
        description="the reasons in words and the past events that mattered (the sequence "
        "model's cost most of its answer time); false: the probability, categories and action",
    )

    @field_validator("as_of")
    @classmethod
    def as_utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[ScoreRequest] = Field(min_length=1, max_length=MAX_BATCH)

    @field_validator("requests")
    @classmethod
    def each_shopper_once(cls, value: list[ScoreRequest]) -> list[ScoreRequest]:
        ids = [request.user_id for request in value]
        if len(set(ids)) != len(ids):
            raise ValueError("each shopper at most once per batch")
        return value


class State:
    """What the service holds: the feature engine over the current snapshot and the
    champions, each replaced whole when a newer one is ready."""

    def __init__(self, snapshot_folder: Path, tracking_uri: str, connections: int) -> None:
        self.snapshot_folder = snapshot_folder
        self.connections = connections
        self.engine = FeatureEngine(current_snapshot(snapshot_folder), connections)
        self.champions = Champions(tracking_uri)
        self.snapshot_error: str | None = None

    def refresh(self) -> None:
        self.champions.refresh()
        try:
            path = current_snapshot(self.snapshot_folder)
            if path != self.engine.snapshot:
                self.engine = FeatureEngine(path, self.connections)
            self.snapshot_error = None
        except Exception as error:  # noqa: BLE001 - keep serving from the snapshot loaded
            self.snapshot_error = f"{type(error).__name__}: {error}"


def create_app(
    snapshot_folder: Path,
    tracking_uri: str,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    connections: int = 2,
) -> FastAPI:
    state = State(snapshot_folder, tracking_uri, connections)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_seconds):
            state.refresh()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        poller = threading.Thread(target=poll, name="champion-poller", daemon=True)
        poller.start()
        yield
        stop.set()

    app = FastAPI(
        title="Shopper propensity scoring",
        description="The champion's purchase probability, reasons and next categories for a "
        "shopper now, from the published snapshot plus the session's live events.",
        lifespan=lifespan,
    )
    app.state.service = state

    def score_many(requests: list[ScoreRequest]) -> list[dict[str, Any]]:
        """The requests grouped by cutoff (those asking "now" share this moment's) and by
        `explain`: one pass of the feature statements and one call of the models per group."""
        models = state.champions.current  # one reference: a swap mid-request changes nothing
        engine = state.engine
        now = datetime.now(UTC).replace(tzinfo=None)
        answers: dict[int, dict[str, Any]] = {}
        for as_of, explain in dict.fromkeys((r.as_of, r.explain) for r in requests):
            group = [
                (i, r) for i, r in enumerate(requests) if (r.as_of, r.explain) == (as_of, explain)
            ]
            shoppers = [
                (r.user_id, pd.DataFrame([event.model_dump() for event in r.events]))
                for _, r in group
            ]
            try:
                inputs = engine.inputs_many(shoppers, as_of=as_of, at=None if as_of else now)
            except CutoffError as error:
                raise HTTPException(status_code=422, detail=str(error)) from error
            bodies = answer_many(
                [
                    (request.user_id, shopper)
                    for (_, request), shopper in zip(group, inputs, strict=True)
                ],
                models,
                explain=explain,
            )
            for (i, _), body in zip(group, bodies, strict=True):
                answers[i] = body
        return [answers[i] for i in range(len(requests))]

    @app.post("/score")
    def score(request: ScoreRequest) -> dict[str, Any]:
        return score_many([request])[0]

    @app.post("/score/batch")
    def score_batch(batch: BatchRequest) -> dict[str, Any]:
        return {"results": score_many(batch.requests)}

    @app.get("/health")
    def health() -> dict[str, Any]:
        models = state.champions.current
        problems = [e for e in (state.champions.last_error, state.snapshot_error) if e]
        return {
            "status": "degraded" if problems else "ok",
            "model_version": models.version,
            "snapshot": state.engine.snapshot.name,
            "problems": problems,
        }

    @app.get("/model")
    def model() -> dict[str, Any]:
        models = state.champions.current
        engine = state.engine
        return {
            "propensity": {"version": models.version, "family": models.family},
            "next_category": {"version": models.category_version},
            "loaded_at": models.loaded_at,
            "snapshot": {
                "file": engine.snapshot.name,
                "latest_cutoff": engine.info["latest_cutoff"],
                "published_at": engine.info["published_at"],
                "dbt_vars": engine.dbt_vars,
            },
        }

    return app
