"""Ingest event files into the raw layer of the DuckDB warehouse, with validation and quarantine.

Every row of a file is accounted for: it is accepted into ``raw.events``, rejected into
``raw.quarantine`` with a reason, or dropped as an exact duplicate of an event already kept.
The counts are recorded in ``raw.ingested_files`` and reconcile:
``rows_read = accepted + quarantined + duplicates``.

How it works, for a newcomer:

1. The file's layout is checked first (CSV header, parquet columns); a wrong layout raises
   ValueError before anything is written.
2. Every input row becomes one row of a "stage" relation holding the canonical fields, a
   rejection ``reason`` (NULL when valid), an ``event_key`` and the raw line of rejected rows.
   - CSV: Python reads the file in chunks of whole lines (bounded memory, exact line numbers,
     raw text kept); each chunk goes to DuckDB as an Arrow table, and splitting, mapping and
     validation run in SQL. The stage is a temporary table.
   - Parquet (synthetic): DuckDB reads the file directly; the stage is a temporary view.
3. The rejected rows go to ``raw.quarantine``; the valid rows whose event_key is not stored
   yet go to ``raw.events``; then, of the rows just added, repeats of an earlier line of the
   same file are deleted (the first occurrence stays). Each file is one transaction, and a
   file whose content (sha256) was ingested before is skipped.

Per-source mappings (column names, event type names, time formats) live in ``ml.data.sources``.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ml.data.sources import (
    CANONICAL_EVENT_TYPES,
    CANONICAL_FIELDS,
    CSV_SOURCES,
    SYNTHETIC_COLUMNS,
    CsvSource,
)

SOURCES = ("synthetic", "rees46", "retailrocket", "taobao")

# Bytes of a CSV file handed to DuckDB at a time: big enough to amortise the per-chunk SQL,
# small enough to keep memory bounded for files of any size.
CSV_CHUNK_BYTES = 16 * 1024 * 1024

# File extension that ingest_paths looks for inside directories, per source.
_FILE_PATTERNS = {
    "synthetic": "*.parquet",
    "rees46": "*.csv",
    "retailrocket": "*.csv",
    "taobao": "*.csv",
}

_RAW_DDL = (
    "CREATE SCHEMA IF NOT EXISTS raw",
    """
    CREATE TABLE IF NOT EXISTS raw.events (
        event_time TIMESTAMP NOT NULL,  -- UTC, naive
        event_type VARCHAR NOT NULL,    -- view|cart|remove_from_cart|purchase|wishlist
        product_id VARCHAR NOT NULL,
        category_id VARCHAR,
        category_code VARCHAR,
        brand VARCHAR,
        price DOUBLE,
        user_id VARCHAR NOT NULL,
        user_session VARCHAR,
        source VARCHAR NOT NULL,
        source_file VARCHAR NOT NULL,
        line_number BIGINT NOT NULL,
        event_key UHUGEINT NOT NULL,    -- md5_number over the 9 canonical fields
        ingested_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS raw.quarantine (
        source VARCHAR,
        source_file VARCHAR,
        line_number BIGINT,
        raw_line VARCHAR,
        reason VARCHAR,
        ingested_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS raw.ingested_files (
        source_file VARCHAR,
        content_sha256 VARCHAR,
        source VARCHAR,
        rows_read BIGINT,
        accepted BIGINT,
        quarantined BIGINT,
        duplicates BIGINT,
        ingested_at TIMESTAMP,
        error VARCHAR  -- why the whole file was refused (NULL: ingested)
    )
    """,
    # Warehouses created before the column existed.
    "ALTER TABLE raw.ingested_files ADD COLUMN IF NOT EXISTS error VARCHAR",
)

# A CSV line with quotes is valid when it is a sequence of fields that are either quoted
# ("..." with "" for a quote inside) or contain no quote and no comma.
_CSV_FIELD = r'"(?:[^"]|"")*"|[^",]*'
_CSV_LINE_RE = f"(?:{_CSV_FIELD})(?:,(?:{_CSV_FIELD}))*"
# Applied to ',' || line, so every field is preceded by exactly one comma.
_CSV_FIELD_RE = f",({_CSV_FIELD})"


@dataclass(frozen=True)
class Plausibility:
    """Bounds past which a value is quarantined as implausible rather than stored.

    earliest_event_time: events before it (epoch 0, 1900, a RetailRocket time in seconds read
    as milliseconds, which lands in 1970) are quarantined; a shop's history rarely starts
    before 2000. max_price: a price above it (1e308) is quarantined. max_field_length: a text
    field longer than this many characters (a 50 MB category) is quarantined.
    Ids (user, product, session) that are blank, padded with spaces or hold control characters
    are quarantined too: " 7700019 " must not become another user than "7700019", and a NUL
    byte has no place in an id.
    """

    earliest_event_time: datetime = datetime(2000, 1, 1)
    max_price: float = 1e7
    max_field_length: int = 1000


DEFAULT_PLAUSIBILITY = Plausibility()


@dataclass(frozen=True)
class IngestReport:
    """What happened to one file; rows_read = accepted + quarantined + duplicates."""

    source: str
    source_file: str
    rows_read: int
    accepted: int
    quarantined: int
    duplicates: int
    skipped: bool  # True when the same content was ingested before
    quarantine_reasons: dict[str, int] = field(default_factory=dict)  # category -> count
    error: str = ""  # why the whole file was refused (nothing of it was stored)

    @property
    def refused(self) -> bool:
        return bool(self.error)

    @property
    def all_quarantined(self) -> bool:
        """Rows were read and every one was rejected: most likely the wrong source or
        delimiter rather than bad rows."""
        return self.rows_read > 0 and self.quarantined == self.rows_read

    def as_metadata(self) -> dict[str, str | int | bool]:
        """A flat dict of the counts, for display (e.g. as Dagster asset metadata)."""
        metadata: dict[str, str | int | bool] = {
            "source": self.source,
            "source_file": self.source_file,
            "skipped": self.skipped,
            "rows_read": self.rows_read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
        }
        if self.error:
            metadata["error"] = self.error
        for reason, count in sorted(self.quarantine_reasons.items()):
            metadata[f"quarantined: {reason}"] = count
        return metadata


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the raw schema and its tables if missing (the dbt sources read these)."""
    for statement in _RAW_DDL:
        con.execute(statement)


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    source: str,
    ingest_time: datetime | None = None,
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY,
) -> IngestReport:
    """Ingest one file of the given source in one transaction and report the row counts.

    ``ingest_time`` (default: now, UTC) is stored as ``ingested_at``; events later than it are
    quarantined, since an event cannot come from the future, and so are values past the bounds
    of ``plausibility``.
    """
    _check_source(source)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    ingested_at = _to_utc_naive(ingest_time)
    source_file = str(path.resolve())
    ensure_raw_schema(con)
    if _is_empty(path):
        raise ValueError(f"{path}: empty file (no header and no rows)")

    # Check the layout before the transaction: a wrong header raises and writes nothing.
    if source == "synthetic":
        stage_sql = _synthetic_stage_sql(con, path, ingested_at, plausibility)
    else:
        spec = CSV_SOURCES[source]
        layout = read_csv_layout(path, spec)
        stage_sql = _csv_stage_sql(spec, layout, ingested_at, plausibility)
    content_sha256 = _sha256(path)
    seen = _scalar(
        con,
        "SELECT count(*) FROM raw.ingested_files WHERE content_sha256 = ? AND error IS NULL",
        [content_sha256],
    )
    if seen > 0:
        return IngestReport(source, source_file, 0, 0, 0, 0, skipped=True)

    # First stage every row in scratch space private to this connection, then write the raw
    # tables in one short transaction. (Staging runs outside the transaction on purpose:
    # DuckDB frees a registered CSV chunk only when the transaction that used it ends.)
    stage_kind = "VIEW" if source == "synthetic" else "TABLE"
    try:
        if source == "synthetic":
            # A view, so the file streams through DuckDB instead of being held in memory.
            con.execute(f"CREATE OR REPLACE TEMP VIEW _ingest_stage AS {stage_sql}")
            rows_read = _scalar(con, f"SELECT count(*) FROM read_parquet({_lit(str(path))})")
        else:
            rows_read = _stage_csv(con, path, layout, stage_sql)

        con.begin()
        try:
            report = _write_stage(con, source, source_file, content_sha256, rows_read, ingested_at)
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        con.execute(f"DROP {stage_kind} IF EXISTS _ingest_stage")
    return report


def ingest_paths(
    warehouse: Path,
    paths: Sequence[Path],
    source: str,
    ingest_time: datetime | None = None,
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY,
) -> list[IngestReport]:
    """Ingest files, or every matching file under directories (sorted), into a warehouse file.

    Opens and closes its own connection, so it can be called from a CLI or a Dagster asset.
    All files share one ``ingest_time`` so a batch is easy to find afterwards.
    """
    _check_source(source)
    files = _expand_paths(paths, _FILE_PATTERNS[source])
    ingest_time = ingest_time or datetime.now(UTC)
    Path(warehouse).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(warehouse))
    try:
        con.execute("SET enable_progress_bar = false")  # it would clutter the caller's logs
        ensure_raw_schema(con)
        return [_ingest_or_refuse(con, path, source, ingest_time, plausibility) for path in files]
    finally:
        con.close()


