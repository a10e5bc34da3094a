"""Tests for ml.data.ingest: real DuckDB files under tmp_path, small files written by the tests,
and the team's real REES46 and RetailRocket samples (read in place, never copied)."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.data import ingest
from ml.data.ingest import SOURCES, IngestReport, ensure_raw_schema, ingest_file, ingest_paths

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
REES46_SAMPLE = DATASETS / "rees46_oct2019_head" / "events.csv"
RETAILROCKET_SAMPLE = DATASETS / "retailrocket_sample" / "events.csv"

INGEST_TIME = datetime(2024, 6, 1, 12, 0, 0)
REES46_HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
EVENT_COLUMNS = (
    "event_time, event_type, product_id, category_id, category_code, brand, price, user_id, "
    "user_session"
)


@pytest.fixture
def con(tmp_path: Path):
    connection = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ensure_raw_schema(connection)
    yield connection
    connection.close()


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def events(con: duckdb.DuckDBPyConnection, where: str = "true") -> list[tuple]:
    """The stored events (canonical fields, then line_number), in line order."""
    return con.sql(
        f"SELECT {EVENT_COLUMNS}, line_number FROM raw.events WHERE {where} "
        "ORDER BY source_file, line_number"
    ).fetchall()


def table_counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    return tuple(
        con.sql(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0]
        for table in ("events", "quarantine", "ingested_files")
    )


def counts(report: IngestReport) -> tuple[int, int, int, int]:
    return (report.rows_read, report.accepted, report.quarantined, report.duplicates)


def assert_reconciles(con: duckdb.DuckDBPyConnection, report: IngestReport) -> None:
    """The report adds up, and matches what the tables hold for this file."""
    assert report.rows_read == report.accepted + report.quarantined + report.duplicates
    assert sum(report.quarantine_reasons.values()) == report.quarantined
    stored = con.execute(
        """
        SELECT (SELECT count(*) FROM raw.events WHERE source_file = $f AND source = $s),
               (SELECT count(*) FROM raw.quarantine WHERE source_file = $f AND source = $s)
        """,
        {"f": report.source_file, "s": report.source},
    ).fetchall()[0]
    assert stored == (report.accepted, report.quarantined)
    recorded = con.execute(
        """
        SELECT rows_read, accepted, quarantined, duplicates FROM raw.ingested_files
        WHERE source_file = ? ORDER BY ingested_at DESC LIMIT 1
        """,
        [report.source_file],
    ).fetchall()[0]
    assert recorded == (report.rows_read, report.accepted, report.quarantined, report.duplicates)


# --- mapping of each source ------------------------------------------------------------------


def test_rees46_rows_map_to_canonical_fields(con, tmp_path):
    path = write_text(
        tmp_path / "rees46.csv",
        f"{REES46_HEADER}\n"
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,s1\n"
        "2019-10-01 00:00:05 UTC,cart,3900821,2053013552326770905,appliances.water,,33.20,5,s2\n"
        "2019-10-01 00:01:00 UTC,remove_from_cart,3900821,,,aqua,,5,\n"
        "2019-10-01 00:02:00 UTC,purchase,3900821,1,a.b,aqua,0,5,s2\n",
    )
    report = ingest_file(con, path, "rees46", INGEST_TIME)

    assert counts(report) == (4, 4, 0, 0)
    assert not report.skipped
    assert_reconciles(con, report)
    assert events(con) == [
        (datetime(2019, 10, 1, 0, 0, 0), "view", "44600062", "2103807459595387724", None,
         "shiseido", 35.79, "541312140", "s1", 2),
        (datetime(2019, 10, 1, 0, 0, 5), "cart", "3900821", "2053013552326770905",
         "appliances.water", None, 33.2, "5", "s2", 3),
        (datetime(2019, 10, 1, 0, 1, 0), "remove_from_cart", "3900821", None, None, "aqua",
         None, "5", None, 4),
        (datetime(2019, 10, 1, 0, 2, 0), "purchase", "3900821", "1", "a.b", "aqua", 0.0, "5",
         "s2", 5),
    ]  # fmt: skip
    meta = con.sql("SELECT DISTINCT source, source_file, ingested_at FROM raw.events").fetchall()
    assert meta == [("rees46", str(path.resolve()), INGEST_TIME)]


def test_retailrocket_maps_event_names_ids_and_unix_milliseconds(con, tmp_path):
    # Columns in another order plus an extra column, as in the real sample: mapped by name.
    path = write_text(
        tmp_path / "rr.csv",
        "visitorid,timestamp,event,itemid,transactionid,datetime\n"
        "1134473,1433193132535,view,396045,,2015-06-01 21:12:12.535\n"
        "1134473,1433193140000,addtocart,396045,,x\n"
        "1134473,1433193150001,transaction,396045,17,x\n",
    )
    report = ingest_file(con, path, "retailrocket", INGEST_TIME)

    assert (report.rows_read, report.accepted, report.quarantined) == (3, 3, 0)
    assert_reconciles(con, report)
    base = datetime(2015, 6, 1, 21, 12, 12, 535000)
    assert events(con) == [
        (base, "view", "396045", None, None, None, None, "1134473", None, 2),
        (datetime(2015, 6, 1, 21, 12, 20), "cart", "396045", None, None, None, None, "1134473",
         None, 3),
        (datetime(2015, 6, 1, 21, 12, 30, 1000), "purchase", "396045", None, None, None, None,
         "1134473", None, 4),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "bom", "newline"),
    [
        ("", "", "\n"),  # the original UserBehavior.csv
        ("", "\ufeff", "\r\n"),  # saved by a Windows tool: the BOM sits on a data line
        ("user_id,item_id,category_id,behavior_type,timestamp", "", "\n"),
    ],
    ids=["no-header", "no-header-bom-crlf", "header"],
)
def test_taobao_with_or_without_header(con, tmp_path, header, bom, newline):
    rows = [
        "1,2268318,2520377,pv,1511544070",
        "1,2333346,2520771,cart,1511561733",
        "1,2576651,149192,fav,1511572885",
        "100,1603476,2951233,buy,1511579908",
    ]
    text = bom + newline.join([header, *rows] if header else rows) + newline
    path = write_text(tmp_path / "UserBehavior.csv", text)
    with_header = bool(header)

    report = ingest_file(con, path, "taobao", INGEST_TIME)

    assert (report.rows_read, report.accepted, report.quarantined) == (4, 4, 0)
    assert_reconciles(con, report)
    first = 2 if with_header else 1  # line 1 is data in the original headerless file
    assert events(con) == [
        (datetime(2017, 11, 24, 17, 21, 10), "view", "2268318", "2520377", None, None, None, "1",
         None, first),
        (datetime(2017, 11, 24, 22, 15, 33), "cart", "2333346", "2520771", None, None, None, "1",
         None, first + 1),
        (datetime(2017, 11, 25, 1, 21, 25), "wishlist", "2576651", "149192", None, None, None,
         "1", None, first + 2),
        (datetime(2017, 11, 25, 3, 18, 28), "purchase", "1603476", "2951233", None, None, None,
         "100", None, first + 3),
    ]  # fmt: skip


SYNTHETIC_SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("us")),
        ("event_type", pa.string()),
        ("product_id", pa.int64()),
        ("category_id", pa.int64()),
        ("category_code", pa.string()),
        ("brand", pa.string()),
        ("price", pa.float64()),
        ("user_id", pa.int64()),
        ("user_session", pa.string()),
    ]
)


def write_synthetic(path: Path, rows: list[tuple]) -> Path:
    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {name: pa.array(col, type=SYNTHETIC_SCHEMA.field(name).type)
         for name, col in zip(SYNTHETIC_SCHEMA.names, columns, strict=True)},
        schema=SYNTHETIC_SCHEMA,
    )  # fmt: skip
    pq.write_table(table, path)
    return path


def test_synthetic_parquet_maps_and_validates(con, tmp_path):
    t0 = datetime(2024, 1, 1, 8, 0, 0, 123456)
    path = write_synthetic(
        tmp_path / "events.parquet",
        [
            (t0, "view", 10, 7, "a.b", "acme", 9.5, 1000, "s1"),
            (t0, "wishlist", 11, 7, None, None, None, 1000, "s1"),
            (t0, "click", 12, 7, None, None, 1.0, 1000, "s1"),  # unknown type
            (t0, "cart", 13, 7, None, None, -2.0, 1000, "s1"),  # negative price
            (t0, "cart", 14, 7, None, None, float("nan"), 1000, "s1"),  # not a number
            (t0, "cart", 15, 7, None, None, 1.0, None, "s1"),  # no user
            (None, "cart", 16, 7, None, None, 1.0, 1000, "s1"),  # no time
            (datetime(2030, 1, 1), "cart", 17, 7, None, None, 1.0, 1000, "s1"),  # future
            (t0, "view", 10, 7, "a.b", "acme", 9.5, 1000, "s1"),  # repeats row 1
        ],
    )
    report = ingest_file(con, path, "synthetic", INGEST_TIME)

    assert counts(report) == (9, 2, 6, 1)
    assert_reconciles(con, report)
    assert events(con) == [
        (t0, "view", "10", "7", "a.b", "acme", 9.5, "1000", "s1", 1),
        (t0, "wishlist", "11", "7", None, None, None, "1000", "s1", 2),
    ]
    quarantined = con.sql(
        "SELECT line_number, reason, raw_line FROM raw.quarantine ORDER BY line_number"
    ).fetchall()
    assert [(n, reason) for n, reason, _ in quarantined] == [
        (3, "unknown event_type: click"),
        (4, "negative price: -2.0"),
        (5, "non-numeric price: nan"),
        (6, "missing user_id"),
        (7, "missing event_time"),
        (8, "event after ingest time: 2030-01-01 00:00:00"),
    ]
    assert '"event_type":"click"' in quarantined[0][2]
    assert '"product_id":"12"' in quarantined[0][2]


def test_synthetic_parquet_without_a_required_column_is_refused(con, tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"event_time": [datetime(2024, 1, 1)], "user_id": [1]}), path)

    with pytest.raises(ValueError, match="lacks column") as error:
        ingest_file(con, path, "synthetic", INGEST_TIME)

    assert "expected ['event_time', 'event_type', 'product_id'" in str(error.value)
    assert "found ['event_time', 'user_id']" in str(error.value)
    assert table_counts(con) == (0, 0, 0)


# --- the real samples ------------------------------------------------------------------------


def canonical_rows_from_file(path: Path, to_canonical) -> tuple[int, int]:
    """(data lines, exact duplicates) counted independently with Python's csv module."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    seen: set[tuple] = set()
    duplicates = 0
    for row in rows:
        key = to_canonical(row)
        duplicates += key in seen
        seen.add(key)
    return len(rows), duplicates


