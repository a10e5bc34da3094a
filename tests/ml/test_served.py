"""The served history and its check once labels mature, on a small real DuckDB file: scoring runs
appended without doubling, a failed write that changes nothing, realized figures against the
labels, the rule against the promise, and the promise read from a real MLflow registry."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from ml.evaluation.bootstrap import Interval, expected_calibration_error
from ml.registry import MODEL_NAME
from ml.scoring import score_deciles, write_predictions
from ml.served import (
    Promise,
    ServedPerformance,
    check_served_within_promise,
    promise_from_metrics,
    registry_promises,
    report_table,
    served_performance,
)
from tests.conftest import query

MATURED = datetime(2025, 9, 20)  # label window [09-20, 09-22) complete
PENDING = datetime(2025, 9, 21)  # label window ends 09-23, after the data
HORIZON = timedelta(days=2)
N_USERS = 200
RESAMPLES = 200


def make_marts(warehouse: Path, labels: pd.DataFrame) -> None:
    """marts.cutoffs (two cutoffs, the first complete) and marts.labels as dbt builds them."""
    cutoffs = pd.DataFrame(
        {
            "cutoff_time": [MATURED, PENDING],
            "horizon_end": [MATURED + HORIZON, PENDING + HORIZON],
            "horizon_complete": [True, False],
        }
    )
    with duckdb.connect(str(warehouse)) as con:
        con.execute("create schema marts")
        for name, frame in (("cutoffs", cutoffs), ("labels", labels)):
            con.register("frame", frame)
            con.execute(f"create table marts.{name} as select * from frame")
            con.unregister("frame")


def scored(
    cutoff: datetime, users: np.ndarray, scores: np.ndarray, version: str, top_k: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """user_propensity and intervention_targets rows as ml.scoring builds them."""
    scored_at = datetime(2025, 10, 1, 3, 0)
    propensity = pd.DataFrame(
        {
            "user_id": users.astype(np.int64),
            "cutoff_time": cutoff,
            "score": scores,
            "decile": score_deciles(scores),
            "model_name": MODEL_NAME,
            "model_version": version,
            "model_family": "xgboost",
            "scored_at": scored_at,
        }
    )
    top = propensity.nlargest(top_k, "score")
    targets = pd.DataFrame(
        {
            "user_id": top["user_id"].to_numpy(),
            "cutoff_time": cutoff,
            "rank": np.arange(1, len(top) + 1),
            "score": top["score"].to_numpy(),
            "driver_1": "carts_7d",
            "driver_2": None,
            "driver_3": None,
            "model_version": version,
            "scored_at": scored_at,
        }
    )
    return propensity, targets


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A warehouse whose matured cutoff has labels that follow the served scores (~15 % buyers):
    users 0..199 served; user 199 lost its labels row; user 500 has a label but was not served."""
    rng = np.random.default_rng(7)
    users = np.arange(N_USERS)
    scores = rng.beta(1.2, 6, N_USERS)
    purchased = rng.random(N_USERS) < scores
    labels = pd.DataFrame(
        {
            "user_id": np.r_[users[:-1], 500].astype(np.int64),
            "cutoff_time": MATURED,
            "purchased": np.r_[purchased[:-1], True],
            "horizon_complete": True,
        }
    )
    pending_labels = pd.DataFrame(
        {"user_id": users, "cutoff_time": PENDING, "purchased": False, "horizon_complete": False}
    )
    warehouse = tmp_path / "warehouse.duckdb"
    make_marts(warehouse, pd.concat([labels, pending_labels], ignore_index=True))
    served = pd.DataFrame({"user_id": users, "score": scores, "purchased": purchased})
    return warehouse, served


def test_history_keeps_every_run_and_a_rerun_replaces_its_own_rows(shop) -> None:
    warehouse, served = shop
    users, scores = served["user_id"].to_numpy(), served["score"].to_numpy()
    assert write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "1")) == (200, 1)
    # The same cutoff and version again (a crash and rerun): replaced, not doubled.
    assert write_predictions(warehouse, MATURED, *scored(MATURED, users, scores / 2, "1")) == (
        200,
        1,
    )
    # Another version scoring the same cutoff keeps its own rows; the next night adds its own.
    write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "2"))
    assert write_predictions(
        warehouse, PENDING, *scored(PENDING, users[:50], scores[:50], "2")
    ) == (
        450,
        2,
    )
    rows = query(
        warehouse,
        "select cutoff_time, model_version, count(*), count(distinct user_id), sum(score) "
        "from predictions.served_history group by all order by all",
    )
    assert [row[:4] for row in rows] == [
        (MATURED, "1", 200, 200),
        (MATURED, "2", 200, 200),
        (PENDING, "2", 50, 50),
    ]
    assert rows[0][4] == pytest.approx(scores.sum() / 2)  # the rerun's scores
    # user_propensity and intervention_targets keep one run per cutoff, as before.
    assert query(
        warehouse,
        "select cutoff_time, model_version, count(*) from predictions.user_propensity "
        "group by all order by all",
    ) == [(MATURED, "2", 200), (PENDING, "2", 50)]
    assert query(warehouse, "select count(*) from predictions.intervention_targets") == [(10,)]