def _ingest_or_refuse(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    source: str,
    ingest_time: datetime,
    plausibility: Plausibility,
) -> IngestReport:
    """`ingest_file`, except that a file refused as a whole (empty, wrong header or delimiter,
    unreadable) is recorded in raw.ingested_files with its error instead of stopping the rest
    of the batch; a later run tries it again."""
    try:
        return ingest_file(con, path, source, ingest_time, plausibility)
    except (ValueError, OSError, duckdb.Error) as error:
        source_file = str(Path(path).resolve())
        message = str(error).splitlines()[0][:500]
        con.execute(
            "INSERT INTO raw.ingested_files VALUES (?, ?, ?, 0, 0, 0, 0, ?, ?)",
            [source_file, _sha256_or_empty(path), source, _to_utc_naive(ingest_time), message],
        )
        return IngestReport(source, source_file, 0, 0, 0, 0, skipped=False, error=message)


# --- helpers ---------------------------------------------------------------------------------


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def _to_utc_naive(ingest_time: datetime | None) -> datetime:
    """The warehouse stores naive UTC timestamps; naive inputs are taken to be UTC already."""
    if ingest_time is None:
        ingest_time = datetime.now(UTC)
    if ingest_time.tzinfo is not None:
        ingest_time = ingest_time.astimezone(UTC).replace(tzinfo=None)
    return ingest_time


