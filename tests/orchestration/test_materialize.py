"""The whole pipeline on a real Dagster instance, a temporary warehouse, a real MLflow store and
registry and a real Optuna journal: ingestion, every dbt model with its tests as asset checks,
tuning, training, promotion and scoring, on a small shop, on the CPU.

The full pipeline runs as `make run` and the UI run it: on the multiprocess executor, in an
instance whose warehouse pool has a limit of 1 (orchestration/instance.py). Then one simulated
night (orchestration/nightly.py) runs the job the 02:00 schedule runs on the next day.

The horizon is one day, so the cutoff that the full run scores has its labels complete after the
night: the night's matured-label monitor checks those served scores against the realized labels
and against what the serving version promised. The dbt vars travel in the run config of
warehouse_dbt_models (horizon, lookback); the night's schedule request gets the same sizes merged
in. Scoring once more afterwards (a crash and rerun of the night's scoring step) replaces only its
own rows of the served history.
"""

from __future__ import annotations

import copy
import secrets
from datetime import datetime
from pathlib import Path

import dagster as dg
import mlflow
import optuna
import pytest

from ml.data.pseudonyms import DEVELOPMENT_VARIABLE, SALT_VARIABLE
from ml.settings import DBT_PROJECT_DIR
from ml.study import optuna_storage
from orchestration.defs.jobs import (
    CUTOFF_TAG,
    full_pipeline_job,
    in_process_execution,
    multiprocess_execution,
    nightly_retraining_job,
)
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.instance import instance_settings
from tests.conftest import query
from tests.orchestration.fresh_env import check_registered_models_are_self_contained
from tests.privacy_scan import files_holding, raw_user_ids, warehouse_leaks

SMALL_SHOP = {"n_users": 1500, "days": 30, "seed": 3}
FULL_RUN_CONFIG = {
    "ops": {
        "landing__synthetic_events": {"config": SMALL_SHOP},
        "training__xgb_study": {"config": {"n_trials": 4}},
        "training__seq_study": {"config": {"n_trials": 2, "max_epochs": 2}},
        "training__behaviour_encoder": {"config": {"max_epochs": 2, "max_rows": 3000}},
        "training__next_category_model": {"config": {"max_epochs": 2, "n_resamples": 200}},
        "propensity_scores": {"config": {"top_k": 25}},
    }
}
SHOP_CUTOFF = datetime(2025, 10, 1)  # midnight after the shop's 30 days: scored by the full run
NIGHT_CUTOFF = datetime(2025, 10, 2)  # the night adds 2025-10-01 and scores this cutoff
RESAMPLES = 200
# The full run's and the night's sizes: FULL_RUN_CONFIG's budgets, a one-day horizon (so
# SHOP_CUTOFF matures after one night), a lookback that the 30 days hold, and small bootstraps.
SIZES = {
    **{op: v for op, v in FULL_RUN_CONFIG["ops"].items() if op != "landing__synthetic_events"},
    "warehouse_dbt_models": {"config": {"horizon": "1 day", "lookback": "7 days"}},
    "training__xgb_model": {"config": {"n_resamples": RESAMPLES}},
    "training__seq_model": {"config": {"n_resamples": RESAMPLES}},
    "training__champion": {"config": {"n_resamples": RESAMPLES}},
    "monitoring__served_performance": {"config": {"n_resamples": RESAMPLES}},
}
MONITOR = dg.AssetKey(["monitoring", "served_performance"])
OUR_CHECKS = {"raw_events_fresh", "label_rate_in_band", "key_features_not_null"}
OUR_CHECKS |= {"feature_drift_psi", "score_distribution_sane"}


def pool_step_intervals(
    instance: dg.DagsterInstance, run_id: str, pool_steps: set[str]
) -> list[tuple[float, float, str]]:
    """(start, end, step) of every step of the pool, from the run's event log."""
    starts: dict[str, float] = {}
    intervals = []
    for record in instance.get_records_for_run(run_id).records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None or entry.step_key not in pool_steps:
            continue
        if event.event_type_value == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            intervals.append((starts[entry.step_key], entry.timestamp, entry.step_key))
    return sorted(intervals)


