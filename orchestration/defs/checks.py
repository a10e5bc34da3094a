"""Asset checks on the warehouse: freshness of raw events, the label rate, feature drift between
the training and the scoring window, NULLs in key features, and the score distribution.

Thin on purpose: the rules live in ml/monitoring.py; these read the warehouse read-only and
report. They run in the warehouse pool, since a read-only open fails while another process
writes. Drift warns (a shifted population is worth a look, not a stop); the others fail as errors.
None blocks downstream assets: they report, the promotion gate decides.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd

from ml import settings
from ml.monitoring import (
    CLOCK_FEATURES,
    FRESHNESS_MAX_LAG,
    KEY_FEATURES,
    PSI_WARN_THRESHOLD,
    STRAY_GAP_DAYS,
    STRAY_MAX_SHARE,
    CheckOutcome,
    check_drift,
    check_freshness,
    check_label_rate,
    check_no_nulls,
    check_score_distribution,
    check_stray_events,
    feature_psi,
)
from ml.splits import choose_time_split
from orchestration.defs.jobs import CUTOFF_TAG, RAW_EVENTS
from orchestration.defs.resources import WAREHOUSE_POOL, TimeRolesResource

LABELS = dg.AssetKey(["marts", "labels"])
USER_FEATURES = dg.AssetKey(["marts", "user_features"])
USER_PROPENSITY = dg.AssetKey(["predictions", "user_propensity"])
KEY_COLUMNS = ("user_id", "cutoff_time")


class FreshnessConfig(dg.Config):
    """reference_time: empty means the run's cutoff tag (nightly runs), else now (UTC)."""

    max_lag_hours: float = FRESHNESS_MAX_LAG.total_seconds() / 3600
    reference_time: str = ""


class DriftConfig(dg.Config):
    psi_threshold: float = PSI_WARN_THRESHOLD


def connect() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(settings.warehouse_path()), read_only=True)


def to_result(
    outcome: CheckOutcome,
    asset_key: dg.AssetKey,
    check_name: str,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=outcome.passed,
        severity=severity,
        description=outcome.message,
        metadata={"message": outcome.message, **outcome.metadata},
    )


def reference_time(config: FreshnessConfig, run_tags: dict[str, str]) -> datetime:
    text = config.reference_time or run_tags.get(CUTOFF_TAG, "")
    if text:
        parsed = datetime.fromisoformat(text)
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    return datetime.now(UTC).replace(tzinfo=None)


@dg.asset_check(
    asset=RAW_EVENTS,
    name="raw_events_fresh",
    pool=WAREHOUSE_POOL,
    description="The newest raw event is at most max_lag_hours older than the run's cutoff.",
)
def raw_events_fresh(
    context: dg.AssetCheckExecutionContext, config: FreshnessConfig
) -> dg.AssetCheckResult:
    with connect() as con:
        (last_event,) = con.sql("select max(event_time) from raw.events").fetchall()[0]
    outcome = check_freshness(
        last_event,
        reference_time(config, dict(context.run.tags)),
        timedelta(hours=config.max_lag_hours),
    )
    return to_result(outcome, RAW_EVENTS, "raw_events_fresh")


def drift_outcome(
    con: duckdb.DuckDBPyConnection, threshold: float, time_roles: TimeRolesResource
) -> CheckOutcome:
    """PSI per feature: the training cutoffs of the roles training will use (the run's
    `time_roles`) against the latest cutoff."""
    try:
        split = choose_time_split(
            con.sql("select * from marts.cutoffs order by cutoff_time").df(),
            n_validation=time_roles.n_validation_cutoffs,
            n_promotion=time_roles.n_promotion_cutoffs,
            max_train_cutoffs=time_roles.max_train_cutoffs,
        )
    except ValueError as error:
        return CheckOutcome(False, f"No training window to compare with: {error}")
    columns = [
        name
        for (name,) in con.sql(
            "select column_name from information_schema.columns where table_schema = 'marts' "
            "and table_name = 'user_features' order by ordinal_position"
        ).fetchall()
        if name not in KEY_COLUMNS and name not in CLOCK_FEATURES
    ]
    select = ", ".join(f'cast("{c}" as double) as "{c}"' for c in columns)
    train: pd.DataFrame = con.sql(
        f"select {select} from marts.user_features where cutoff_time in "
        f"(select unnest($cutoffs::timestamp[]))",
        params={"cutoffs": list(split.train_cutoffs)},
    ).df()
    scoring: pd.DataFrame = con.sql(
        f"select {select} from marts.user_features where cutoff_time = "
        "(select cutoff_time from marts.cutoffs where is_latest)"
    ).df()
    if train.empty or scoring.empty:
        return CheckOutcome(
            False, f"Empty window: {len(train)} training rows, {len(scoring)} scoring rows"
        )
    psi_values = feature_psi(train, scoring, columns)
    outcome = check_drift(psi_values, threshold)
    table = "\n".join(
        f"| {name} | {value:.3f} |"
        for name, value in sorted(psi_values.items(), key=lambda i: -i[1])
    )
    metadata = {
        **outcome.metadata,
        "train_rows": len(train),
        "scoring_rows": len(scoring),
        "psi_by_feature": "| feature | PSI |\n|---|---|\n" + table,
    }
    return CheckOutcome(outcome.passed, outcome.message, metadata)


