"""The matured-label monitor on a short horizon over two nightly runs, on a real Dagster instance,
warehouse, MLflow registry and Optuna journal (CPU, a small shop, the smallest tuning budget).

The horizon is one day, so the cutoff that the full run scores has its labels complete after the
next night: the night's run then checks those served scores against the realized labels and
against what the serving version promised. The dbt vars travel in the run config of
warehouse_dbt_models (horizon, lookback); the night is `orchestration.nightly.run_night`, whose
schedule request gets the same vars and the test's tuning budget merged in.
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from orchestration.defs.jobs import (
    CUTOFF_TAG,
    full_pipeline_job,
    multiprocess_execution,
    nightly_retraining_job,
)
from orchestration.instance import instance_settings
from tests.conftest import query

SHOP = {"n_users": 2000, "days": 14, "seed": 3}
FIRST_CUTOFF = datetime(2025, 9, 15)  # midnight after the shop's 14 days: scored by the full run
NIGHT_CUTOFF = datetime(2025, 9, 16)  # the night adds 2025-09-15 and scores this cutoff
RESAMPLES = 200
# Every run's sizes: a one-day horizon (so FIRST_CUTOFF matures after one night), a lookback
# that the 14 days hold, and the smallest tuning and bootstrap budgets that still train.
OPS = {
    "warehouse_dbt_models": {"config": {"horizon": "1 day", "lookback": "7 days"}},
    "training__xgb_study": {"config": {"n_trials": 1}},
    "training__seq_study": {"config": {"n_trials": 1, "max_epochs": 1}},
    "training__behaviour_encoder": {"config": {"max_epochs": 1, "max_rows": 2000}},
    "training__next_category_model": {"config": {"max_epochs": 1, "n_resamples": RESAMPLES}},
    "training__xgb_model": {"config": {"n_resamples": RESAMPLES}},
    "training__seq_model": {"config": {"n_resamples": RESAMPLES}},
    "training__champion": {"config": {"n_resamples": RESAMPLES}},
    "propensity_scores": {"config": {"top_k": 10}},
    "monitoring__served_performance": {"config": {"n_resamples": RESAMPLES}},
}
MONITOR_OP = "monitoring__served_performance"
MONITOR = dg.AssetKey(["monitoring", "served_performance"])


def with_sizes(run_config: dict) -> dict:
    """`run_config` with OPS merged into each op's config (the run's own keys win)."""
    merged = copy.deepcopy(run_config)
    ops = merged.setdefault("ops", {})
    for op, values in OPS.items():
        config = ops.setdefault(op, {}).setdefault("config", {})
        ops[op]["config"] = {**values["config"], **config}
    return merged


def monitor_result(result: dg.ExecutionResult) -> tuple[dict, dg.AssetCheckEvaluation]:
    """The monitor's materialization metadata and its check evaluation in one run."""
    (materialization,) = [
        event.event_specific_data.materialization
        for event in result.get_asset_materialization_events()
        if event.event_specific_data.materialization.asset_key == MONITOR
    ]
    (check,) = [
        event.event_specific_data
        for event in result.all_events
        if event.event_type_value == "ASSET_CHECK_EVALUATION"
        and event.event_specific_data.asset_key == MONITOR
    ]
    return {k: v.value for k, v in materialization.metadata.items()}, check


def history_counts(warehouse: Path) -> list[tuple]:
    return query(
        warehouse,
        "select cutoff_time, model_version, count(*), count(distinct user_id), max(scored_at) "
        "from predictions.served_history group by all order by all",
    )


def active_users(warehouse: Path, cutoff: datetime) -> int:
    return query(
        warehouse, f"select count(*) from marts.user_features where cutoff_time = '{cutoff}'"
    )[0][0]