def _expand_paths(paths: Sequence[Path], pattern: str) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob(pattern) if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return files


def _is_empty(path: Path) -> bool:
    """Nothing but whitespace and a byte-order mark."""
    with Path(path).open("rb") as f:
        head = f.read(4096)
    return not head.removeprefix(b"\xef\xbb\xbf").strip() and Path(path).stat().st_size < 4096


def _sha256_or_empty(path: Path) -> str:
    try:
        return _sha256(path)
    except OSError:
        return ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _lit(value: str) -> str:
    """A SQL string literal (for the few places where DuckDB takes no parameters: views)."""
    return "'" + value.replace("'", "''") + "'"


def _ts_lit(value: datetime) -> str:
    return f"TIMESTAMP {_lit(value.isoformat(sep=' '))}"


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> int:
    # fetchall, not fetchone: it finishes the result, leaving the connection free for the caller.
    (row,) = con.execute(sql, params or []).fetchall()
    return int(row[0])


# --- the shared validation step --------------------------------------------------------------


def _event_key_sql() -> str:
    """SQL for event_key: md5_number over an unambiguous text of the nine canonical fields.

    Text fields are written as "<length>:<value>" and NULL as ":" (concat skips NULLs), so
    different field tuples, NULLs included, can never give the same text. Time (epoch
    microseconds) and price are numbers, which contain no "|"; a NULL price is empty.
    """
    parts = []
    for name in CANONICAL_FIELDS:
        if name == "event_time":
            parts.append("epoch_us(event_time)")
        elif name == "price":
            parts.append("price")
        else:
            parts.append(f"length({name}), ':', {name}")
    separator = ", '|', "
    return f"md5_number(concat({separator.join(parts)}))"


