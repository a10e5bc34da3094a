"""Scoring: the champion's purchase propensity for every user active at the latest cutoff, and
the top-k intervention list, written back to the warehouse (schema `predictions`)."""

import dagster as dg

from ml import settings
from ml.scoring import score_latest_cutoff
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.defs.training import champion


class ScoringConfig(dg.Config):
    """How many of the highest-scored users go on the intervention list."""

    top_k: int = 100


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
            deps=[champion],
            description="The top-k users with the three features that raised their score most.",
        ),
    ],
    pool=WAREHOUSE_POOL,  # writes the predictions schema of the warehouse
)
def propensity_scores(context: dg.AssetExecutionContext, config: ScoringConfig):
    summary = score_latest_cutoff(
        settings.warehouse_path(), settings.mlflow_tracking_uri(), top_k=config.top_k
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
