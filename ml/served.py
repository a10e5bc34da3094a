"""Served predictions checked when their labels mature: what the deployed model really did.

Every scoring run appends its scores to `predictions.served_history` (`ml.scoring`). Once a
scored cutoff's label window is over (`marts.cutoffs.horizon_complete`), its served scores meet
the realized labels (`marts.labels.purchased`), and the figures the version promised on its
promotion window (its MLflow run's `promotion_pr_auc` and `promotion_ece` with their 95 %
intervals) can be compared with what it delivered: the one estimate of a deployed model that no
tuning or promotion decision has touched.

Per (cutoff, model version): rows and buyers, the mean score beside the observed buyer rate,
the realized PR-AUC and ECE with user-level bootstrap intervals (`ml.evaluation.bootstrap`).
`check_served_within_promise` warns when a realized PR-AUC interval lies wholly below the
promised one, and when served users found no label (a rebuilt warehouse, a changed pseudonym
salt: the realized figures then describe only part of what was served).

Plain Python: the Dagster asset `monitoring/served_performance` only calls this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ml.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Interval,
    bootstrap_metrics,
)
from ml.monitoring import CheckOutcome

HISTORY_TABLE = "predictions.served_history"
# The MLflow run metrics a version promised (ml.tracking.evaluation_metrics).
PROMISED_METRICS = ("promotion_pr_auc", "promotion_ece")


@dataclass(frozen=True)
class Promise:
    """What a model version's final run measured on its promotion window; None where the run
    lacks the metric (older versions, or a lookup that failed: `note` says why)."""

    pr_auc: Interval | None = None
    ece: Interval | None = None
    run_id: str | None = None
    note: str = ""


@dataclass(frozen=True)
class ServedPerformance:
    """One matured (cutoff, model version): served scores against the realized labels.

    served_rows: rows in the history; rows: those with a label (the evaluated ones);
    unlabeled_rows: served users without a marts.labels row at that cutoff (should be 0);
    unserved_labeled_rows: users with a label at that cutoff that this version did not score
    (users whose events arrived after the scoring run). pr_auc is None without a buyer.
    """

    cutoff_time: datetime
    horizon_end: datetime
    model_name: str
    model_version: str
    model_family: str | None
    scored_at: datetime
    served_rows: int
    rows: int
    buyers: int
    unlabeled_rows: int
    unserved_labeled_rows: int
    mean_score: float
    buyer_rate: float
    pr_auc: Interval | None
    ece: Interval | None
    promise: Promise = field(default_factory=Promise)

    @property
    def below_promise(self) -> bool:
        """The realized PR-AUC interval lies wholly below the promised one."""
        realized, promised = self.pr_auc, self.promise.pr_auc
        if realized is None or promised is None:
            return False
        return realized.high < promised.low


@dataclass(frozen=True)
class PendingCutoff:
    """A served (cutoff, version) whose labels have not matured. horizon_end is None when the
    cutoff is no longer in marts.cutoffs (the warehouse was rebuilt on another grid)."""

    cutoff_time: datetime
    model_version: str
    horizon_end: datetime | None
    served_rows: int


@dataclass(frozen=True)
class ServedReport:
    matured: tuple[ServedPerformance, ...]
    pending: tuple[PendingCutoff, ...]

    @property
    def next_maturity(self) -> PendingCutoff | None:
        """The pending cutoff whose label window ends first."""
        dated = [p for p in self.pending if p.horizon_end is not None]
        return min(dated, key=lambda p: (p.horizon_end, p.cutoff_time)) if dated else None

    def summary(self) -> str:
        """One line: how many matured, and when the next one does."""
        cutoffs = {p.cutoff_time for p in self.matured}
        text = f"{len(cutoffs)} cutoff(s) matured ({len(self.matured)} cutoff/version pair(s))"
        upcoming = self.next_maturity
        if upcoming is not None:
            text += (
                f"; next matures at {upcoming.horizon_end} (cutoff {upcoming.cutoff_time}, "
                f"version {upcoming.model_version})"
            )
        elif not self.pending and not self.matured:
            text += "; nothing served yet"
        lost = [p for p in self.pending if p.horizon_end is None]
        if lost:
            text += f"; {len(lost)} served cutoff(s) no longer in marts.cutoffs"
        return text


def _connect(warehouse: Path | str | duckdb.DuckDBPyConnection):
    if isinstance(warehouse, duckdb.DuckDBPyConnection):
        return _Borrowed(warehouse)
    return duckdb.connect(str(warehouse), read_only=True)


class _Borrowed:
    """A caller's connection used as a context manager without closing it."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        return self.con

    def __exit__(self, *exc) -> None:
        return None