def _validated_sql(
    mapped_sql: str,
    raw_line_sql: str,
    ingested_at: datetime,
    plausibility: Plausibility = DEFAULT_PLAUSIBILITY,
) -> str:
    """Add the rejection reason, the event key and the raw line to a mapped relation.

    ``mapped_sql`` yields one row per input row with: line_number, line_problem (NULL or why
    the line itself is broken), the texts as read (time_text, type_text, price_text) and the
    canonical fields (NULL where missing or unparseable). The first failing check gives the
    reason, written as "category: detail"; the category is what reports count. The checks
    test the parsed value first, so the texts are only looked at for rejected rows.
    """
    return f"""
    WITH mapped AS ({mapped_sql}),
    checked AS (
        SELECT *,
            CASE
                WHEN line_problem IS NOT NULL THEN line_problem
                WHEN event_time IS NULL AND time_text IS NULL THEN 'missing event_time'
                WHEN event_time IS NULL THEN 'unparseable event_time: ' || time_text
                WHEN event_type IS NULL AND type_text IS NULL THEN 'missing event_type'
                WHEN event_type IS NULL THEN 'unknown event_type: ' || type_text
                WHEN user_id IS NULL THEN 'missing user_id'
                WHEN product_id IS NULL THEN 'missing product_id'
                WHEN price IS NULL AND price_text IS NOT NULL
                    THEN 'non-numeric price: ' || price_text
                WHEN NOT isfinite(price) THEN 'non-numeric price: ' || price_text
                WHEN price < 0 THEN 'negative price: ' || price_text
                WHEN event_time > {_ts_lit(ingested_at)}
                    THEN 'event after ingest time: ' || CAST(event_time AS VARCHAR)
                WHEN event_time < {_ts_lit(plausibility.earliest_event_time)}
                    THEN 'implausible event_time: ' || CAST(event_time AS VARCHAR)
                        || ' is before {plausibility.earliest_event_time:%Y-%m-%d}'
                        || ' (' || time_text || ' as read)'
                WHEN price > {plausibility.max_price!r}
                    THEN 'implausible price: ' || price_text
                {_id_checks_sql()}
                WHEN greatest({", ".join(f"length(coalesce({c}, ''))" for c in _TEXT_FIELDS)})
                        > {int(plausibility.max_field_length)}
                    THEN 'field too long: more than {int(plausibility.max_field_length)} characters'
                WHEN regexp_matches(concat({", ".join(_TEXT_FIELDS)}), {_lit(_CONTROL_CHARACTERS)})
                    THEN 'control characters in a text field'
            END AS reason
        FROM mapped
    )
    SELECT
        line_number, event_time, event_type, product_id, category_id, category_code, brand,
        price, user_id, user_session,
        CASE WHEN reason IS NULL THEN {_event_key_sql()} END AS event_key,
        reason,
        CASE WHEN reason IS NOT NULL THEN {raw_line_sql} END AS raw_line
    FROM checked
    """


# Control characters other than tab, newline and carriage return (RE2 syntax for DuckDB).
_CONTROL_CHARACTERS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# In an id, tab, newline and carriage return are control characters too.
_ID_CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
# Text fields of the canonical event, and the ids among them.
_TEXT_FIELDS = ("product_id", "category_id", "category_code", "brand", "user_id", "user_session")
_ID_FIELDS = ("user_id", "product_id")


def _id_checks_sql() -> str:
    """CASE branches quarantining blank, padded and control-character ids (a session id is
    optional: a blank one means "no session", as in staging)."""
    branches = []
    for name in _ID_FIELDS:
        branches.append(
            f"WHEN trim({name}) = '' THEN 'blank {name}'\n"
            f"WHEN {name} <> trim({name}) THEN 'padded {name}: ' || {name}\n"
            f"WHEN regexp_matches({name}, {_lit(_ID_CONTROL_CHARACTERS)}) "
            f"THEN 'control characters in {name}'"
        )
    return "\n".join(branches)