def test_real_rees46_sample_is_fully_accounted_for(con):
    if not REES46_SAMPLE.exists():
        pytest.skip(f"the REES46 sample is not at {REES46_SAMPLE}")
    report = ingest_file(con, REES46_SAMPLE, "rees46", INGEST_TIME)

    lines, duplicates = canonical_rows_from_file(
        REES46_SAMPLE, lambda r: (*(r[c] for c in r if c != "price"), float(r["price"]))
    )
    assert report.rows_read == lines == 17_434
    assert report.quarantined == 0
    assert report.duplicates == duplicates
    assert_reconciles(con, report)
    # The file's first data row (line 2) and its last (line 17,435), field by field.
    with REES46_SAMPLE.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for line_number, row in ((2, rows[0]), (17_435, rows[-1])):
        stored = events(con, f"line_number = {line_number}")
        assert stored == [
            (
                datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S UTC"),
                row["event_type"],
                row["product_id"],
                row["category_id"] or None,
                row["category_code"] or None,
                row["brand"] or None,
                float(row["price"]),
                row["user_id"],
                row["user_session"] or None,
                line_number,
            )
        ]


def test_real_retailrocket_sample_is_fully_accounted_for(con):
    if not RETAILROCKET_SAMPLE.exists():
        pytest.skip(f"the RetailRocket sample is not at {RETAILROCKET_SAMPLE}")
    report = ingest_file(con, RETAILROCKET_SAMPLE, "retailrocket", INGEST_TIME)

    lines, duplicates = canonical_rows_from_file(
        RETAILROCKET_SAMPLE, lambda r: (r["timestamp"], r["event"], r["itemid"], r["visitorid"])
    )
    assert report.rows_read == lines == 9_385
    assert report.quarantined == 0
    assert report.duplicates == duplicates
    assert_reconciles(con, report)
    types = dict(con.sql("SELECT event_type, count(*) FROM raw.events GROUP BY 1").fetchall())
    assert set(types) == {"view", "cart", "purchase"}
    # A transaction row of the file becomes a purchase with the right time and ids.
    with RETAILROCKET_SAMPLE.open(newline="", encoding="utf-8") as f:
        numbered = list(enumerate(csv.DictReader(f), start=2))
    line_number, row = next((n, r) for n, r in numbered if r["event"] == "transaction")
    expected_time = datetime(1970, 1, 1) + timedelta(milliseconds=int(row["timestamp"]))
    assert events(con, f"line_number = {line_number}") == [
        (expected_time, "purchase", row["itemid"], None, None, None, None, row["visitorid"],
         None, line_number)
    ]  # fmt: skip