def _has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()[0][0]
    )


def load_served(
    warehouse: Path | str | duckdb.DuckDBPyConnection,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(groups, rows) from the served history and the marts.

    groups: one row per served (cutoff, model name, version) with its family, scored_at,
    served_rows, horizon_end and horizon_complete (NULL when the cutoff left marts.cutoffs) and
    unserved_labeled_rows. rows: every served row of a matured group with its label (purchased
    NULL where marts.labels has no row for that user and cutoff).
    """
    empty_groups = pd.DataFrame(
        columns=[
            "cutoff_time",
            "model_name",
            "model_version",
            "model_family",
            "scored_at",
            "served_rows",
            "horizon_end",
            "horizon_complete",
            "unserved_labeled_rows",
        ]
    )
    empty_rows = pd.DataFrame(
        columns=["cutoff_time", "model_name", "model_version", "user_id", "score", "purchased"]
    )
    with _connect(warehouse) as con:
        if not _has_table(con, "predictions", "served_history"):
            return empty_groups, empty_rows
        groups = con.sql(
            f"""
            with served as (
                select
                    cutoff_time, model_name, model_version,
                    any_value(model_family) as model_family,
                    max(scored_at) as scored_at,
                    count(*) as served_rows
                from {HISTORY_TABLE}
                group by cutoff_time, model_name, model_version
            ),
            unserved as (
                select s.cutoff_time, s.model_name, s.model_version, count(*) as n
                from served as s
                join marts.labels as l using (cutoff_time)
                where not exists (
                    select 1 from {HISTORY_TABLE} as h
                    where h.user_id = l.user_id and h.cutoff_time = l.cutoff_time
                        and h.model_name = s.model_name and h.model_version = s.model_version
                )
                group by s.cutoff_time, s.model_name, s.model_version
            )
            select
                s.*, c.horizon_end, c.horizon_complete,
                coalesce(u.n, 0) as unserved_labeled_rows
            from served as s
            left join marts.cutoffs as c using (cutoff_time)
            left join unserved as u using (cutoff_time, model_name, model_version)
            order by s.cutoff_time, try_cast(s.model_version as integer), s.model_version
            """
        ).df()
        rows = con.sql(
            f"""
            select
                h.cutoff_time, h.model_name, h.model_version, h.user_id, h.score,
                cast(l.purchased as integer) as purchased
            from {HISTORY_TABLE} as h
            join marts.cutoffs as c using (cutoff_time)
            left join marts.labels as l using (user_id, cutoff_time)
            where c.horizon_complete
            order by h.cutoff_time, h.model_version, h.user_id
            """
        ).df()
    return groups, rows


def served_performance(
    warehouse: Path | str | duckdb.DuckDBPyConnection,
    promise_of: Callable[[str, str], Promise] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ServedReport:
    """Every served (cutoff, version) of the history: evaluated where its labels matured,
    listed as pending where not. `promise_of(model_name, version)` gives what the version
    promised (e.g. `registry_promises(tracking_uri)`); None leaves every promise empty.
    Opens the warehouse read-only (or uses the connection given)."""
    groups, rows = load_served(warehouse)
    matured: list[ServedPerformance] = []
    pending: list[PendingCutoff] = []
    by_group = {
        key: frame for key, frame in rows.groupby(["cutoff_time", "model_name", "model_version"])
    }
    for group in groups.itertuples(index=False):
        cutoff = _datetime(group.cutoff_time)
        if not _is_true(group.horizon_complete):
            pending.append(
                PendingCutoff(
                    cutoff_time=cutoff,
                    model_version=str(group.model_version),
                    horizon_end=None
                    if pd.isna(group.horizon_end)
                    else _datetime(group.horizon_end),
                    served_rows=int(group.served_rows),
                )
            )
            continue
        frame = by_group.get((group.cutoff_time, group.model_name, group.model_version))
        if frame is None:
            frame = rows.iloc[0:0]
        matured.append(
            evaluate_served(
                frame,
                cutoff_time=cutoff,
                horizon_end=_datetime(group.horizon_end),
                model_name=str(group.model_name),
                model_version=str(group.model_version),
                model_family=None if pd.isna(group.model_family) else str(group.model_family),
                scored_at=_datetime(group.scored_at),
                unserved_labeled_rows=int(group.unserved_labeled_rows),
                promise=(promise_of or _no_promise)(
                    str(group.model_name), str(group.model_version)
                ),
                n_resamples=n_resamples,
                seed=seed,
                confidence=confidence,
            )
        )
    return ServedReport(matured=tuple(matured), pending=tuple(pending))


def evaluate_served(
    rows: pd.DataFrame,
    *,
    cutoff_time: datetime,
    horizon_end: datetime,
    model_name: str,
    model_version: str,
    model_family: str | None,
    scored_at: datetime,
    unserved_labeled_rows: int = 0,
    promise: Promise | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ServedPerformance:
    """Realized figures of one (cutoff, version) from its served rows (`user_id`, `score`,
    `purchased`, NaN where no label): rows without a label are counted, not evaluated."""
    labeled = rows[rows["purchased"].notna()]
    y = labeled["purchased"].to_numpy(dtype=np.int64)
    scores = labeled["score"].to_numpy(dtype=np.float64)
    pr_auc = ece = None
    if len(labeled):
        intervals = bootstrap_metrics(
            y,
            scores,
            labeled["user_id"].to_numpy(),
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
        ece = intervals["ece"]
        if y.sum() > 0:
            pr_auc = intervals["pr_auc"]
    return ServedPerformance(
        cutoff_time=cutoff_time,
        horizon_end=horizon_end,
        model_name=model_name,
        model_version=model_version,
        model_family=model_family,
        scored_at=scored_at,
        served_rows=len(rows),
        rows=len(labeled),
        buyers=int(y.sum()),
        unlabeled_rows=int(len(rows) - len(labeled)),
        unserved_labeled_rows=unserved_labeled_rows,
        mean_score=float(scores.mean()) if len(scores) else float("nan"),
        buyer_rate=float(y.mean()) if len(y) else float("nan"),
        pr_auc=pr_auc,
        ece=ece,
        promise=promise or Promise(),
    )


def promise_from_metrics(
    metrics: dict[str, float], run_id: str | None = None, confidence: float = DEFAULT_CONFIDENCE
) -> Promise:
    """A Promise from a final run's metrics: each of PROMISED_METRICS with `_ci_low`/`_ci_high`
    (all three needed, else that figure is None)."""

    def interval(name: str) -> Interval | None:
        values = [metrics.get(name), metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")]
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        return Interval(float(values[0]), float(values[1]), float(values[2]), confidence)

    pr_auc, ece = interval("promotion_pr_auc"), interval("promotion_ece")
    missing = [
        name for name, value in zip(PROMISED_METRICS, (pr_auc, ece), strict=True) if value is None
    ]
    note = f"run {run_id} lacks {', '.join(missing)} with its interval" if missing else ""
    return Promise(pr_auc=pr_auc, ece=ece, run_id=run_id, note=note)


def registry_promises(tracking_uri: str | None = None) -> Callable[[str, str], Promise]:
    """`promise_of(model_name, version)` reading the MLflow registry: the version's run
    (`get_model_version(name, version).run_id`) and its promotion metrics. Cached per version;
    a version or run the registry no longer has gives an empty Promise with a note."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    cache: dict[tuple[str, str], Promise] = {}

    def promise_of(model_name: str, version: str) -> Promise:
        key = (model_name, version)
        if key not in cache:
            try:
                run_id = client.get_model_version(model_name, version).run_id
                if not run_id:
                    cache[key] = Promise(note=f"{model_name} v{version} has no run")
                else:
                    metrics = client.get_run(run_id).data.metrics
                    cache[key] = promise_from_metrics(metrics, run_id)
            except MlflowException as error:
                message = str(error).splitlines()[0][:200]
                cache[key] = Promise(note=f"{model_name} v{version}: {message}")
        return cache[key]

    return promise_of


def check_served_within_promise(performances: Iterable[ServedPerformance]) -> CheckOutcome:
    """Warns (passed=False) when a matured cutoff's realized PR-AUC interval lies wholly below
    the interval its version promised (realized high < promised low), or when served users
    found no label. Versions without a promise or cutoffs without a buyer are not compared, and
    the message says so."""
    performances = list(performances)
    below = [p for p in performances if p.below_promise]
    unlabeled = [p for p in performances if p.unlabeled_rows]
    not_compared = [p for p in performances if p.pr_auc is None or p.promise.pr_auc is None]
    metadata: dict[str, float | int | str] = {
        "matured_pairs": len(performances),
        "matured_cutoffs": len({p.cutoff_time for p in performances}),
        "below_promise": len(below),
        "not_compared": len(not_compared),
        "unlabeled_rows": sum(p.unlabeled_rows for p in performances),
    }
    if not performances:
        return CheckOutcome(True, "No served cutoff has matured yet: nothing to compare", metadata)
    problems = [
        f"cutoff {p.cutoff_time} version {p.model_version}: realized PR-AUC "
        f"{_text(p.pr_auc)} lies wholly below the promised {_text(p.promise.pr_auc)}"
        for p in below
    ]
    problems += [
        f"cutoff {p.cutoff_time} version {p.model_version}: {p.unlabeled_rows:,} of "
        f"{p.served_rows:,} served users have no label (rebuilt warehouse or changed pseudonyms?)"
        for p in unlabeled
    ]
    skipped = ""
    if not_compared:
        skipped = "; not compared: " + ", ".join(
            f"cutoff {p.cutoff_time} version {p.model_version} "
            f"({'no buyer' if p.pr_auc is None else 'no promised interval'})"
            for p in not_compared
        )
    if problems:
        return CheckOutcome(False, "; ".join(problems) + skipped, metadata)
    compared = len(performances) - len(not_compared)
    return CheckOutcome(
        True,
        f"{compared} matured cutoff/version pair(s) within or above their promised PR-AUC "
        f"interval{skipped}",
        metadata,
    )


def report_table(performances: Sequence[ServedPerformance], digits: int = 3) -> str:
    """A markdown table: realized beside promised, one row per matured (cutoff, version)."""
    header = (
        "| cutoff | version | family | rows | buyers | unlabeled | mean score | buyer rate | "
        "realized PR-AUC | promised PR-AUC | realized ECE | promised ECE | verdict |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for p in performances:
        if p.pr_auc is None or p.promise.pr_auc is None:
            verdict = "not compared"
        else:
            verdict = "below promise" if p.below_promise else "within promise"
        lines.append(
            f"| {p.cutoff_time} | {p.model_version} | {p.model_family or '?'} | {p.rows:,} | "
            f"{p.buyers:,} | {p.unlabeled_rows:,} | {p.mean_score:.4f} | {p.buyer_rate:.4f} | "
            f"{_text(p.pr_auc, digits)} | {_text(p.promise.pr_auc, digits)} | "
            f"{_text(p.ece, digits)} | {_text(p.promise.ece, digits)} | {verdict} |"
        )
    return "\n".join(lines)


def _text(interval: Interval | None, digits: int = 3) -> str:
    return "n/a" if interval is None else interval.text(digits)


def _no_promise(model_name: str, version: str) -> Promise:
    return Promise(note="no promise looked up")


def _is_true(value) -> bool:
    return False if value is None or pd.isna(value) else bool(value)


def _datetime(value) -> datetime:
    return pd.Timestamp(value).to_pydatetime()