def test_the_matured_label_monitor_on_a_short_horizon_over_two_nightly_runs(
    project_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration import nightly

    warehouse = project_home / "warehouse.duckdb"
    schedule_request = nightly.nightly_request

    def sized_request(cutoff: datetime, n_trials: int | None) -> tuple[dict, dict[str, str]]:
        run_config, tags = schedule_request(cutoff, n_trials)
        return with_sizes(run_config), tags

    monkeypatch.setattr(nightly, "nightly_request", sized_request)

    with dg.instance_for_test(overrides=instance_settings()) as instance:
        # The full run scores FIRST_CUTOFF, whose one-day label window is still open.
        first = dg.execute_job(
            dg.reconstructable(full_pipeline_job),
            instance=instance,
            run_config=with_sizes(
                {
                    "ops": {"landing__synthetic_events": {"config": SHOP}},
                    **multiprocess_execution(),
                }
            ),
            tags={CUTOFF_TAG: FIRST_CUTOFF.isoformat()},
        )
        assert first.success
        metadata, check = monitor_result(first)
        assert metadata["matured_cutoffs"] == 0 and metadata["pending_pairs"] == 1
        assert metadata["next_maturity"] == "2025-09-16 00:00:00"
        assert metadata["summary"].startswith("0 cutoff(s) matured")
        assert (
            "next matures at 2025-09-16 00:00:00 (cutoff 2025-09-15 00:00:00"
            in (metadata["summary"])
        )
        assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
        client = mlflow.MlflowClient(f"sqlite:///{project_home / 'mlflow.db'}")
        served_version = str(
            client.get_model_version_by_alias("purchase-propensity", "champion").version
        )
        (first_rows,) = history_counts(warehouse)
        assert first_rows[:2] == (FIRST_CUTOFF, served_version)
        assert first_rows[2] == first_rows[3] == active_users(warehouse, FIRST_CUTOFF) > 100

        # The night: 2025-09-15 lands, FIRST_CUTOFF's labels are complete, NIGHT_CUTOFF is scored.
        night = nightly.run_night(instance=instance)
        assert night.success, night
        assert night.cutoff == NIGHT_CUTOFF
        night_run = instance.get_run_by_id(night.run_id)
        assert night_run.job_name == "nightly_retraining"
        dbt_config = night_run.run_config["ops"]["warehouse_dbt_models"]["config"]
        assert dbt_config == {
            "as_of": "2025-09-16 00:00:00",
            "horizon": "1 day",
            "lookback": "7 days",
        }
        records = instance.get_records_for_run(night.run_id).records
        night_events = [r.event_log_entry.dagster_event for r in records]
        (materialization,) = [
            e.event_specific_data.materialization
            for e in night_events
            if e is not None
            and e.event_type_value == "ASSET_MATERIALIZATION"
            and e.event_specific_data.materialization.asset_key == MONITOR
        ]
        metadata = {k: v.value for k, v in materialization.metadata.items()}
        (check,) = [
            e.event_specific_data
            for e in night_events
            if e is not None
            and e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.event_specific_data.asset_key == MONITOR
        ]

    # One matured cutoff, served by the full run's champion, with the realized PR-AUC interval
    # beside the interval that version promised on its promotion window.
    assert metadata["matured_cutoffs"] == 1 and metadata["matured_pairs"] == 1
    assert metadata["newest_matured_cutoff"] == "2025-09-15 00:00:00"
    assert metadata["newest_matured_version"] == served_version
    assert metadata["next_maturity"] == "2025-09-17 00:00:00"  # NIGHT_CUTOFF, pending
    low, high = (float(v) for v in metadata["newest_realized_pr_auc_ci"].strip("[]").split(","))
    assert 0 <= low <= metadata["newest_realized_pr_auc"] <= high <= 1
    promised = client.get_run(
        client.get_model_version("purchase-propensity", served_version).run_id
    ).data.metrics
    assert metadata["newest_promised_pr_auc"] == pytest.approx(promised["promotion_pr_auc"])
    assert metadata["newest_promised_pr_auc_ci"] == (
        f"[{promised['promotion_pr_auc_ci_low']:.4f}, {promised['promotion_pr_auc_ci_high']:.4f}]"
    )
    # Every served user of that cutoff met its label; ECE and the buyer rate come with it.
    assert metadata["newest_rows"] == first_rows[2] and metadata["newest_buyers"] >= 1
    assert metadata["newest_buyer_rate"] == pytest.approx(metadata["newest_buyers"] / first_rows[2])
    assert 0 < metadata["newest_mean_score"] < 1
    assert metadata["newest_realized_ece_ci"].startswith("[")
    assert metadata["newest_promised_ece"] == pytest.approx(promised["promotion_ece"])
    table = metadata["served_vs_promised"]
    assert f"| 2025-09-15 00:00:00 | {served_version} |" in table
    # Whatever the verdict, the check warns (never errors) and says what it compared.
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["matured_cutoffs"].value == 1
    assert check.metadata["unlabeled_rows"].value == 0
    if not check.passed:
        assert "cutoff 2025-09-15 00:00:00 version" in check.description

    # The history holds both nights' predictions, each once.
    night_version = str(
        client.get_model_version_by_alias("purchase-propensity", "champion").version
    )
    before = history_counts(warehouse)
    assert [row[:2] for row in before] == [
        (FIRST_CUTOFF, served_version),
        (NIGHT_CUTOFF, night_version),
    ]
    assert before[0][2:] == first_rows[2:]  # the first night's rows as served
    assert before[1][2] == before[1][3] == active_users(warehouse, NIGHT_CUTOFF)

    # Scoring again (a crash and rerun of the night's scoring step) replaces its own rows.
    with dg.instance_for_test(overrides=instance_settings()) as instance:
        rerun = dg.execute_job(
            dg.reconstructable(nightly_retraining_job),
            instance=instance,
            run_config={
                "ops": {op: OPS[op] for op in ("propensity_scores", MONITOR_OP)},
                **multiprocess_execution(),
            },
            asset_selection=[
                dg.AssetKey(["predictions", "user_propensity"]),
                dg.AssetKey(["predictions", "intervention_targets"]),
                dg.AssetKey(["predictions", "served_history"]),
                dg.AssetKey(["predictions", "next_categories"]),
                MONITOR,
            ],
        )
        assert rerun.success
        metadata, _ = monitor_result(rerun)
    after = history_counts(warehouse)
    assert [row[:4] for row in after] == [row[:4] for row in before]
    assert after[0][4] == before[0][4] and after[1][4] > before[1][4]  # only the night's rescored
    assert metadata["matured_cutoffs"] == 1
    assert query(warehouse, "select count(*) from predictions.user_propensity")[0][0] == (
        before[0][2] + before[1][2]
    )