# --- validation, quarantine and reconciliation ---------------------------------------------

GOOD = "2019-10-01 00:00:00 UTC,view,1,2,c.d,brand,1.50,7,s"
# (line text, expected reason) for every kind of bad row; line numbers follow from the order.
BAD_ROWS = [
    ("2019-10-01 00:00:00 UTC,view,1,2,c.d,brand,1.50,7",
     "malformed line: expected 9 fields, found 8"),
    ("", "malformed line: blank line"),
    ('2019-10-01 00:00:00 UTC,view,1,2,"c.d,brand,1.50,7,s',
     "malformed line: unbalanced or misplaced quotes"),
    ("2019-13-01 00:00:00 UTC,view,1,2,c.d,brand,1.50,7,s",
     "unparseable event_time: 2019-13-01 00:00:00 UTC"),
    (",view,1,2,c.d,brand,1.50,7,s", "missing event_time"),
    ("2019-10-01 00:00:00 UTC,click,1,2,c.d,brand,1.50,7,s", "unknown event_type: click"),
    ("2019-10-01 00:00:00 UTC,,1,2,c.d,brand,1.50,7,s", "missing event_type"),
    ("2019-10-01 00:00:00 UTC,view,1,2,c.d,brand,1.50,,s", "missing user_id"),
    ("2019-10-01 00:00:00 UTC,view,,2,c.d,brand,1.50,7,s", "missing product_id"),
    ("2019-10-01 00:00:00 UTC,view,1,2,c.d,brand,-1.50,7,s", "negative price: -1.50"),
    ("2019-10-01 00:00:00 UTC,view,1,2,c.d,brand,abc,7,s", "non-numeric price: abc"),
    ("2030-01-01 00:00:00 UTC,view,1,2,c.d,brand,1.50,7,s",
     "event after ingest time: 2030-01-01 00:00:00"),
]  # fmt: skip