def test_a_warehouse_scored_before_the_history_existed_seeds_it_once(shop) -> None:
    warehouse, served = shop
    users, scores = served["user_id"].to_numpy(), served["score"].to_numpy()
    write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "1"))
    with duckdb.connect(str(warehouse)) as con:
        con.execute("drop table predictions.served_history")  # as before this table existed
    assert write_predictions(warehouse, PENDING, *scored(PENDING, users, scores, "2")) == (400, 2)
    assert write_predictions(warehouse, PENDING, *scored(PENDING, users, scores, "2")) == (400, 2)
    assert query(
        warehouse,
        "select cutoff_time, model_version, count(*) from predictions.served_history "
        "group by all order by all",
    ) == [(MATURED, "1", 200), (PENDING, "2", 200)]


def test_a_write_that_fails_midway_changes_no_table(shop) -> None:
    warehouse, served = shop
    users, scores = served["user_id"].to_numpy(), served["score"].to_numpy()
    write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "1"))
    propensity, targets = scored(MATURED, users, scores / 2, "1")
    targets.loc[targets.index[0], "rank"] = None  # violates NOT NULL: fails after the history
    with pytest.raises(duckdb.ConstraintException):
        write_predictions(warehouse, MATURED, propensity, targets)
    (history, total, targets_rows) = query(
        warehouse,
        "select (select count(*) from predictions.served_history), "
        "(select sum(score) from predictions.user_propensity), "
        "(select count(*) from predictions.intervention_targets)",
    )[0]
    assert history == 200 and targets_rows == 5
    assert total == pytest.approx(scores.sum())


def test_matured_cutoffs_meet_their_labels_and_pending_ones_say_when(shop) -> None:
    warehouse, served = shop
    users, scores = served["user_id"].to_numpy(), served["score"].to_numpy()
    write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "1"))
    write_predictions(warehouse, PENDING, *scored(PENDING, users, scores, "1"))
    promise = Promise(pr_auc=Interval(0.5, 0.4, 0.6, 0.95), run_id="r1")
    report = served_performance(
        warehouse, lambda name, version: promise, n_resamples=RESAMPLES, seed=1
    )

    (matured,) = report.matured
    labeled = served.iloc[:-1]  # user 199 has no labels row at the matured cutoff
    y, s = labeled["purchased"].to_numpy().astype(int), labeled["score"].to_numpy()
    assert (matured.cutoff_time, matured.model_version, matured.model_family) == (
        MATURED,
        "1",
        "xgboost",
    )
    assert matured.horizon_end == MATURED + HORIZON
    assert (matured.served_rows, matured.rows, matured.buyers) == (200, 199, int(y.sum()))
    assert matured.unlabeled_rows == 1 and matured.unserved_labeled_rows == 1
    assert matured.mean_score == pytest.approx(s.mean())
    assert matured.buyer_rate == pytest.approx(y.mean())
    assert matured.pr_auc.estimate == pytest.approx(average_precision_score(y, s))
    assert matured.pr_auc.low < matured.pr_auc.estimate < matured.pr_auc.high
    assert matured.ece.estimate == pytest.approx(expected_calibration_error(y, s))
    assert matured.promise is promise

    (pending,) = report.pending
    assert (pending.cutoff_time, pending.horizon_end, pending.served_rows) == (
        PENDING,
        PENDING + HORIZON,
        200,
    )
    assert report.next_maturity == pending
    assert report.summary().startswith("1 cutoff(s) matured")
    assert f"next matures at {PENDING + HORIZON}" in report.summary()
    table = report_table(report.matured)
    assert "| 2025-09-20 00:00:00 | 1 | xgboost | 199 |" in table
    assert "0.500 [0.400, 0.600]" in table

    # The served user without a label is a warning of its own, whatever the PR-AUC says.
    outcome = check_served_within_promise(report.matured)
    assert not outcome.passed
    assert "1 of 200 served users have no label" in outcome.message
    assert outcome.metadata["unlabeled_rows"] == 1