def _write_stage(
    con: duckdb.DuckDBPyConnection,
    source: str,
    source_file: str,
    content_sha256: str,
    rows_read: int,
    ingested_at: datetime,
) -> IngestReport:
    """Write quarantine rows and new events from ``_ingest_stage``; record the file's counts."""
    # Rejected rows are few; collect them once, then write and count them.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _ingest_rejected AS
        SELECT line_number, raw_line, reason FROM _ingest_stage WHERE reason IS NOT NULL
        """
    )
    quarantined = _scalar(
        con,
        """
        INSERT INTO raw.quarantine
        SELECT ?, ?, line_number, raw_line, reason, ? FROM _ingest_rejected ORDER BY line_number
        """,
        [source, source_file, ingested_at],
    )
    reasons = dict(
        con.execute(
            """
            SELECT split_part(reason, ':', 1) AS category, count(*)
            FROM _ingest_rejected GROUP BY category ORDER BY category
            """
        ).fetchall()
    )
    con.execute("DROP TABLE _ingest_rejected")

    # Insert the valid rows whose event is not stored yet. Repeats inside the file are removed
    # afterwards, from the stored rows, so that the stage is read only once here (for parquet
    # the stage is a view: every read of it reads and validates the file again).
    inserted = _scalar(
        con,
        """
        INSERT INTO raw.events
        SELECT s.event_time, s.event_type, s.product_id, s.category_id, s.category_code,
               s.brand, s.price, s.user_id, s.user_session, ?, ?, s.line_number, s.event_key, ?
        FROM _ingest_stage AS s
        WHERE s.reason IS NULL
          AND NOT EXISTS (SELECT 1 FROM raw.events AS e WHERE e.event_key = s.event_key)
        """,
        [source, source_file, ingested_at],
    )
    # Then drop repeats inside the file from what it just added: of rows with the same event,
    # only the first line stays. (Rows of earlier files cannot match: they were excluded above.)
    repeats = _scalar(
        con,
        """
        DELETE FROM raw.events AS e
        USING (
            SELECT event_key, min(line_number) AS first_line
            FROM raw.events
            WHERE source_file = $source_file AND ingested_at = $ingested_at
            GROUP BY event_key HAVING count(*) > 1
        ) AS r
        WHERE e.source_file = $source_file AND e.ingested_at = $ingested_at
          AND e.event_key = r.event_key AND e.line_number > r.first_line
        """,
        {"source_file": source_file, "ingested_at": ingested_at},
    )
    accepted = inserted - repeats
    duplicates = rows_read - quarantined - accepted

    con.execute(
        "INSERT INTO raw.ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        [
            source_file,
            content_sha256,
            source,
            rows_read,
            accepted,
            quarantined,
            duplicates,
            ingested_at,
        ],
    )
    return IngestReport(
        source=source,
        source_file=source_file,
        rows_read=rows_read,
        accepted=accepted,
        quarantined=quarantined,
        duplicates=duplicates,
        skipped=False,
        quarantine_reasons=reasons,
    )


# --- synthetic parquet -----------------------------------------------------------------------


def _synthetic_stage_sql(
    con: duckdb.DuckDBPyConnection, path: Path, ingested_at: datetime, plausibility: Plausibility
) -> str:
    """SQL for the stage of a generator parquet file; checks its columns first."""
    parquet = f"read_parquet({_lit(str(path))}, file_row_number = true)"
    described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_lit(str(path))})").fetchall()
    found = {row[0]: row[1] for row in described}  # column name -> type
    missing = [c for c in SYNTHETIC_COLUMNS if c not in found]
    if missing:
        raise ValueError(
            f"{path}: synthetic parquet lacks column(s) {missing}; "
            f"expected {list(SYNTHETIC_COLUMNS)}, found {list(found)}"
        )
    if not str(found["event_time"]).startswith("TIMESTAMP") or "TIME ZONE" in found["event_time"]:
        raise ValueError(
            f"{path}: event_time must be a naive UTC timestamp, found {found['event_time']}"
        )

    def text(column: str) -> str:
        return f"NULLIF(CAST({column} AS VARCHAR), '')"

    event_types = ", ".join(map(_lit, CANONICAL_EVENT_TYPES))
    mapped_sql = f"""
        SELECT
            file_row_number + 1 AS line_number,
            CAST(NULL AS VARCHAR) AS line_problem,
            CAST(event_time AS VARCHAR) AS time_text,
            CAST(event_time AS TIMESTAMP) AS event_time,
            {text("event_type")} AS type_text,
            CASE WHEN event_type IN ({event_types}) THEN event_type END AS event_type,
            {text("product_id")} AS product_id,
            {text("category_id")} AS category_id,
            {text("category_code")} AS category_code,
            {text("brand")} AS brand,
            CAST(price AS VARCHAR) AS price_text,
            CAST(price AS DOUBLE) AS price,
            {text("user_id")} AS user_id,
            {text("user_session")} AS user_session
        FROM {parquet}
    """
    # The raw "line" of a rejected parquet row is the row rendered as JSON.
    raw_line_sql = """to_json(struct_pack(
        event_time := time_text, event_type := type_text, product_id := product_id,
        category_id := category_id, category_code := category_code, brand := brand,
        price := price_text, user_id := user_id, user_session := user_session))"""
    return _validated_sql(mapped_sql, raw_line_sql, ingested_at, plausibility)


# --- CSV sources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CsvLayout:
    """Where each needed column sits in a file's rows (1-based), as read from its header."""

    column_index: dict[str, int]
    n_fields: int
    has_header: bool


