"""`reports/run_report`: the run's HTML report, after scoring and monitoring.

It gathers what a run decided from where each fact lives (the warehouse for the data and the
intervention list, MLflow for the models' intervals and charts, the Dagster instance for the
gate's decisions and this run's checks) and writes it with `ml.report` into
`$PROPENSITY_HOME/reports/<time>-<run>/` and MLflow (run `run-report`, artifacts `report/`).
"""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd

from ml import settings
from ml.liveness import this_worker
from ml.next_category.evaluation import CATEGORY_MODEL_NAME
from ml.registry import CHAMPION, MODEL_NAME, newest_versions_by_family, trained_champion
from ml.report import (
    Section,
    data_overview,
    figure,
    markdown_table,
    paragraph,
    table,
    top_interventions,
    write_report,
)
from ml.tracking import WORKER_TAG
from orchestration.defs.jobs import RAW_EVENTS
from orchestration.defs.links import mlflow_links
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.defs.scoring import NEXT_CATEGORIES, SERVED_PERFORMANCE
from orchestration.defs.training import NEXT_CATEGORY_KEY, start_mlflow

REPORT_KEY = dg.AssetKey(["reports", "run_report"])
CHAMPION_KEY = dg.AssetKey(["training", "champion"])
INTERVENTIONS = dg.AssetKey(["predictions", "intervention_targets"])
CUTOFFS = dg.AssetKey(["marts", "cutoffs"])
NO_MODEL = (
    "No model has been trained in this state yet: `propensity run --features-only` builds the "
    "features and a report of the data only; a run without it trains, gates and scores."
)
# The champion's charts, in the order shown (files of ml.evaluation.plots).
CHARTS = (
    ("lift.png", "lift by score decile"),
    ("calibration.png", "calibration"),
    ("pr.png", "precision-recall"),
)


@dg.asset(
    key=REPORT_KEY,
    group_name="reporting",
    # Everything it reads: with --features-only only the first two are in the run, and the
    # report must still come after them.
    deps=[
        RAW_EVENTS,
        CUTOFFS,
        INTERVENTIONS,
        NEXT_CATEGORIES,
        SERVED_PERFORMANCE,
        CHAMPION_KEY,
        NEXT_CATEGORY_KEY,
    ],
    pool=WAREHOUSE_POOL,  # reads the warehouse (read-only): no writer may hold it meanwhile
    description=(
        "One self-contained HTML page of the run (and its PNGs): the data, the models with "
        "their intervals, lift and calibration charts, what the gate decided and why, this "
        "run's checks and monitoring, and the top of the intervention list. Written under "
        "$PROPENSITY_HOME/reports/ and to MLflow."
    ),
)
def run_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    start_mlflow(context.log.info)
    client = mlflow.MlflowClient()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = settings.local_dir() / "reports" / f"{stamp}-{context.run_id[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    if trained_champion(client) is None:  # propensity run --features-only: the data only
        sections = [
            data_section(settings.warehouse_path()),
            Section("The models", paragraph(NO_MODEL)),
            checks_section(context.instance, context.run_id),
        ]
    else:
        sections = [
            data_section(settings.warehouse_path()),
            models_section(client, context.instance),
            charts_section(client, folder),
            gate_section(context.instance),
            checks_section(context.instance, context.run_id),
            interventions_section(settings.warehouse_path()),
        ]
    path = write_report(folder, "Shopper propensity: run report", sections)
    with mlflow.start_run(run_name="run-report", tags={WORKER_TAG: this_worker()}) as run:
        mlflow.set_tag("dagster_run_id", context.run_id)
        mlflow.log_artifacts(str(folder), "report")
    context.log.info(f"Report: {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "sections": ", ".join(s.title for s in sections),
            **mlflow_links(run.info.run_id),
        }
    )


def data_section(warehouse: Path) -> Section:
    overview, reasons = data_overview(warehouse)
    parts = [table(overview)]
    if len(reasons):
        parts.append(table(reasons, "Quarantined rows by reason (raw.quarantine)"))
    else:
        parts.append(paragraph("No row was quarantined."))
    return Section("The data", "".join(parts))