def test_every_kind_of_bad_row_is_quarantined_with_line_and_reason(con, tmp_path):
    bad_utf8 = b"2019-10-01 00:00:00 UTC,view,1,2,c.d,br\xffand,1.50,7,s"
    good_quoted = '2019-10-01 00:00:01 UTC,view,1,2,"a,b","say ""hi""",,7,s'
    lines = [
        ("\ufeff" + REES46_HEADER).encode(),  # line 1, with a UTF-8 BOM
        bad_utf8,  # line 2
        GOOD.encode(),  # line 3
        *(text.encode() for text, _ in BAD_ROWS),  # lines 4 ..
        good_quoted.encode(),  # the last line
    ]
    # Windows line endings.
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")

    report = ingest_file(con, path, "rees46", INGEST_TIME)

    expected = [(2, bad_utf8.decode("utf-8", errors="replace"), "invalid utf-8")]
    expected += [(4 + i, text, reason) for i, (text, reason) in enumerate(BAD_ROWS)]
    stored = con.sql(
        "SELECT line_number, raw_line, reason, source FROM raw.quarantine ORDER BY line_number"
    ).fetchall()
    assert stored == [(*row, "rees46") for row in expected]
    assert report.rows_read == len(lines) - 1  # every line but the header
    assert (report.accepted, report.quarantined, report.duplicates) == (2, len(expected), 0)
    assert report.quarantine_reasons == {
        "invalid utf-8": 1,
        "malformed line": 3,
        "unparseable event_time": 1,
        "missing event_time": 1,
        "unknown event_type": 1,
        "missing event_type": 1,
        "missing user_id": 1,
        "missing product_id": 1,
        "negative price": 1,
        "non-numeric price": 1,
        "event after ingest time": 1,
    }
    assert_reconciles(con, report)
    last_line = 4 + len(BAD_ROWS)
    assert events(con) == [
        (datetime(2019, 10, 1), "view", "1", "2", "c.d", "brand", 1.5, "7", "s", 3),
        (datetime(2019, 10, 1, 0, 0, 1), "view", "1", "2", "a,b", 'say "hi"', None, "7", "s",
         last_line),
    ]  # fmt: skip


CUT_FILES = {  # source: (header, a line, the line the cut shortens: its last field loses 2)
    "rees46": (REES46_HEADER, GOOD, GOOD.replace(",s", ",s123")),  # session s123 -> s1
    "retailrocket": (
        "timestamp,event,itemid,visitorid",
        "1433193132535,view,1,7700019",
        "1433193132536,view,2,7700123",  # visitor 7700123 -> 77001, another visitor
    ),
    "taobao": (
        "user_id,item_id,category_id,behavior_type,timestamp",
        "7,1,2,pv,1511544070",
        "7,2,2,pv,1511544171",  # the time loses two digits
    ),
}


