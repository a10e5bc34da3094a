"""Scoring: the champion's purchase propensity for every user active at the latest cutoff, and
the top-k intervention list, written back to the warehouse (schema `predictions`), with every
run's scores kept in `predictions.served_history`. Then the served predictions whose labels have
matured are checked against what their model version promised (`monitoring/served_performance`).
"""

import dagster as dg
import duckdb

from ml import settings
from ml.evaluation.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from ml.scoring import score_latest_cutoff
from ml.served import (
    check_served_within_promise,
    registry_promises,
    report_table,
    served_performance,
)
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.defs.training import NEXT_CATEGORY_KEY, champion

SERVED_HISTORY = dg.AssetKey(["predictions", "served_history"])
NEXT_CATEGORIES = dg.AssetKey(["predictions", "next_categories"])
CATEGORIES = dg.AssetKey(["marts", "categories"])
SERVED_PERFORMANCE = dg.AssetKey(["monitoring", "served_performance"])
LABELS = dg.AssetKey(["marts", "labels"])
CUTOFFS = dg.AssetKey(["marts", "cutoffs"])
SERVED_CHECK = "served_within_promise"


class ScoringConfig(dg.Config):
    """The intervention list: how many shoppers, and in which order. rank_by: "propensity"
    (the highest scores) or "open_carts_first" (shoppers with an open cart first, each group by
    score: a shop whose goal is to win back carts)."""

    top_k: int = 100
    rank_by: str = "propensity"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["predictions", "user_propensity"],
            group_name="scoring",
            deps=[champion],
            description="Score and decile (1 = most likely to buy) per user at the latest cutoff.",
        ),
        dg.AssetSpec(
            ["predictions", "intervention_targets"],
            group_name="scoring",
            deps=[champion, NEXT_CATEGORY_KEY],
            description=(
                "The top-k users with the three features that raised their score most (with "
                "their values), the action to take (win back a cart, re-engage a lapsing buyer, "
                "offer in a category) and its category."
            ),
        ),
        dg.AssetSpec(
            NEXT_CATEGORIES,
            group_name="scoring",
            deps=[NEXT_CATEGORY_KEY, CATEGORIES],
            description=(
                "Every scored shopper's top 10 categories with the next-category champion's "
                "probabilities (the most-frequent baseline, without probabilities, until a "
                "version has earned the champion alias)."
            ),
        ),
        dg.AssetSpec(
            SERVED_HISTORY,
            group_name="scoring",
            deps=[champion],
            description=(
                "Every scoring run's scores (user, cutoff, model name, version and family, "
                "score, scored_at), kept; a rerun for the same cutoff and version replaces its "
                "own rows."
            ),
        ),
    ],
    pool=WAREHOUSE_POOL,  # writes the predictions schema of the warehouse
)
def propensity_scores(context: dg.AssetExecutionContext, config: ScoringConfig):
    summary = score_latest_cutoff(
        settings.warehouse_path(),
        settings.mlflow_tracking_uri(),
        top_k=config.top_k,
        rank_by=config.rank_by,
    )
    context.log.info(
        f"Scored {summary.n_scored:,} users at {summary.cutoff_time} with version "
        f"{summary.model_version} ({summary.model_family})"
    )
    shared = {
        "cutoff_time": str(summary.cutoff_time),
        "model_version": summary.model_version,
        "model_family": summary.model_family,
    }
    yield dg.MaterializeResult(
        asset_key=["predictions", "user_propensity"],
        metadata={
            **shared,
            "users_scored": summary.n_scored,
            "mean_score": summary.mean_score,
            "top_decile_mean_score": summary.top_decile_mean_score,
        },
    )
    yield dg.MaterializeResult(
        asset_key=["predictions", "intervention_targets"],
        metadata={**shared, "targets": summary.n_targets},
    )
    yield dg.MaterializeResult(
        asset_key=NEXT_CATEGORIES,
        metadata={**shared, "category_source": summary.category_source},
    )
    yield dg.MaterializeResult(
        asset_key=SERVED_HISTORY,
        metadata={
            **shared,
            "rows_this_run": summary.n_scored,
            "history_rows": summary.history_rows,
            "history_cutoffs": summary.history_cutoffs,
        },
    )


class ServedMonitorConfig(dg.Config):
    """The user-level bootstrap of the realized figures."""

    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    confidence: float = DEFAULT_CONFIDENCE


@dg.asset(
    key=SERVED_PERFORMANCE,
    group_name="monitoring",
    deps=[SERVED_HISTORY, LABELS, CUTOFFS],
    pool=WAREHOUSE_POOL,  # reads the warehouse (read-only): no writer may hold it meanwhile
    description=(
        "Served predictions whose label window has completed, against the realized labels: "
        "PR-AUC and ECE with user-level intervals, mean score vs buyer rate, beside what the "
        "model version promised on its promotion window."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            SERVED_CHECK,
            asset=SERVED_PERFORMANCE,
            description=(
                "Warns when a matured cutoff's realized PR-AUC interval lies wholly below the "
                "interval its model version promised, or served users found no label."
            ),
        )
    ],
)
def served_performance_monitor(
    context: dg.AssetExecutionContext, config: ServedMonitorConfig
) -> dg.MaterializeResult:
    with duckdb.connect(str(settings.warehouse_path()), read_only=True) as con:
        report = served_performance(
            con,
            registry_promises(settings.mlflow_tracking_uri()),
            n_resamples=config.n_resamples,
            seed=config.seed,
            confidence=config.confidence,
        )
    context.log.info(report.summary())
    outcome = check_served_within_promise(report.matured)
    upcoming = report.next_maturity
    metadata: dict = {
        "summary": report.summary(),
        "matured_cutoffs": len({p.cutoff_time for p in report.matured}),
        "matured_pairs": len(report.matured),
        "pending_pairs": len(report.pending),
        "next_maturity": str(upcoming.horizon_end) if upcoming else "none",
        "below_promise": sum(p.below_promise for p in report.matured),
    }
    if report.matured:
        metadata["served_vs_promised"] = dg.MetadataValue.md(report_table(report.matured))
        newest = max(report.matured, key=lambda p: (p.cutoff_time, int_or_text(p.model_version)))
        metadata["newest_matured_cutoff"] = str(newest.cutoff_time)
        metadata["newest_matured_version"] = newest.model_version
        metadata["newest_rows"] = newest.rows
        metadata["newest_buyers"] = newest.buyers
        metadata["newest_mean_score"] = newest.mean_score
        metadata["newest_buyer_rate"] = newest.buyer_rate
        for name, interval in (
            ("realized_pr_auc", newest.pr_auc),
            ("promised_pr_auc", newest.promise.pr_auc),
            ("realized_ece", newest.ece),
            ("promised_ece", newest.promise.ece),
        ):
            if interval is not None:
                metadata[f"newest_{name}"] = interval.estimate
                metadata[f"newest_{name}_ci"] = f"[{interval.low:.4f}, {interval.high:.4f}]"
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=SERVED_CHECK,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=outcome.message,
                metadata={"message": outcome.message, **outcome.metadata},
            )
        ],
    )


def int_or_text(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