def with_sizes(run_config: dict) -> dict:
    """`run_config` with SIZES merged into each op's config (the run's own keys win)."""
    merged = copy.deepcopy(run_config)
    ops = merged.setdefault("ops", {})
    for op, values in SIZES.items():
        config = ops.setdefault(op, {}).setdefault("config", {})
        ops[op]["config"] = {**values["config"], **config}
    return merged


def monitor_result(
    instance: dg.DagsterInstance, run_id: str
) -> tuple[dict, dg.AssetCheckEvaluation]:
    """The monitor's materialization metadata and its check evaluation in one run."""
    events = [
        record.event_log_entry.dagster_event
        for record in instance.get_records_for_run(run_id).records
        if record.event_log_entry.dagster_event is not None
    ]
    (materialization,) = [
        event.event_specific_data.materialization
        for event in events
        if event.event_type_value == "ASSET_MATERIALIZATION"
        and event.event_specific_data.materialization.asset_key == MONITOR
    ]
    (check,) = [
        event.event_specific_data
        for event in events
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


def dbt_run_folders(run_id: str) -> list[Path]:
    """dagster-dbt's target folders (manifest, compiled and run SQL, logs) of one run."""
    return [p for p in (DBT_PROJECT_DIR / "target").iterdir() if f"-{run_id[:7]}-" in p.name]


@pytest.mark.slow(5)
def test_full_pipeline_multiprocess_with_the_pool_then_a_night(
    project_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration import nightly
    from orchestration.definitions import defs

    schedule_request = nightly.nightly_request

    def sized_request(cutoff: datetime, n_trials: int | None) -> tuple[dict, dict[str, str]]:
        run_config, tags = schedule_request(cutoff, n_trials)
        return with_sizes(run_config), tags

    monkeypatch.setattr(nightly, "nightly_request", sized_request)

    # A real key, outside development mode: afterwards neither it nor a raw user id may be on
    # disk outside the raw layer (step processes inherit the environment).
    salt = secrets.token_hex(16)
    monkeypatch.setenv(SALT_VARIABLE, salt)
    monkeypatch.setenv(DEVELOPMENT_VARIABLE, "0")
    scanned: list[Path] = []

    pool_steps = {
        node.name
        for node in defs().resolve_job_def("full_pipeline").nodes_in_topological_order
        if node.definition.pool == WAREHOUSE_POOL
    }
    assert {"raw__events", "warehouse_dbt_models", "propensity_scores", "mart_checks"} <= pool_steps
    with dg.instance_for_test(overrides=instance_settings()) as instance:
        result = dg.execute_job(
            dg.reconstructable(full_pipeline_job),
            instance=instance,
            run_config=with_sizes({**FULL_RUN_CONFIG, **multiprocess_execution()}),
            tags={CUTOFF_TAG: SHOP_CUTOFF.isoformat()},
        )
        messages = [
            str(record.event_log_entry.message)
            + str(getattr(record.event_log_entry.dagster_event, "event_specific_data", ""))
            for record in instance.get_records_for_run(result.run_id).records
        ]
        assert not [m for m in messages if "Could not set lock" in m or "Conflicting lock" in m]
        assert result.success
        # The warehouse steps never overlapped, although the executor ran two at a time.
        intervals = pool_step_intervals(instance, result.run_id, pool_steps)
        assert len(intervals) == len(pool_steps)
        for (_, end, step), (start, _, next_step) in zip(intervals, intervals[1:], strict=False):
            assert end <= start, f"{step} and {next_step} held the warehouse at once"

        materialized = {
            event.asset_key.to_user_string()
            for event in result.get_asset_materialization_events()
            for event in [event.event_specific_data.materialization]
        }
        assert {"raw/events", "marts/user_features", "marts/labels"} <= materialized
        assert {"marts/cutoffs", "marts/user_sequences", "staging/stg_events"} <= materialized

        raw = instance.get_latest_materialization_event(dg.AssetKey(["raw", "events"]))
        metadata = {k: v.value for k, v in raw.asset_materialization.metadata.items()}
        assert metadata["rows_read"] == metadata["accepted"] > 0
        assert metadata["reconciles"] is True

        checks = [
            event.event_specific_data
            for event in result.all_events
            if event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert len(checks) > 50, "dbt data tests should surface as asset checks"
        assert {check.check_name for check in checks} >= OUR_CHECKS
        # Every check passes but drift, which may warn: the training window's early cutoffs
        # have an incomplete lookback, unlike the scoring cutoff.
        failed = {
            check.check_name: check.description
            for check in checks
            if not check.passed and check.check_name != "feature_drift_psi"
        }
        assert failed == {}
        assert any(check.asset_key == dg.AssetKey(["marts", "user_features"]) for check in checks)

        def metadata_of(*key: str) -> dict:
            event = instance.get_latest_materialization_event(dg.AssetKey(list(key)))
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}

        split = metadata_of("training", "time_split")
        xgb_study = metadata_of("training", "xgb_study")
        assert xgb_study["trials_this_run"] == 4
        assert xgb_study["snapshot_id"] == split["snapshot_id"]
        model = metadata_of("training", "xgb_model")
        # The study's best model was fitted on this very snapshot: reused, not fitted twice.
        assert model["fit"]["reused_from_trial"] == xgb_study["best_trial"]
        assert model["fit"]["train_positives_before"] == split["train_positives"] > 0
        assert 0 < model["promotion_pr_auc"] <= 1
        assert model["promotion_pr_auc_ci"].startswith("[")
        assert "logistic_regression" in model["comparison"]
        assert model["split_n_promotion_cutoffs"] == "3"
        assert model["promotion_rows"] == split["promotion_rows"] > 0
        assert model["promotion_positives"] > 0
        seq_study = metadata_of("training", "seq_study")
        assert seq_study["trials_this_run"] == 2 and seq_study["device"] == "cpu"
        # The encoder pretrained first; the new study's two trials: one fine-tunes it, one not.
        encoder = metadata_of("training", "behaviour_encoder")
        assert encoder["model_name"] == "behaviour-encoder" and encoder["pretrain_rows"] > 0
        study = optuna.load_study(
            study_name="purchase-propensity-torch-seq",
            storage=optuna_storage(seq_study["optuna_storage"]),
        )
        started = [t.user_attrs["params"]["pretrained"] for t in study.trials]
        assert sorted(started) == [False, True]
        seq = metadata_of("training", "seq_model")
        assert 0 < seq["promotion_pr_auc"] <= 1
        assert "logistic_regression" in seq["comparison"]
        # The two families train in either order: one is v1, the other v2.
        families = {model["model_version"]: "xgboost", seq["model_version"]: "torch-seq"}
        assert set(families) == {"1", "2"}
        # One gate for both families: v1 meets no champion, v2 meets v1 on the same promotion
        # window and is promoted only if its paired gain's lower bound is above zero.
        promotion = metadata_of("training", "champion")
        assert promotion["versions_judged"] == "1, 2"
        assert "xgboost" in promotion["decisions"] and "torch-seq" in promotion["decisions"]
        assert len(promotion["family_differences"]) == 1
        client = mlflow.MlflowClient(f"sqlite:///{project_home / 'mlflow.db'}")
        second = client.get_model_version("purchase-propensity", "2").tags
        winner = "2" if float(second["pr_auc_difference_lower_bound"]) > 0 else "1"
        assert promotion["champion_version"] == winner
        # Each training asset links to its MLflow run and registry version.
        assert promotion["mlflow_model_version"].endswith(
            f"/#/models/purchase-propensity/versions/{winner}"
        )
        assert seq["mlflow_run"].endswith(f"/runs/{seq['mlflow_run_id']}")
        assert seq["mlflow_model_version"].endswith(f"/versions/{seq['model_version']}")
        assert encoder["mlflow_model_version"].endswith("/models/behaviour-encoder/versions/1")
        assert seq_study["mlflow_run"].startswith("http://127.0.0.1:")
        # The monitor: SHOP_CUTOFF is served, but its one-day label window is still open.
        monitor, check = monitor_result(instance, result.run_id)
        assert monitor["matured_cutoffs"] == 0 and monitor["pending_pairs"] == 1
        assert monitor["next_maturity"] == "2025-10-02 00:00:00"
        assert monitor["summary"].startswith("0 cutoff(s) matured")
        next_maturity = "next matures at 2025-10-02 00:00:00 (cutoff 2025-10-01 00:00:00"
        assert next_maturity in monitor["summary"]
        assert check.passed and check.severity == dg.AssetCheckSeverity.WARN
        raw_ids = raw_user_ids(project_home / "warehouse.duckdb")
        dagster_folders = [Path(instance.root_directory), *dbt_run_folders(result.run_id)]
        assert files_holding(dagster_folders, salt, raw_ids) == {}
        scanned += dagster_folders

    warehouse = project_home / "warehouse.duckdb"
    (n_features, n_labels, n_sequences, n_cutoffs) = query(
        warehouse,
        "select (select count(*) from marts.user_features), (select count(*) from marts.labels),"
        " (select count(*) from marts.user_sequences), (select count(*) from marts.cutoffs)",
    )[0]
    assert n_features > 0 and n_features == n_labels == n_sequences
    assert n_cutoffs == 30

    client = mlflow.MlflowClient(f"sqlite:///{project_home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("purchase-propensity", "champion")
    assert str(champion.version) == winner
    for number, family in families.items():
        version = client.get_model_version("purchase-propensity", number)
        assert version.tags["family"] == family and version.tags["promotion_decision"]
    # Scored users are exactly the users active at the latest cutoff.
    scored, active = query(
        warehouse,
        """
        select
            (select list(user_id order by user_id) from predictions.user_propensity),
            (select list(f.user_id order by f.user_id) from marts.user_features f
             join marts.cutoffs c using (cutoff_time) where c.is_latest)
        """,
    )[0]
    assert scored == active and len(scored) > 100
    # The served history: the champion's scores of SHOP_CUTOFF, one row per active user.
    (first_rows,) = history_counts(warehouse)
    assert first_rows[:2] == (SHOP_CUTOFF, winner)
    assert first_rows[2] == first_rows[3] == active_users(warehouse, SHOP_CUTOFF) == len(scored)
    (n_targets, n_with_drivers) = query(
        warehouse,
        "select count(*), count(driver_1) from predictions.intervention_targets",
    )[0]
    # Drivers: XGBoost's SHAP values or the sequence model's occlusion effects, with values.
    assert n_targets == 25 and n_with_drivers > 0
    drivers = query(warehouse, "select driver_1 from predictions.intervention_targets")
    # In words, with the value and its push (ml.reasons), not a bare column name.
    assert all("raises the score, +" in d and " = " not in d for (d,) in drivers if d)
    # Past events as reasons: the sequence model's integrated gradients, when it is champion.
    (n_reasons,) = query(
        warehouse, "select count(event_reasons) from predictions.intervention_targets"
    )[0]
    champion_family = client.get_model_version("purchase-propensity", winner).tags["family"]
    assert n_reasons == (25 if champion_family == "torch-seq" else 0)

    # The next-category model: registered, gated against its baselines on the promotion window;
    # every target gets an action and its category, every scored shopper a top 10.
    category = client.get_model_version("next-category", "1").tags
    assert category["family"] == "torch-seq-category"
    assert category["promotion_decision"] in ("promoted", "not_promoted")
    assert category["compared_with"] in ("most_popular", "most_frequent", "most_recent", "markov")
    promoted = category["promotion_decision"] == "promoted"
    (n_actions, n_categories, sources) = query(
        warehouse,
        "select count(action), count(action_category), list(distinct category_source) "
        "from predictions.intervention_targets",
    )[0]
    assert n_actions == n_categories == 25
    assert sources == (["next-category v1"] if promoted else ["baseline: most_frequent"])
    (n_rows, n_users, n_named, n_probabilities) = query(
        warehouse,
        "select count(*), count(distinct user_id), count(category_name), count(probability) "
        "from predictions.next_categories",
    )[0]
    assert n_users == len(scored) and n_rows == n_named >= n_users
    assert n_probabilities == (n_rows if promoted else 0)

    # Self-contained models: every registered version (both families, the category model, the
    # encoder) loads and predicts as here where this repository is not installed, with only
    # its own requirements, and `mlflow models serve` serves the champion there.
    tracking_uri = f"sqlite:///{project_home / 'mlflow.db'}"
    fresh = project_home.parent / "fresh"
    fresh.mkdir()
    assert check_registered_models_are_self_contained(tracking_uri, fresh) == 4

    # One night: the next day of the same shop lands (SHOP_CUTOFF's labels are complete), and
    # the schedule's job runs on it and scores NIGHT_CUTOFF.
    with dg.instance_for_test(overrides=instance_settings()) as instance:
        night = nightly.run_night(n_trials=1, instance=instance)
        assert night.success, night
        assert night.cutoff == NIGHT_CUTOFF
        run = instance.get_run_by_id(night.run_id)
        assert run.job_name == "nightly_retraining"
        assert run.tags[CUTOFF_TAG] == "2025-10-02T00:00:00"
        assert run.run_config["ops"]["warehouse_dbt_models"]["config"] == {
            "as_of": "2025-10-02 00:00:00",
            "horizon": "1 day",
            "lookback": "7 days",
        }
        monitor, check = monitor_result(instance, night.run_id)
        raw_ids = raw_user_ids(project_home / "warehouse.duckdb")
        night_folders = [Path(instance.root_directory), *dbt_run_folders(night.run_id)]
        assert files_holding(night_folders, salt, raw_ids) == {}
    assert night.new_day.isoformat() == "2025-10-01" and night.events > 0
    assert night.model_version == "4"
    assert {(v, family) for v, family, _ in night.new_versions} in (
        {("3", "xgboost"), ("4", "torch-seq")},
        {("3", "torch-seq"), ("4", "xgboost")},
    )
    assert night.decision in ("promoted", "kept_champion") and night.reason
    for number in ("3", "4"):
        version = client.get_model_version("purchase-propensity", number)
        assert version.tags["promotion_window"].endswith("2025-10-01T00:00:00")  # moved a day
        assert version.tags["promotion_decision"] in ("promoted", "kept_champion")
    (latest_cutoff, scored_cutoff) = query(
        warehouse,
        "select (select max(cutoff_time) from marts.cutoffs), "
        "(select max(cutoff_time) from predictions.user_propensity)",
    )[0]
    assert latest_cutoff == scored_cutoff == NIGHT_CUTOFF

    # The night's monitor: SHOP_CUTOFF matured, served by the full run's champion, with the
    # realized PR-AUC interval beside the interval that version promised on its promotion window.
    assert monitor["matured_cutoffs"] == 1 and monitor["matured_pairs"] == 1
    assert monitor["newest_matured_cutoff"] == "2025-10-01 00:00:00"
    assert monitor["newest_matured_version"] == winner
    assert monitor["next_maturity"] == "2025-10-03 00:00:00"  # NIGHT_CUTOFF, pending
    low, high = (float(v) for v in monitor["newest_realized_pr_auc_ci"].strip("[]").split(","))
    assert 0 <= low <= monitor["newest_realized_pr_auc"] <= high <= 1
    served_run = client.get_model_version("purchase-propensity", winner).run_id
    promised = client.get_run(served_run).data.metrics
    assert monitor["newest_promised_pr_auc"] == pytest.approx(promised["promotion_pr_auc"])
    assert monitor["newest_promised_pr_auc_ci"] == (
        f"[{promised['promotion_pr_auc_ci_low']:.4f}, {promised['promotion_pr_auc_ci_high']:.4f}]"
    )
    # Every served user of that cutoff met its label; ECE and the buyer rate come with it.
    assert monitor["newest_rows"] == first_rows[2] and monitor["newest_buyers"] >= 1
    assert monitor["newest_buyer_rate"] == pytest.approx(monitor["newest_buyers"] / first_rows[2])
    assert 0 < monitor["newest_mean_score"] < 1
    assert monitor["newest_realized_ece_ci"].startswith("[")
    assert monitor["newest_promised_ece"] == pytest.approx(promised["promotion_ece"])
    assert f"| 2025-10-01 00:00:00 | {winner} |" in monitor["served_vs_promised"]
    # Whatever the verdict, the check warns (never errors) and says what it compared.
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["matured_cutoffs"].value == 1
    assert check.metadata["unlabeled_rows"].value == 0
    if not check.passed:
        assert "cutoff 2025-10-01 00:00:00 version" in check.description

    # The history holds both nights' predictions, each once.
    night_version = str(
        client.get_model_version_by_alias("purchase-propensity", "champion").version
    )
    before = history_counts(warehouse)
    assert [row[:2] for row in before] == [(SHOP_CUTOFF, winner), (NIGHT_CUTOFF, night_version)]
    assert before[0][2:] == first_rows[2:]  # the first run's rows as served
    assert before[1][2] == before[1][3] == active_users(warehouse, NIGHT_CUTOFF)

    # Scoring again (a crash and rerun of the night's scoring step) replaces its own rows.
    with dg.instance_for_test(overrides=instance_settings()) as instance:
        rerun = dg.execute_job(
            dg.reconstructable(nightly_retraining_job),
            instance=instance,
            run_config={
                "ops": {
                    op: SIZES[op] for op in ("propensity_scores", MONITOR.to_python_identifier())
                },
                **in_process_execution(),
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
        monitor, _ = monitor_result(instance, rerun.run_id)
    after = history_counts(warehouse)
    assert [row[:4] for row in after] == [row[:4] for row in before]
    assert after[0][4] == before[0][4] and after[1][4] > before[1][4]  # only the night's rescored
    assert monitor["matured_cutoffs"] == 1
    assert query(warehouse, "select count(*) from predictions.user_propensity")[0][0] == (
        before[0][2] + before[1][2]
    )

    # The state folder: MLflow's store (params, tags, metrics) and artifacts (models, input
    # examples, model cards, plots), the Optuna journal, the training snapshots; the warehouse
    # and the landing files are the raw layer, checked table by table instead.
    warehouse = project_home / "warehouse.duckdb"
    assert scanned and len(raw_ids) > 500
    skip = [warehouse, project_home / "landing"]
    assert files_holding([project_home], salt, raw_ids, skip=skip) == {}
    assert warehouse_leaks(warehouse, salt) == []
    assert salt.encode() not in warehouse.read_bytes()


def test_materialize_ingestion_and_dbt_assets_then_reingest_nothing(project_home: Path) -> None:
    from orchestration.defs import features, ingest
    from orchestration.defs.resources import build_resources

    assets = [ingest.synthetic_event_files, ingest.raw_events, features.warehouse_dbt_models]
    run_config = {"ops": {"landing__synthetic_events": {"config": SMALL_SHOP}}}
    with dg.instance_for_test() as instance:
        first = dg.materialize(
            assets, resources=build_resources(), run_config=run_config, instance=instance
        )
        assert first.success
        warehouse = project_home / "warehouse.duckdb"
        (n_raw, n_features) = query(
            warehouse,
            "select (select count(*) from raw.events), (select count(*) from marts.user_features)",
        )[0]
        assert n_raw > 0 and n_features > 0
        # Each dbt table carries its row count and column types, read after dbt exits.
        features_event = instance.get_latest_materialization_event(
            dg.AssetKey(["marts", "user_features"])
        )
        features_metadata = features_event.asset_materialization.metadata
        assert features_metadata["dagster/row_count"].value == n_features
        columns = {
            c.name: c.type for c in features_metadata["dagster/column_schema"].schema.columns
        }
        assert columns["carts_7d"] in ("BIGINT", "INTEGER", "HUGEINT", "DOUBLE")
        assert "user_id" in columns and "cutoff_time" in columns

        second = dg.materialize(
            assets[:2], resources=build_resources(), run_config=run_config, instance=instance
        )
        assert second.success
        raw = instance.get_latest_materialization_event(dg.AssetKey(["raw", "events"]))
        metadata = {k: v.value for k, v in raw.asset_materialization.metadata.items()}
    assert metadata["accepted"] == 0 and metadata["files_ingested"] == 0
    assert metadata["files_skipped"] > 0
    assert query(warehouse, "select count(*) from raw.events")[0][0] == n_raw
