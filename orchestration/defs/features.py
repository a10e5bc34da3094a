"""Features: the dbt project (staging -> intermediate -> marts) as assets, its tests as checks."""

import contextlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtCliResource,
    dbt_assets,
)

from ml import settings
from ml.data.pseudonyms import MissingSaltError, pseudonym_mode, pseudonym_salt, salt_is_set
from orchestration.defs.resources import WAREHOUSE_POOL
from orchestration.project import dbt_project


class FeatureWindowConfig(dg.Config):
    """dbt vars, settable from the Launchpad. Intervals read like '30 days' or '2 hours'.

    as_of: the run's cutoff in UTC ('2025-10-01 00:00:00'); events at or after it wait for a
    later run and it becomes the latest (scoring) cutoff. Empty: the first cutoff after the last
    event. The nightly schedule sets it to the new day.
    data_end: where the observed data ends (UTC); label windows ending after it are incomplete.
    Empty: as_of when set, else the newest event.
    data_start: events before it are ignored and the cutoff grid starts after it (UTC), for
    stray events far before the rest (the check no_stray_events says when).
    timezone: the shop's timezone for the cutoff grid ('UTC', '+08:00', 'Asia/Shanghai').
    The meaning of each var: dbt_project/dbt_project.yml.
    """

    cutoff_step: str = "1 day"
    lookback: str = "30 days"
    horizon: str = "7 days"
    sequence_length: int = 50
    as_of: str = ""
    data_end: str = ""
    data_start: str = ""
    timezone: str = "UTC"


class FeatureTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "features"

    def get_asset_check_spec(
        self,
        asset_spec: dg.AssetSpec,
        manifest: Mapping[str, Any],
        unique_id: str,
        project: Any,
    ) -> dg.AssetCheckSpec | None:
        """Every dbt test as a check, with a description of what it asserts (the test's own
        YAML description when it has one)."""
        spec = super().get_asset_check_spec(asset_spec, manifest, unique_id, project)
        if spec is None or spec.description:
            return spec
        return spec._replace(description=describe_dbt_test(manifest["nodes"][unique_id]))


# What each generic test asserts, from its kwargs (dbt's built-ins and tests/generic/).
_TEST_DESCRIPTIONS = {
    "not_null": "{column} is never null",
    "unique": "{column} is unique",
    "accepted_values": "{column} only takes the values {values}",
    "relationships": "every {column} exists in {to}.{field}",
    "unique_combination": "one row per {combination}",
    "non_negative": "{column} is never negative",
    "positive": "{column} is above zero",
    "between_zero_and_one": "{column} lies between 0 and 1",
    "list_values_positive": "every value in the list {column} is above zero",
    "list_values_in": "every value in the list {column} is one of {values}",
    "before_as_of": "no {column} at or after the run's as_of cutoff (point in time)",
    "ends_at_as_of": "the latest {column} is the run's as_of cutoff",
}


def describe_dbt_test(node: Mapping[str, Any]) -> str:
    """'marts.labels: purchased is never null' for a generic test; the test's name otherwise."""
    metadata = node.get("test_metadata") or {}
    kwargs = {key: value for key, value in (metadata.get("kwargs") or {}).items()}
    template = _TEST_DESCRIPTIONS.get(metadata.get("name", ""))
    if template is None:
        return f"dbt test {node.get('name')}: returns no row when it holds"
    fields = {
        "column": kwargs.get("column_name") or node.get("column_name") or "the row",
        "values": ", ".join(str(v) for v in kwargs.get("values", [])),
        "to": str(kwargs.get("to", "")).removeprefix("ref('").removesuffix("')"),
        "field": kwargs.get("field", ""),
        "combination": ", ".join(kwargs.get("combination", [])),
    }
    return template.format(**fields) + " (dbt test)"


@dbt_assets(
    manifest=dbt_project.manifest_path,
    # The tests on the raw.events source are checks of raw/events, like the models' tests of
    # theirs (otherwise dagster-dbt runs them anyway and warns once per test).
    dagster_dbt_translator=FeatureTranslator(
        settings=DagsterDbtTranslatorSettings(enable_source_tests_as_checks=True)
    ),
    pool=WAREHOUSE_POOL,  # dbt writes the warehouse: one writer per DuckDB file
)
def warehouse_dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, config: FeatureWindowConfig
) -> Iterator[Any]:
    """Builds and tests the models; each dbt data test is reported as an asset check."""
    # The pseudonym key comes from the environment only (ml.data.dbt_plugin): without it dbt
    # would stop at its first connection; say so here, in one line, before dbt starts.
    try:
        pseudonym_salt()
    except MissingSaltError as error:
        raise dg.Failure(description=str(error)) from None
    if not salt_is_set():
        context.log.warning(f"Pseudonyms: {pseudonym_mode()}")
    # dbt reads the warehouse path from its environment (profiles.yml); hand it the path that
    # ml.settings resolved, so PROPENSITY_HOME and PROPENSITY_WAREHOUSE mean the same to both.
    os.environ["PROPENSITY_WAREHOUSE"] = str(settings.warehouse_path())
    dbt_vars = json.dumps(config.model_dump())
    # dbt's own lines go to the run's debug log, not the terminal: `make run` and `propensity
    # run` show a progress view (INFO and above); the instance keeps everything.
    dbt_lines, events = DebugLines(context.log), []
    try:
        with contextlib.redirect_stdout(dbt_lines):
            events.extend(dbt.cli(["build", "--vars", dbt_vars], context=context).stream())
    except Exception:
        yield from events  # what dbt built before it failed is still reported
        raise
    finally:
        dbt_lines.flush()
    yield from with_table_metadata(events, context, settings.warehouse_path())


def with_table_metadata(
    events: list[Any], context: dg.AssetExecutionContext, warehouse: Path
) -> Iterator[Any]:
    """The dbt events, each model's output with its table's row count and column types
    (`dagster/row_count`, `dagster/column_schema`), read once dbt has exited: DuckDB lets no
    other process open the file while dbt writes it, so dagster-dbt's own fetchers cannot."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables = {
            (schema, name): kind
            for schema, name, kind in con.execute(
                "select table_schema, table_name, table_type from information_schema.tables"
            ).fetchall()
        }
        for event in events:
            if not isinstance(event, dg.Output):
                yield event
                continue
            path = context.asset_key_for_output(event.output_name).path
            relation = (path[0], path[-1]) if len(path) >= 2 else None
            if relation not in tables:
                yield event
                continue
            schema, name = relation
            columns = con.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = ? and table_name = ? order by ordinal_position",
                [schema, name],
            ).fetchall()
            extra: dict[str, Any] = {
                "dagster/column_schema": dg.TableSchema(
                    columns=[dg.TableColumn(column, kind) for column, kind in columns]
                )
            }
            if tables[relation] == "BASE TABLE":  # a view would be computed to be counted
                extra["dagster/row_count"] = con.execute(
                    f'select count(*) from "{schema}"."{name}"'
                ).fetchone()[0]
            yield event.with_metadata({**event.metadata, **extra})


class DebugLines(io.TextIOBase):
    """A text stream whose lines become debug messages of a Dagster log."""

    def __init__(self, log: Any) -> None:
        self.log, self.pending = log, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.log.debug(line)
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.log.debug(self.pending)
        self.pending = ""
