"""Scoring: the champion model scores every user active at the latest cutoff, and the top k
become the shop's intervention list with the three features that pushed each score up most
(each with its value), the action to take and its category (`ml.next_category.serving`).

Four tables in the schema `predictions`, written in one DuckDB transaction:
- `user_propensity`, `intervention_targets` and `next_categories` (every scored shopper's top
  categories): the scored cutoff's rows, replaced when the same cutoff is scored again;
- `served_history`: every scoring run's scores, kept, so that they can be checked against the
  labels once those mature (`ml.served`). A rerun for the same (cutoff, model name, model
  version) replaces its own rows; another version scoring the same cutoff adds its own.

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

from ml.dataset import KEY_COLUMNS, load_category_names, load_scoring_frame
from ml.next_category.serving import CategoryRanking, choose_actions, rank_categories
from ml.reasons import describe_feature
from ml.registry import MODEL_NAME, predict_frame

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
    """
    alter table predictions.intervention_targets add column if not exists action varchar
    """,
    """
    alter table predictions.intervention_targets
    add column if not exists action_category_idx integer
    """,
    """
    alter table predictions.intervention_targets add column if not exists action_category varchar
    """,
    """
    alter table predictions.intervention_targets add column if not exists category_source varchar
    """,
    """
    alter table predictions.intervention_targets add column if not exists event_reasons varchar
    """,
    """
    create table if not exists predictions.next_categories (
        user_id bigint not null, cutoff_time timestamp not null, rank integer not null,
        category_idx integer not null, category_name varchar, probability double,
        source varchar not null, scored_at timestamp not null
    )
    """,
    """
    create table if not exists predictions.served_history (
        user_id bigint not null, cutoff_time timestamp not null, model_name varchar not null,
        model_version varchar not null, model_family varchar, score double not null,
        scored_at timestamp not null
    )
    """,
)
HISTORY_COLUMNS = (
    "user_id",
    "cutoff_time",
    "model_name",
    "model_version",
    "model_family",
    "score",
    "scored_at",
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
    # Rows of predictions.served_history after this run, over every cutoff and version.
    history_rows: int = 0
    history_cutoffs: int = 0
    # Where the categories of next_categories and the actions came from (model or baseline).
    category_source: str = ""


def score_deciles(scores: np.ndarray) -> np.ndarray:
    """Decile 1 holds the highest scores, decile 10 the lowest (ties broken by order)."""
    ranks = pd.Series(scores).rank(method="first", ascending=False).to_numpy()
    return np.ceil(ranks * 10 / len(scores)).astype(int)


def top_drivers(
    contributions: pd.DataFrame, features: pd.DataFrame, n: int = 3
) -> list[list[str | None]]:
    """The n features with the largest positive contribution per row, each with the
    shopper's value in words and what it did, e.g. "carted 3 items in the last 7 days (raises
    the score, +0.42)" (`ml.reasons`);
    None where fewer than n features raised the score."""
    columns = np.array(contributions.columns)
    order = np.argsort(-contributions.to_numpy(), axis=1)[:, :n]
    pushes = np.take_along_axis(contributions.to_numpy(), order, axis=1)
    values = features[list(columns)].to_numpy(dtype=float)
    drivers = []
    for row, (names, row_pushes) in enumerate(zip(order, pushes, strict=True)):
        drivers.append(
            [
                _driver_text(columns[name], values[row, name], push) if push > 0 else None
                for name, push in zip(names, row_pushes, strict=True)
            ]
        )
    return drivers


def _driver_text(name: str, value: float, push: float) -> str:
    return f"{describe_feature(name, value)} (raises the score, {push:+.2f})"


def category_rows(
    frame: pd.DataFrame,
    ranking: CategoryRanking,
    names: dict[int, str],
    scored_at: datetime,
) -> pd.DataFrame:
    """predictions.next_categories: one row per scored shopper and rank."""
    n, k = ranking.categories.shape
    indexes = ranking.categories.reshape(-1)
    probabilities = (
        np.full(n * k, np.nan) if ranking.probabilities is None else ranking.probabilities.ravel()
    )
    return pd.DataFrame(
        {
            "user_id": np.repeat(frame["user_id"].to_numpy(), k),
            "cutoff_time": np.repeat(frame["cutoff_time"].to_numpy(), k),
            "rank": np.tile(np.arange(1, k + 1), n),
            "category_idx": indexes.astype(np.int64),
            "category_name": [names.get(int(i)) for i in indexes],
            "probability": probabilities,
            "source": ranking.source,
            "scored_at": scored_at,
        }
    )


RANK_GOALS = ("propensity", "open_carts_first")


def choose_targets(
    propensity: pd.DataFrame, features: pd.DataFrame, top_k: int, rank_by: str = "propensity"
) -> pd.DataFrame:
    """The intervention list's rows of `propensity`, in list order: the top_k highest scores
    (rank_by="propensity"), or shoppers with an open cart first, each group by score
    ("open_carts_first": a shop whose goal is to win back carts)."""
    if rank_by not in RANK_GOALS:
        raise ValueError(f"rank_by must be one of {RANK_GOALS}, got {rank_by!r}")
    n = min(top_k, len(propensity))
    if rank_by == "propensity":
        return propensity.nlargest(n, "score", keep="first")
    open_cart = features["has_open_cart"].fillna(0).to_numpy() > 0.5
    # lexsort's last key sorts first: open carts, then the highest score (stable for ties).
    order = np.lexsort((-propensity["score"].to_numpy(), ~open_cart))
    return propensity.iloc[order[:n]]


def score_latest_cutoff(
    warehouse: Path,
    tracking_uri: str,
    top_k: int = 100,
    model_alias: str = CHAMPION_ALIAS,
    rank_by: str = "propensity",
) -> ScoringSummary:
    """Scores the latest cutoff with `models:/purchase-propensity@<alias>` and writes the
    predictions tables (see `write_predictions`); the intervention list follows `rank_by`
    (`choose_targets`). Re-scoring the same cutoff replaces that cutoff's rows; the served
    history keeps other versions' and other cutoffs' rows."""
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
    scores = predict_frame(model, features)
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

    top = choose_targets(propensity, features, top_k, rank_by)
    drivers = [[None, None, None]] * len(top)
    if hasattr(python_model, "contributions"):
        top_features = features.loc[top.index]
        drivers = top_drivers(python_model.contributions(top_features), top_features)
    ranking = rank_categories(frame, tracking_uri)
    names = load_category_names(warehouse)
    event_reasons = [None] * len(top)
    if hasattr(python_model, "event_reasons"):
        event_reasons = python_model.event_reasons(frame.loc[top.index], names)
    positions = frame.index.get_indexer(top.index)
    actions = choose_actions(frame.loc[top.index], ranking.categories[positions, 0])
    targets = pd.DataFrame(
        {
            "user_id": top["user_id"].to_numpy(),
            "cutoff_time": top["cutoff_time"].to_numpy(),
            "rank": np.arange(1, len(top) + 1),
            "score": top["score"].to_numpy(),
            "driver_1": [row[0] for row in drivers],
            "driver_2": [row[1] for row in drivers],
            "driver_3": [row[2] for row in drivers],
            "action": actions["action"].to_numpy(),
            "action_category_idx": actions["action_category_idx"].to_numpy(),
            "action_category": [names.get(int(i)) for i in actions["action_category_idx"]],
            "category_source": ranking.source,
            "event_reasons": event_reasons,
            "model_version": str(version.version),
            "scored_at": scored_at,
        }
    )
    next_categories = category_rows(frame, ranking, names, scored_at)
    history_rows, history_cutoffs = write_predictions(
        warehouse, cutoff_time, propensity, targets, next_categories
    )
    return ScoringSummary(
        cutoff_time=cutoff_time,
        model_version=str(version.version),
        model_family=family,
        n_scored=len(propensity),
        n_targets=len(targets),
        mean_score=float(scores.mean()),
        category_source=ranking.source,
        top_decile_mean_score=float(propensity.loc[propensity["decile"] == 1, "score"].mean()),
        history_rows=history_rows,
        history_cutoffs=history_cutoffs,
    )


def write_predictions(
    warehouse: Path,
    cutoff_time: datetime,
    propensity: pd.DataFrame,
    targets: pd.DataFrame,
    next_categories: pd.DataFrame | None = None,
) -> tuple[int, int]:
    """Writes one scoring run in a single transaction: a failure anywhere (a crash, a bad row)
    leaves every table as it was, and a rerun never doubles rows.

    user_propensity, intervention_targets and (when given) next_categories: the cutoff's rows
    are replaced. served_history:
    the rows of the same (cutoff, model name, model version) are replaced, everything else is
    kept. `propensity` has the user_propensity columns (one model version). The first write to
    a warehouse without the history seeds it from user_propensity (every cutoff's last run).
    Returns the served history's rows and distinct cutoffs after the write.
    """
    versions = propensity[["model_name", "model_version"]].drop_duplicates()
    if len(versions) > 1:
        raise ValueError(f"One scoring run writes one model version, got {len(versions)}")
    history = propensity.loc[:, list(HISTORY_COLUMNS)]
    with duckdb.connect(str(warehouse)) as con:
        tables = {
            name
            for (name,) in con.execute(
                "select table_name from information_schema.tables "
                "where table_schema = 'predictions'"
            ).fetchall()
        }
        con.execute("begin transaction")
        try:
            for statement in _PREDICTIONS_DDL:
                con.execute(statement)
            if "served_history" not in tables and "user_propensity" in tables:
                # A warehouse scored before the history existed: user_propensity still holds
                # each past cutoff's last served rows, so the history starts with them.
                columns = ", ".join(HISTORY_COLUMNS)
                con.execute(
                    f"insert into predictions.served_history ({columns}) "
                    f"select {columns} from predictions.user_propensity"
                )
            for name, version in versions.itertuples(index=False):
                con.execute(
                    "delete from predictions.served_history where cutoff_time = ? "
                    "and model_name = ? and model_version = ?",
                    [cutoff_time, name, version],
                )
            _insert(con, "served_history", history)
            replaced = [("user_propensity", propensity), ("intervention_targets", targets)]
            if next_categories is not None:
                replaced.append(("next_categories", next_categories))
            for table, rows in replaced:
                con.execute(f"delete from predictions.{table} where cutoff_time = ?", [cutoff_time])
                _insert(con, table, rows)
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        (n_rows, n_cutoffs) = con.execute(
            "select count(*), count(distinct cutoff_time) from predictions.served_history"
        ).fetchall()[0]
    return int(n_rows), int(n_cutoffs)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: pd.DataFrame) -> None:
    """Inserts `rows` by column name. A failure leaves `new_rows` registered: the caller rolls
    back and closes the connection (unregistering inside an aborted transaction would fail)."""
    con.register("new_rows", rows)
    con.execute(f"insert into predictions.{table} by name select * from new_rows")
    con.unregister("new_rows")