@pytest.mark.parametrize("source", sorted(CUT_FILES))
def test_a_last_line_cut_short_by_a_truncated_copy_is_quarantined(con, tmp_path, source):
    """A file that does not end with a line break was cut (a copy that stopped, a full disk):
    its last line may be a shortened value that still parses ("s1" for session "s123")."""
    header, first, last = CUT_FILES[source]
    complete = f"{header}\n{first}\n{last}\n"
    path = write_text(tmp_path / "cut.csv", complete[:-3])

    report = ingest_file(con, path, source, INGEST_TIME)

    assert (report.rows_read, report.accepted, report.quarantined) == (2, 1, 1)
    assert report.quarantine_reasons == {"truncated line": 1}
    ((line_number, raw_line, reason),) = con.sql(
        "SELECT line_number, raw_line, reason FROM raw.quarantine"
    ).fetchall()
    assert (line_number, raw_line) == (3, last[:-2])
    assert "does not end with a line break" in reason
    assert_reconciles(con, report)
    # The complete file, once it arrives, brings the row in whole.
    whole = ingest_file(con, write_text(tmp_path / "whole.csv", complete), source, INGEST_TIME)
    assert (whole.accepted, whole.duplicates) == (1, 1)
    assert len(events(con)) == 2


def test_events_after_the_ingest_time_are_quarantined(con, tmp_path):
    path = write_text(
        tmp_path / "future.csv",
        f"{REES46_HEADER}\n"
        "2024-06-01 12:00:00 UTC,view,1,,,,,7,s\n"  # exactly the ingest time: fine
        "2024-06-01 12:00:01 UTC,view,1,,,,,7,s\n",  # one second later: from the future
    )
    # The same instant given in UTC+02:00 is converted to naive UTC.
    ingest_time = datetime(2024, 6, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))

    report = ingest_file(con, path, "rees46", ingest_time)

    assert (report.accepted, report.quarantined) == (1, 1)
    assert report.quarantine_reasons == {"event after ingest time": 1}
    assert con.sql("SELECT line_number, reason FROM raw.quarantine").fetchall() == [
        (3, "event after ingest time: 2024-06-01 12:00:01")
    ]
    assert con.sql("SELECT DISTINCT ingested_at FROM raw.events").fetchall() == [(INGEST_TIME,)]


def test_lines_are_numbered_exactly_across_chunk_boundaries(con, tmp_path, monkeypatch):
    rows = [f"2019-10-01 00:00:{i % 60:02d} UTC,view,{i},,,,,{i},s" for i in range(200)]
    rows[57] = "broken"
    rows[133] = ""
    path = write_text(tmp_path / "many.csv", "\r\n".join([REES46_HEADER, *rows]) + "\r\n")
    monkeypatch.setattr(ingest, "CSV_CHUNK_BYTES", 100)  # a few lines per chunk

    report = ingest_file(con, path, "rees46", INGEST_TIME)

    assert (report.rows_read, report.accepted, report.quarantined) == (200, 198, 2)
    assert con.sql("SELECT line_number, raw_line FROM raw.quarantine ORDER BY 1").fetchall() == [
        (59, "broken"),
        (135, ""),
    ]
    stored = con.sql("SELECT line_number, product_id FROM raw.events ORDER BY 1").fetchall()
    assert stored == [(i + 2, str(i)) for i in range(200) if i not in (57, 133)]


# --- duplicates and re-ingest ----------------------------------------------------------------


def test_duplicates_inside_a_file_keep_the_first_occurrence(con, tmp_path):
    a = "2019-10-01 00:00:00 UTC,view,1,,,,1.5,7,s"
    b = "2019-10-01 00:00:00 UTC,view,2,,,,1.5,7,s"
    # "1.50" is the same price as "1.5", so the event is the same.
    a_again = "2019-10-01 00:00:00 UTC,view,1,,,,1.50,7,s"
    a_no_session = "2019-10-01 00:00:00 UTC,view,1,,,,1.5,7,"  # NULL session: another event
    # Different fields that read alike when simply joined with "|": not duplicates.
    c_pipe_in_code = "2019-10-01 00:00:00 UTC,view,3,,x|y,,1.5,7,s"
    c_pipe_in_brand = "2019-10-01 00:00:00 UTC,view,3,,x,y|,1.5,7,s"
    path = write_text(
        tmp_path / "dups.csv",
        "\n".join(
            [REES46_HEADER, a, b, a_again, b, a, a_no_session, c_pipe_in_code, c_pipe_in_brand]
        )
        + "\n",
    )

    report = ingest_file(con, path, "rees46", INGEST_TIME)

    assert counts(report) == (8, 5, 0, 3)
    assert_reconciles(con, report)
    kept = con.sql("SELECT line_number, product_id FROM raw.events ORDER BY 1").fetchall()
    assert kept == [(2, "1"), (3, "2"), (7, "1"), (8, "3"), (9, "3")]