def nulls_outcome(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    counts = ", ".join(f'count(*) - count("{c}")' for c in KEY_FEATURES)
    row = con.sql(f"select count(*), {counts} from marts.user_features").fetchall()[0]
    return check_no_nulls(dict(zip(KEY_FEATURES, row[1:], strict=True)), row[0])


def label_rate_outcome(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    labels = con.sql(
        "select purchased::int as purchased from marts.labels where horizon_complete"
    ).df()["purchased"]
    return check_label_rate(labels.to_numpy())


MART_CHECKS = [
    dg.AssetCheckSpec(
        "label_rate_in_band",
        asset=LABELS,
        description="Share of buyers among complete label windows lies in a plausible band.",
    ),
    dg.AssetCheckSpec(
        "feature_drift_psi",
        asset=USER_FEATURES,
        description=(
            f"PSI per feature, training window vs scoring cutoff (warn > {PSI_WARN_THRESHOLD})."
        ),
    ),
    dg.AssetCheckSpec(
        "key_features_not_null",
        asset=USER_FEATURES,
        description="No NULL in the key count and recency features.",
    ),
]


@dg.multi_asset_check(
    specs=MART_CHECKS,
    can_subset=True,
    pool=WAREHOUSE_POOL,
    description="Label rate, feature drift and NULLs on the marts, in one read-only pass.",
)
def mart_checks(
    context: dg.AssetCheckExecutionContext, config: DriftConfig, time_roles: TimeRolesResource
) -> Iterator[dg.AssetCheckResult]:
    selected = {key.name for key in context.selected_asset_check_keys}
    with connect() as con:
        if "label_rate_in_band" in selected:
            yield to_result(label_rate_outcome(con), LABELS, "label_rate_in_band")
        if "feature_drift_psi" in selected:
            yield to_result(
                drift_outcome(con, config.psi_threshold, time_roles),
                USER_FEATURES,
                "feature_drift_psi",
                dg.AssetCheckSeverity.WARN,
            )
        if "key_features_not_null" in selected:
            yield to_result(nulls_outcome(con), USER_FEATURES, "key_features_not_null")


@dg.asset_check(
    asset=USER_PROPENSITY,
    name="score_distribution_sane",
    pool=WAREHOUSE_POOL,
    description="Latest scored cutoff: finite scores in [0, 1], not constant, mean in band.",
)
def score_distribution_sane(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    with connect() as con:
        scores = con.sql(
            "select score from predictions.user_propensity where cutoff_time = "
            "(select max(cutoff_time) from predictions.user_propensity)"
        ).df()["score"]
    outcome = check_score_distribution(scores.to_numpy())
    return to_result(outcome, USER_PROPENSITY, "score_distribution_sane")


ASSET_CHECKS = [raw_events_fresh, mart_checks, score_distribution_sane]


CUTOFFS = dg.AssetKey(["marts", "cutoffs"])


class StrayEventsConfig(dg.Config):
    """min_gap_days: empty days that set a day apart; max_share: the most a stray group holds."""

    min_gap_days: int = STRAY_GAP_DAYS
    max_share: float = STRAY_MAX_SHARE


@dg.asset_check(
    asset=CUTOFFS,
    name="no_stray_events",
    pool=WAREHOUSE_POOL,
    description=(
        "No few events far before or after the rest stretch the cutoff grid; the message says "
        "which, and the dbt var (data_start) that starts the grid later."
    ),
)
def no_stray_events(
    context: dg.AssetCheckExecutionContext, config: StrayEventsConfig
) -> dg.AssetCheckResult:
    """Reads the events the models use (intermediate.int_events, after data_start and as_of), so
    that once data_start is set the check passes although raw.events keeps the strays. Warns:
    the features stay right, but the grid gains empty cutoffs and the lookbacks look short."""
    with connect() as con:
        rows = con.sql(
            "select event_time::date as day, count(*) from intermediate.int_events group by day"
        ).fetchall()
    outcome = check_stray_events(dict(rows), config.min_gap_days, config.max_share)
    return to_result(outcome, CUTOFFS, "no_stray_events", dg.AssetCheckSeverity.WARN)


ASSET_CHECKS.append(no_stray_events)