def models_section(client: mlflow.MlflowClient, instance: dg.DagsterInstance) -> Section:
    """Each family's newest version and the champion's baselines, every figure with its 95 %
    interval on the promotion window, and the paired differences between families."""
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    rows = []
    for family, number in sorted(
        newest_versions_by_family(client).items(), key=lambda kv: int(kv[1])
    ):
        version = client.get_model_version(MODEL_NAME, number)
        metrics = client.get_run(version.run_id).data.metrics
        rows.append(
            {
                "model": f"{family} v{number}"
                + (" (champion)" if number == champion.version else ""),
                "promotion-window PR-AUC [95 % interval]": metric_with_interval(
                    metrics, "promotion_pr_auc"
                ),
                "mean score": f"{metrics.get('promotion_mean_score', float('nan')):.4f}",
                "buyer rate": f"{metrics.get('promotion_buyer_rate', float('nan')):.4f}",
                "gate": version.tags.get("promotion_decision", "n/a"),
            }
        )
    champion_metrics = client.get_run(champion.run_id).data.metrics
    for name in ("logistic_regression", "recency_frequency", "base_rate"):
        key = f"promotion_{name}_pr_auc"
        if key in champion_metrics:
            rows.append(
                {
                    "model": f"baseline: {name}",
                    "promotion-window PR-AUC [95 % interval]": metric_with_interval(
                        champion_metrics, key
                    ),
                }
            )
    parts = [table(pd.DataFrame(rows).fillna(""))]
    gate = latest_metadata(instance, CHAMPION_KEY)
    differences = pd.DataFrame(
        [
            {
                "comparison": row["comparison"],
                "PR-AUC difference [95 % interval]": f"{row['pr_auc_difference']:+.4f} "
                f"[{row['low']:+.4f}, {row['high']:+.4f}]",
                "reading": row["reading"],
            }
            for row in gate.get("family_differences", [])
        ]
    )
    if len(differences):
        parts.append(table(differences, "Paired differences between the families, same rows"))
    category = latest_metadata(instance, NEXT_CATEGORY_KEY)
    if category.get("comparison"):
        parts.append(
            table(
                markdown_table(str(category["comparison"])),
                f"{CATEGORY_MODEL_NAME} v{category.get('model_version')}: ranking on the "
                "promotion window (95 % intervals, users resampled)",
            )
        )
    return Section("The models", "".join(parts))


def charts_section(client: mlflow.MlflowClient, folder: Path) -> Section:
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    family = champion.tags.get("family", "?")
    with tempfile.TemporaryDirectory() as work:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=champion.run_id, artifact_path="plots", dst_path=work
            )
        )
        figures = []
        for name, caption in CHARTS:
            found = sorted(local.rglob(name))
            if found:
                copy = found[0].with_name(f"champion_{name}")
                found[0].rename(copy)
                figures.append(figure(copy, f"{caption} (champion v{champion.version})", folder))
    intro = paragraph(
        f"The champion, {family} v{champion.version}, on the promotion window (calibrated "
        "scores). Lift: how many times the overall buyer rate each tenth of shoppers by score "
        "holds."
    )
    return Section("Charts", intro + "".join(figures))


def gate_section(instance: dg.DagsterInstance) -> Section:
    gate = latest_metadata(instance, CHAMPION_KEY)
    parts = [
        paragraph(
            f"Champion after this run: version {gate.get('champion_version', 'n/a')}. A "
            "challenger is promoted only when the one-sided lower bound of its paired PR-AUC "
            "gain over the champion, on the promotion window, is above the minimum gain."
        )
    ]
    decisions = markdown_table(str(gate.get("decisions", "")))
    if len(decisions):
        parts.append(table(decisions))
    category = latest_metadata(instance, NEXT_CATEGORY_KEY)
    if category.get("decision"):
        parts.append(paragraph(f"{CATEGORY_MODEL_NAME}: {category['decision']}"))
    return Section("What the gate decided, and why", "".join(parts))


def checks_section(instance: dg.DagsterInstance, run_id: str) -> Section:
    """This run's asset checks so far, failures first, and the served-performance monitor."""
    rows = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.dagster_event.event_specific_data
        rows.append(
            {
                "asset": evaluation.asset_key.to_user_string(),
                "check": evaluation.check_name,
                "passed": evaluation.passed,
                "result": "passed"
                if evaluation.passed
                else f"FAILED ({evaluation.severity.value.lower()})",
                "description": evaluation.description or "",
            }
        )
    columns = ["asset", "check", "passed", "result", "description"]
    frame = pd.DataFrame(rows, columns=columns).sort_values(["passed", "asset", "check"])
    frame = frame.drop(columns="passed")
    failed = int((frame["result"] != "passed").sum())
    parts = [
        paragraph(f"{len(frame)} checks ran in this run before the report; {failed} failed."),
        table(frame),
    ]
    monitor = latest_metadata(instance, SERVED_PERFORMANCE)
    if monitor:
        shown = {k: v for k, v in monitor.items() if isinstance(v, str | int | float)}
        parts.append(
            table(
                pd.DataFrame(list(shown.items()), columns=["served performance", "value"]),
                "Served predictions against their labels once they mature",
            )
        )
    return Section("Checks and monitoring", "".join(parts))


def interventions_section(warehouse: Path) -> Section:
    top = top_interventions(warehouse)
    note = paragraph(
        "The highest-scored shoppers at the latest cutoff (pseudonymous ids), with the action "
        "that fits, its category, and the reasons behind each score."
    )
    return Section("Who to act on", note + table(top))


def metric_with_interval(metrics: dict[str, float], name: str) -> str:
    """`0.281 [0.231, 0.331]`: an MLflow metric and its interval (`<name>_ci_low/_high`)."""
    if name not in metrics:
        return "n/a"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{metrics[name]:.3f}{interval}"


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    """The metadata of an asset's latest materialization (empty when there is none)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}