def test_duplicates_of_stored_events_are_dropped(con, tmp_path):
    first = write_text(
        tmp_path / "day1.csv",
        f"{REES46_HEADER}\n"
        "2019-10-01 00:00:00 UTC,view,1,,,,,7,s\n"
        "2019-10-01 00:00:01 UTC,cart,1,,,,,7,s\n",
    )
    # An overlapping export: one event already stored, one new.
    second = write_text(
        tmp_path / "day1_again.csv",
        f"{REES46_HEADER}\n"
        "2019-10-01 00:00:01 UTC,cart,1,,,,,7,s\n"
        "2019-10-01 00:00:02 UTC,purchase,1,,,,,7,s\n",
    )
    ingest_file(con, first, "rees46", INGEST_TIME)
    report = ingest_file(con, second, "rees46", INGEST_TIME)

    assert (report.rows_read, report.accepted, report.duplicates) == (2, 1, 1)
    assert_reconciles(con, report)
    assert events(con, f"source_file = '{second.resolve()}'")[0][1] == "purchase"
    keys = con.sql("SELECT count(*), count(DISTINCT event_key) FROM raw.events").fetchall()
    assert keys == [(3, 3)]


def test_ingesting_the_same_content_twice_adds_nothing(con, tmp_path):
    text = f"{REES46_HEADER}\n2019-10-01 00:00:00 UTC,view,1,,,,,7,s\nnot a row\n"
    path = write_text(tmp_path / "once.csv", text)
    first = ingest_file(con, path, "rees46", INGEST_TIME)
    stored = table_counts(con)
    assert stored == (1, 1, 1)

    again = ingest_file(con, path, "rees46", INGEST_TIME + timedelta(days=1))
    # The same bytes under another name are the same content.
    copy = ingest_file(con, write_text(tmp_path / "copy.csv", text), "rees46")

    assert not first.skipped
    for report in (again, copy):
        assert report.skipped
        assert counts(report) == (0, 0, 0, 0)
    assert table_counts(con) == stored


def test_wrong_header_raises_naming_expected_and_found_columns(con, tmp_path):
    path = write_text(tmp_path / "wrong.csv", "time,type,product\n2019-10-01 00:00:00 UTC,view,1\n")
    with pytest.raises(ValueError) as error:
        ingest_file(con, path, "rees46", INGEST_TIME)

    message = str(error.value)
    assert "expected ['event_time', 'event_type', 'product_id'" in message
    assert "found ['time', 'type', 'product']" in message
    assert table_counts(con) == (0, 0, 0)