def read_csv_layout(path: Path, spec: CsvSource) -> _CsvLayout:
    """Read the header (or decide there is none) and check it has the columns we need."""
    with path.open("rb") as f:
        first_line = f.readline().decode("utf-8", errors="replace")
    first_line = first_line.removeprefix("\ufeff").rstrip("\r\n")
    names = [name.strip().lower() for name in next(csv.reader([first_line]), [])]

    # A file of a source whose header is optional has one when its first line names any of
    # the expected columns; otherwise the first line is data in the documented column order.
    if spec.header == "optional" and not set(names) & set(spec.headerless_columns):
        return _CsvLayout(
            column_index={name: i + 1 for i, name in enumerate(spec.headerless_columns)},
            n_fields=len(spec.headerless_columns),
            has_header=False,
        )
    missing = [c for c in spec.required_columns if c not in names]
    if missing:
        raise ValueError(
            f"{path}: {spec.name} header lacks required column(s) {missing}; "
            f"expected {list(spec.required_columns)}, found {names}"
        )
    return _CsvLayout(
        column_index={name: names.index(name) + 1 for name in spec.required_columns},
        n_fields=len(names),
        has_header=True,
    )


def _csv_stage_sql(
    spec: CsvSource, layout: _CsvLayout, ingested_at: datetime, plausibility: Plausibility
) -> str:
    """SQL turning one chunk of lines (table ``_ingest_chunk``) into stage rows."""

    def text(canonical: str) -> str:
        column = spec.fields[canonical]
        if column is None:
            return "CAST(NULL AS VARCHAR)"
        return f"NULLIF(fields[{layout.column_index[column]}], '')"

    event_types = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in spec.event_types.items())
    n = layout.n_fields
    mapped_sql = f"""
        WITH split AS (
            SELECT line_number, line, bad_utf8, cut,
                CASE
                    WHEN NOT contains(line, '"') THEN string_split(line, ',')
                    WHEN regexp_full_match(line, {_lit(_CSV_LINE_RE)}) THEN list_transform(
                        regexp_extract_all(',' || line, {_lit(_CSV_FIELD_RE)}, 1),
                        lambda v: CASE WHEN starts_with(v, '"')
                                       THEN replace(v[2:-2], '""', '"') ELSE v END)
                END AS fields  -- NULL: the quotes are unbalanced or misplaced
            FROM _ingest_chunk
        ),
        texts AS (
            SELECT line_number, line,
                CASE
                    WHEN cut AND trim(line) <> ''
                        THEN 'truncated line: the file does not end with a line break, so its '
                             || 'last line may be cut short'
                    WHEN bad_utf8 THEN 'invalid utf-8'
                    WHEN trim(line) = '' THEN 'malformed line: blank line'
                    WHEN fields IS NULL THEN 'malformed line: unbalanced or misplaced quotes'
                    WHEN len(fields) <> {n}
                        THEN 'malformed line: expected {n} fields, found ' || len(fields)
                END AS line_problem,
                {text("event_time")} AS time_text,
                {text("event_type")} AS type_text,
                {text("product_id")} AS product_id,
                {text("category_id")} AS category_id,
                {text("category_code")} AS category_code,
                {text("brand")} AS brand,
                {text("price")} AS price_text,
                {text("user_id")} AS user_id,
                {text("user_session")} AS user_session
            FROM split
        )
        SELECT line_number, line, line_problem,
            time_text, {spec.time_sql.replace("{t}", "time_text")} AS event_time,
            type_text, CASE type_text {event_types} END AS event_type,
            product_id, category_id, category_code, brand,
            price_text, TRY_CAST(price_text AS DOUBLE) AS price,
            user_id, user_session
        FROM texts
    """
    return _validated_sql(mapped_sql, "line", ingested_at, plausibility)


