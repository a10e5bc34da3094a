"""Scoring: the champion model scores every user active at the latest cutoff, and the top k
become the shop's intervention list with the three features that pushed each score up most.

Works with any model family registered as a PropensityModel-style pyfunc: `predict` gives
probabilities, and `contributions` (where the family has it) gives per-feature attributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd

from ml.dataset import KEY_COLUMNS, load_scoring_frame
from ml.registry import MODEL_NAME, signature_columns

CHAMPION_ALIAS = "champion"

_PREDICTIONS_DDL = (
    "create schema if not exists predictions",
    """
    create table if not exists predictions.user_propensity (
        user_id bigint not null, cutoff_time timestamp not null, score double not null,
        decile integer not null, model_name varchar not null, model_version varchar not null,
        model_family varchar, scored_at timestamp not null
    )
    """,
    """
    create table if not exists predictions.intervention_targets (
        user_id bigint not null, cutoff_time timestamp not null, rank integer not null,
        score double not null, driver_1 varchar, driver_2 varchar, driver_3 varchar,
        model_version varchar not null, scored_at timestamp not null
    )
    """,
)


@dataclass(frozen=True)
class ScoringSummary:
    cutoff_time: datetime
    model_version: str
    model_family: str
    n_scored: int
    n_targets: int
    mean_score: float
    top_decile_mean_score: float


def score_deciles(scores: np.ndarray) -> np.ndarray:
    """Decile 1 holds the highest scores, decile 10 the lowest (ties broken by order)."""
    ranks = pd.Series(scores).rank(method="first", ascending=False).to_numpy()
    return np.ceil(ranks * 10 / len(scores)).astype(int)


def top_drivers(contributions: pd.DataFrame, n: int = 3) -> list[list[str]]:
    """Names of the n features with the largest positive contribution, per row."""
    columns = np.array(contributions.columns)
    order = np.argsort(-contributions.to_numpy(), axis=1)[:, :n]
    values = np.take_along_axis(contributions.to_numpy(), order, axis=1)
    return [
        [name if value > 0 else None for name, value in zip(columns[row], row_values, strict=True)]
        for row, row_values in zip(order, values, strict=True)
    ]


def score_latest_cutoff(
    warehouse: Path, tracking_uri: str, top_k: int = 100, model_alias: str = CHAMPION_ALIAS
) -> ScoringSummary:
    """Scores the latest cutoff with `models:/purchase-propensity@<alias>` and writes both
    predictions tables. Re-scoring the same cutoff replaces that cutoff's rows."""
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, model_alias)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{model_alias}")
    python_model = model.unwrap_python_model()
    family = getattr(python_model, "family", version.tags.get("family", "unknown"))

    frame, cutoff_time = load_scoring_frame(warehouse)
    if frame.empty:
        raise ValueError(f"No user is active at the latest cutoff {cutoff_time}; nothing to score")
    features = frame.drop(columns=list(KEY_COLUMNS))
    scores = np.asarray(model.predict(signature_columns(model, features)), dtype=float).reshape(-1)
    scored_at = datetime.now(UTC).replace(tzinfo=None)
    propensity = pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(),
            "cutoff_time": frame["cutoff_time"].to_numpy(),
            "score": scores,
            "decile": score_deciles(scores),
            "model_name": MODEL_NAME,
            "model_version": str(version.version),
            "model_family": family,
            "scored_at": scored_at,
        }
    )

    top = propensity.nlargest(min(top_k, len(propensity)), "score", keep="first")
    drivers = [[None, None, None]] * len(top)
    if hasattr(python_model, "contributions"):
        drivers = top_drivers(python_model.contributions(features.loc[top.index]))
    targets = pd.DataFrame(
        {
            "user_id": top["user_id"].to_numpy(),
            "cutoff_time": top["cutoff_time"].to_numpy(),
            "rank": np.arange(1, len(top) + 1),
            "score": top["score"].to_numpy(),
            "driver_1": [row[0] for row in drivers],
            "driver_2": [row[1] for row in drivers],
            "driver_3": [row[2] for row in drivers],
            "model_version": str(version.version),
            "scored_at": scored_at,
        }
    )
    _write_predictions(warehouse, cutoff_time, propensity, targets)
    return ScoringSummary(
        cutoff_time=cutoff_time,
        model_version=str(version.version),
        model_family=family,
        n_scored=len(propensity),
        n_targets=len(targets),
        mean_score=float(scores.mean()),
        top_decile_mean_score=float(propensity.loc[propensity["decile"] == 1, "score"].mean()),
    )


def _write_predictions(
    warehouse: Path, cutoff_time: datetime, propensity: pd.DataFrame, targets: pd.DataFrame
) -> None:
    with duckdb.connect(str(warehouse)) as con:
        for statement in _PREDICTIONS_DDL:
            con.execute(statement)
        con.execute("begin transaction")
        for table, rows in (("user_propensity", propensity), ("intervention_targets", targets)):
            con.execute(f"delete from predictions.{table} where cutoff_time = ?", [cutoff_time])
            con.register("new_rows", rows)
            con.execute(f"insert into predictions.{table} by name select * from new_rows")
            con.unregister("new_rows")
        con.execute("commit")