def test_nothing_matured_yet_is_reported_not_failed(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    labels = pd.DataFrame(
        {"user_id": [1, 2], "cutoff_time": PENDING, "purchased": False, "horizon_complete": False}
    )
    make_marts(warehouse, labels)
    empty = served_performance(warehouse)  # no served history table at all yet
    assert empty.matured == () and empty.pending == ()
    assert "nothing served yet" in empty.summary()

    write_predictions(
        warehouse, PENDING, *scored(PENDING, np.array([1, 2]), np.array([0.1, 0.2]), "3")
    )
    report = served_performance(warehouse)
    assert report.matured == ()
    assert report.summary() == (
        f"0 cutoff(s) matured (0 cutoff/version pair(s)); next matures at {PENDING + HORIZON} "
        f"(cutoff {PENDING}, version 3)"
    )
    outcome = check_served_within_promise(report.matured)
    assert outcome.passed and "nothing to compare" in outcome.message


def performance(
    realized: Interval | None, promised: Interval | None, version: str = "4"
) -> ServedPerformance:
    return ServedPerformance(
        cutoff_time=MATURED,
        horizon_end=MATURED + HORIZON,
        model_name=MODEL_NAME,
        model_version=version,
        model_family="torch-seq",
        scored_at=MATURED,
        served_rows=300,
        rows=300,
        buyers=12,
        unlabeled_rows=0,
        unserved_labeled_rows=0,
        mean_score=0.04,
        buyer_rate=0.04,
        pr_auc=realized,
        ece=Interval(0.01, 0.005, 0.03, 0.95),
        promise=Promise(pr_auc=promised),
    )


def test_the_rule_warns_only_when_the_realized_interval_lies_wholly_below_the_promise() -> None:
    promised = Interval(0.20, 0.15, 0.26, 0.95)
    below = performance(Interval(0.08, 0.05, 0.12, 0.95), promised)
    assert below.below_promise
    outcome = check_served_within_promise([below])
    assert not outcome.passed
    assert outcome.message == (
        "cutoff 2025-09-20 00:00:00 version 4: realized PR-AUC 0.080 [0.050, 0.120] lies "
        "wholly below the promised 0.200 [0.150, 0.260]"
    )
    assert outcome.metadata["below_promise"] == 1

    # Overlapping intervals: the realized figure may be lower, but not surely.
    overlapping = performance(Interval(0.10, 0.06, 0.16, 0.95), promised)
    assert check_served_within_promise([overlapping]).passed
    # No promise (an older version's run) or no buyer: not compared, and said so.
    unpromised = performance(Interval(0.01, 0.0, 0.02, 0.95), None, version="2")
    no_buyer = performance(None, promised, version="3")
    outcome = check_served_within_promise([overlapping, unpromised, no_buyer])
    assert outcome.passed
    assert "1 matured cutoff/version pair(s) within or above" in outcome.message
    assert "version 2 (no promised interval)" in outcome.message
    assert "version 3 (no buyer)" in outcome.message


def test_promises_are_read_from_the_registry_through_the_versions_run(mlflow_store, shop) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL_NAME)
    metrics = {
        "promotion_pr_auc": 0.9,
        "promotion_pr_auc_ci_low": 0.85,
        "promotion_pr_auc_ci_high": 0.95,
        "promotion_ece": 0.02,
        "promotion_ece_ci_low": 0.01,
        "promotion_ece_ci_high": 0.04,
    }
    for number, logged in (("1", metrics), ("2", {"test_pr_auc": 0.2})):
        with mlflow.start_run() as run:
            mlflow.log_metrics(logged)
        version = client.create_model_version(
            MODEL_NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
        assert str(version.version) == number

    promise_of = registry_promises(mlflow.get_tracking_uri())
    first = promise_of(MODEL_NAME, "1")
    assert first.pr_auc == Interval(0.9, 0.85, 0.95, 0.95)
    assert first.ece == Interval(0.02, 0.01, 0.04, 0.95)
    assert first.note == "" and first.run_id == client.get_model_version(MODEL_NAME, "1").run_id
    # A version whose run lacks the figures, and one the registry does not have: no promise.
    second = promise_of(MODEL_NAME, "2")
    assert second.pr_auc is None and second.ece is None
    assert "lacks promotion_pr_auc, promotion_ece" in second.note
    missing = promise_of(MODEL_NAME, "9")
    assert missing.pr_auc is None and missing.note.startswith(f"{MODEL_NAME} v9:")

    # The whole monitor with the registry: version 1 promised 0.85..0.95, and these labels
    # (buyers drawn from the scores) fall short of it.
    warehouse, served = shop
    users, scores = served["user_id"].to_numpy(), served["score"].to_numpy()
    write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "1"))
    write_predictions(warehouse, MATURED, *scored(MATURED, users, scores, "2"))
    report = served_performance(warehouse, promise_of, n_resamples=RESAMPLES)
    by_version = {p.model_version: p for p in report.matured}
    assert by_version["1"].promise == first and by_version["1"].below_promise
    assert by_version["2"].promise.pr_auc is None and not by_version["2"].below_promise
    outcome = check_served_within_promise(report.matured)
    assert not outcome.passed
    assert "version 1: realized PR-AUC" in outcome.message
    assert "lies wholly below the promised 0.900 [0.850, 0.950]" in outcome.message
    assert "version 2 (no promised interval)" in outcome.message


def test_promise_from_metrics_needs_the_estimate_and_both_bounds() -> None:
    partial = promise_from_metrics({"promotion_pr_auc": 0.3, "promotion_pr_auc_ci_low": 0.2})
    assert partial.pr_auc is None
    assert promise_from_metrics(
        {"promotion_pr_auc": 0.3, "promotion_pr_auc_ci_low": 0.2, "promotion_pr_auc_ci_high": 0.4}
    ).pr_auc == Interval(0.3, 0.2, 0.4, 0.95)