def _stage_csv(
    con: duckdb.DuckDBPyConnection, path: Path, layout: _CsvLayout, stage_sql: str
) -> int:
    """Fill ``_ingest_stage`` from a CSV file chunk by chunk; return the data lines read."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _ingest_stage (
            line_number BIGINT, event_time TIMESTAMP, event_type VARCHAR, product_id VARCHAR,
            category_id VARCHAR, category_code VARCHAR, brand VARCHAR, price DOUBLE,
            user_id VARCHAR, user_session VARCHAR, event_key UHUGEINT, reason VARCHAR,
            raw_line VARCHAR)
        """
    )
    rows_read = 0
    next_line_number = 1
    for lines, bad_utf8, ends_without_newline in _iter_line_chunks(path, CSV_CHUNK_BYTES):
        if next_line_number == 1 and layout.has_header:
            lines, bad_utf8 = lines[1:], bad_utf8[1:]
            next_line_number = 2
        if not lines:
            continue
        cut = np.zeros(len(lines), dtype=bool)
        cut[-1] = ends_without_newline
        chunk = pa.table(
            {
                "line_number": np.arange(next_line_number, next_line_number + len(lines)),
                "line": pa.array(lines, type=pa.string()),
                "bad_utf8": bad_utf8,
                "cut": cut,
            }
        )
        con.register("_ingest_chunk", chunk)
        try:
            con.execute(f"INSERT INTO _ingest_stage {stage_sql}")
        finally:
            con.unregister("_ingest_chunk")
        next_line_number += len(lines)
        rows_read += len(lines)
    return rows_read


def _iter_line_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[list[str], pa.Array, bool]]:
    """Yield the file's lines in order, in chunks, as text without line endings.

    Lines end at "\\n" only (a "\\r" before it is dropped, a UTF-8 BOM at the start too), so
    line numbers are what an editor shows. Lines that are not valid UTF-8 are decoded with
    replacement characters and flagged in the second item. The third is True for the last
    chunk when the file does not end with "\\n": its last line may have been cut short (a
    truncated copy), so it is quarantined rather than trusted.
    """
    carry = b""
    first = True
    with path.open("rb") as f:
        while block := f.read(chunk_bytes):
            data = carry + block
            end = data.rfind(b"\n")
            if end < 0:  # no complete line yet
                carry = data
                continue
            carry = data[end + 1 :]
            yield (*_decode_lines(data[:end], first), False)
            first = False
    if carry:
        yield (*_decode_lines(carry, first), True)


def _decode_lines(data: bytes, first: bool) -> tuple[list[str], pa.Array]:
    try:
        lines = data.decode("utf-8").replace("\r\n", "\n").split("\n")
        bad_utf8 = pa.repeat(False, len(lines))
    except UnicodeDecodeError:  # rare: decode line by line to flag only the bad ones
        lines, flags = [], []
        for raw in data.split(b"\n"):
            try:
                lines.append(raw.decode("utf-8").removesuffix("\r"))
                flags.append(False)
            except UnicodeDecodeError:
                lines.append(raw.decode("utf-8", errors="replace").removesuffix("\r"))
                flags.append(True)
        bad_utf8 = pa.array(flags, type=pa.bool_())
    # The chunk was cut just before a "\n", so its last line may still end with "\r".
    lines[-1] = lines[-1].removesuffix("\r")
    if first:
        lines[0] = lines[0].removeprefix("\ufeff")
    return lines, bad_utf8