def test_a_failure_midway_writes_nothing(con, tmp_path, monkeypatch):
    path = write_text(
        tmp_path / "ok.csv", f"{REES46_HEADER}\n2019-10-01 00:00:00 UTC,view,1,,,,,7,s\nbad\n"
    )

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # IngestReport is built after every table was written: failing there must undo it all.
    monkeypatch.setattr(ingest, "IngestReport", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_file(con, path, "rees46", INGEST_TIME)
    assert table_counts(con) == (0, 0, 0)

    monkeypatch.undo()
    report = ingest_file(con, path, "rees46", INGEST_TIME)
    assert (report.skipped, report.accepted, report.quarantined) == (False, 1, 1)


# --- the public entry points ----------------------------------------------------------------


def test_ingest_paths_takes_files_and_directories_in_sorted_order(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    write_text(folder / "b.csv", f"{REES46_HEADER}\n2019-10-01 00:00:02 UTC,view,2,,,,,7,s\n")
    write_text(folder / "a.csv", f"{REES46_HEADER}\n2019-10-01 00:00:01 UTC,view,1,,,,,7,s\n")
    write_text(folder / "notes.txt", "not an event file")
    single = write_text(tmp_path / "c.csv", f"{REES46_HEADER}\n2019-10-01 UTC,view,3,,,,,7,s\n")
    warehouse = tmp_path / "wh" / "warehouse.duckdb"

    reports = ingest_paths(warehouse, [folder, single], "rees46")

    assert [Path(r.source_file).name for r in reports] == ["a.csv", "b.csv", "c.csv"]
    assert [(r.accepted, r.quarantined) for r in reports] == [(1, 0), (1, 0), (0, 1)]
    with duckdb.connect(str(warehouse), read_only=True) as check:
        assert check.sql("SELECT count(*) FROM raw.events").fetchall()[0] == (2,)
        ingested_at = check.sql("SELECT DISTINCT ingested_at FROM raw.ingested_files").fetchall()
    assert len(ingested_at) == 1  # one batch, one ingest time: now, in UTC
    now = datetime.now(UTC).replace(tzinfo=None)
    assert now - timedelta(minutes=5) < ingested_at[0][0] <= now


def test_unknown_source_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'kaggle'") as error:
        ingest_paths(tmp_path / "warehouse.duckdb", [tmp_path], "kaggle")
    assert str(SOURCES) in str(error.value)
    assert not (tmp_path / "warehouse.duckdb").exists()


def test_report_metadata_is_flat_and_complete():
    report = IngestReport(
        source="rees46",
        source_file="/data/x.csv",
        rows_read=10,
        accepted=6,
        quarantined=3,
        duplicates=1,
        skipped=False,
        quarantine_reasons={"missing user_id": 2, "malformed line": 1},
    )
    assert report.as_metadata() == {
        "source": "rees46",
        "source_file": "/data/x.csv",
        "skipped": False,
        "rows_read": 10,
        "accepted": 6,
        "quarantined": 3,
        "duplicates": 1,
        "quarantined: malformed line": 1,
        "quarantined: missing user_id": 2,
    }


# One line per kind of implausible value, in each CSV source's own layout: (fields, reason).
IMPLAUSIBLE = [
    ({"time": "1900-01-01 00:00:00"}, "implausible event_time: 1900-01-01 00:00:00 is before"),
    ({"time": "1970-01-01 00:00:00"}, "implausible event_time: 1970-01-01 00:00:00 is before"),
    ({"price": "1e308"}, "implausible price: 1e308"),
    ({"user": "   "}, "blank user_id"),
    ({"user": " 7700019 "}, "padded user_id:  7700019 "),
    ({"user": "77\x0000"}, "control characters in user_id"),
    ({"product": "\t5"}, "control characters in product_id"),
    ({"category": "c" * 1001}, "field too long: more than 1000 characters"),
    ({"category": "a\x07b"}, "control characters in a text field"),
]
COLUMNS_OF = {
    "rees46": {"time", "user", "product", "category", "price"},
    "retailrocket": {"time", "user", "product"},
    "taobao": {"time", "user", "product", "category"},
}
GOOD_FIELDS = {
    "time": "2019-10-01 00:00:00",
    "user": "7700019",
    "product": "5",
    "category": "c",
    "price": "1.5",
}


def implausible_file(source: str, path: Path) -> Path:
    """A good line, then one line per IMPLAUSIBLE case, in the layout of `source`."""

    def line(fields: dict[str, str]) -> str:
        f = {**GOOD_FIELDS, **fields}
        moment = datetime.fromisoformat(f["time"]).replace(tzinfo=UTC)
        if source == "rees46":
            return (
                f"{f['time']} UTC,view,{f['product']},1,{f['category']},brand,{f['price']},"
                f"{f['user']},s"
            )
        if source == "retailrocket":
            return f"{int(moment.timestamp() * 1000)},view,{f['product']},{f['user']}"
        return f"{f['user']},{f['product']},{f['category']},pv,{int(moment.timestamp())}"

    header = {
        "rees46": REES46_HEADER,
        "retailrocket": "timestamp,event,itemid,visitorid",
        "taobao": "user_id,item_id,category_id,behavior_type,timestamp",
    }[source]
    lines = [header, line({}), *(line(fields) for fields, _ in IMPLAUSIBLE)]
    return write_text(path, "\n".join(lines) + "\n")


@pytest.mark.parametrize("source", ["rees46", "retailrocket", "taobao"])
def test_implausible_values_are_quarantined_with_a_reason_in_every_source(con, tmp_path, source):
    report = ingest_file(con, implausible_file(source, tmp_path / f"{source}.csv"), source)

    assert_reconciles(con, report)
    stored = dict(con.sql("SELECT line_number, reason FROM raw.quarantine").fetchall())
    for number, (fields, reason) in enumerate(IMPLAUSIBLE, start=3):
        if not set(fields) <= COLUMNS_OF[source]:
            assert number not in stored  # the source has no such column: nothing to judge
            continue
        if source != "rees46" and fields.get("time", "").startswith("1900"):
            reason = "unparseable event_time: -"  # a negative epoch is no timestamp at all
        assert stored[number].startswith(reason), (number, fields, stored[number])
    # The good line is kept; no padded or blank id became a user.
    assert con.sql("SELECT DISTINCT user_id FROM raw.events").fetchall() == [("7700019",)]
    # The reason categories reported to Dagster never carry an id.
    assert not any("7700019" in category for category in report.quarantine_reasons)


def test_retailrocket_seconds_are_not_silently_read_as_1970(con, tmp_path):
    path = write_text(
        tmp_path / "seconds.csv",
        "timestamp,event,itemid,visitorid\n1433193132535,view,1,7\n1433193132,view,1,7\n",
    )
    report = ingest_file(con, path, "retailrocket", INGEST_TIME)

    assert (report.accepted, report.quarantined) == (1, 1)
    ((reason,),) = con.sql("SELECT reason FROM raw.quarantine").fetchall()
    assert reason.startswith("implausible event_time: 1970-01-17")
    assert "(1433193132 as read)" in reason


def test_the_plausibility_bounds_are_settings(con, tmp_path):
    path = write_text(
        tmp_path / "old.csv",
        f"{REES46_HEADER}\n1999-06-01 00:00:00 UTC,view,1,,,,250,7,s\n",
    )
    bounds = ingest.Plausibility(earliest_event_time=datetime(1990, 1, 1), max_price=100.0)

    report = ingest_file(con, path, "rees46", INGEST_TIME, bounds)

    assert report.quarantine_reasons == {"implausible price": 1}


def test_a_refused_file_does_not_stop_its_batch_and_is_tried_again(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    write_text(folder / "a.csv", f"{REES46_HEADER}\n2019-10-01 00:00:00 UTC,view,1,,,,,7,s\n")
    write_text(folder / "b.csv", "time;type;product\n2019-10-01;view;1\n")  # wrong delimiter
    write_text(folder / "c.csv", f"{REES46_HEADER}\n2019-10-01 00:00:01 UTC,view,1,,,,,8,s\n")
    warehouse = tmp_path / "warehouse.duckdb"

    reports = ingest_paths(warehouse, [folder], "rees46", INGEST_TIME)

    assert [r.accepted for r in reports] == [1, 0, 1]
    assert not reports[0].refused and reports[1].refused and not reports[2].refused
    assert "header lacks required column(s)" in reports[1].error
    assert reports[1].as_metadata()["error"] == reports[1].error
    with duckdb.connect(str(warehouse), read_only=True) as check:
        recorded = check.sql(
            "SELECT error IS NULL FROM raw.ingested_files ORDER BY source_file"
        ).fetchall()
    assert recorded == [(True,), (False,), (True,)]

    # Fixed and run again: the refused file is ingested (its error row does not count as done),
    # the others are skipped as already ingested.
    write_text(folder / "b.csv", f"{REES46_HEADER}\n2019-10-01 00:00:02 UTC,view,1,,,,,9,s\n")
    again = ingest_paths(warehouse, [folder], "rees46", INGEST_TIME)
    assert [(r.skipped, r.accepted) for r in again] == [(True, 0), (False, 1), (True, 0)]


def test_an_empty_file_is_called_empty(con, tmp_path):
    with pytest.raises(ValueError, match="empty file"):
        ingest_file(con, write_text(tmp_path / "empty.csv", "\ufeff\n"), "rees46", INGEST_TIME)


KILLED_INGEST = """
import os, signal, sys
from pathlib import Path
from ml.data import ingest

original = ingest._scalar


def scalar_then_die(con, sql, *args, **kwargs):
    value = original(con, sql, *args, **kwargs)
    if "INSERT INTO raw.events" in sql:  # the rows are in, the file's transaction is open
        os.kill(os.getpid(), signal.SIGKILL)
    return value


ingest._scalar = scalar_then_die
ingest.ingest_paths(Path(sys.argv[1]), [Path(sys.argv[2])], "rees46")
"""


def test_an_ingest_killed_before_its_commit_leaves_nothing_and_the_rerun_is_exact(tmp_path):
    rows = [
        f"2019-10-01 00:{i // 60:02d}:{i % 60:02d} UTC,view,{i},,,,1.5,{i % 97},s"
        for i in range(3000)
    ]
    rows += ["2019-10-01 00:00:00 UTC,click,1,,,,1.5,7,s", rows[5]]  # a bad row, a repeat
    path = write_text(tmp_path / "events.csv", "\n".join([REES46_HEADER, *rows]) + "\n")
    warehouse = tmp_path / "warehouse.duckdb"
    ingest_paths(
        warehouse,
        [write_text(tmp_path / "first.csv", REES46_HEADER + "\n" + rows[0] + "\n")],
        "rees46",
    )

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_INGEST, str(warehouse), str(path)], check=False
    )

    assert killed.returncode == -signal.SIGKILL
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM raw.events").fetchall() == [(1,)]
        assert con.sql("SELECT count(*) FROM raw.quarantine").fetchall() == [(0,)]
        assert con.sql("SELECT count(*) FROM raw.ingested_files").fetchall() == [(1,)]
    (report,) = ingest_paths(warehouse, [path], "rees46")
    assert (report.rows_read, report.accepted, report.quarantined, report.duplicates) == (
        3002,
        2999,
        1,
        2,
    )
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.sql("SELECT count(*), count(DISTINCT event_key) FROM raw.events").fetchall() == [
            (3000, 3000)
        ]
    assert ingest_paths(warehouse, [path], "rees46")[0].accepted == 0  # and only once
