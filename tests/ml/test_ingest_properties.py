"""Property-based tests of the row validator (hypothesis): whatever the rows of a REES46 file
hold, ingestion does not crash, the counts reconcile, and what it stores is plausible; rows that
are valid by construction, however odd their text, are stored exactly as written."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ml.data.ingest import IngestReport, ingest_file

INGEST_TIME = datetime(2024, 6, 1, 12, 0, 0)
HEADER = [
    "event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price",
    "user_id", "user_session",
]  # fmt: skip
EVENT_TYPES = ["view", "cart", "remove_from_cart", "purchase"]
FIRST_TIME = datetime(2019, 10, 1)
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Valid by construction: ids of letters (any script), digits and punctuation, no whitespace or
# control character; free text (category code, brand) with commas, quotes and inner spaces.
id_text = st.text(
    alphabet=st.one_of(st.characters(categories=["L", "Nd"]), st.sampled_from("-_.:/@#")),
    min_size=1,
    max_size=24,
)
free_text = st.text(
    alphabet=st.one_of(st.characters(categories=["L", "Nd"]), st.sampled_from(" ,\"'.;|-")),
    max_size=30,
).map(lambda s: s.strip())
valid_time = st.integers(0, 200 * 86_400).map(
    lambda s: (FIRST_TIME + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S UTC")
)
valid_price = st.one_of(st.just(""), st.integers(0, 10**8).map(lambda c: f"{c / 100:.2f}"))
valid_row = st.tuples(
    valid_time,
    st.sampled_from(EVENT_TYPES),
    id_text,
    st.one_of(st.just(""), st.integers(1, 10**12).map(str)),
    free_text,
    free_text,
    valid_price,
    id_text,
    st.one_of(st.just(""), id_text),
)

# Anything at all in any field (no line breaks: one row stays one line).
any_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"),
    max_size=40,
)
odd_time = st.one_of(
    valid_time,
    any_text,
    st.sampled_from(
        ["0001-01-01 00:00:00 UTC", "1970-01-01 00:00:00 UTC", "1900-01-01 00:00:00 UTC",
         "2031-01-01 00:00:00 UTC", "2019-02-30 00:00:00 UTC", "1433221332"]
    ),
)  # fmt: skip
odd_price = st.one_of(
    valid_price,
    any_text,
    st.sampled_from(["1e308", "-1", "nan", "inf", "-0", "1e7", "10000000.01", " 5"]),
)
odd_id = st.one_of(id_text, any_text, st.sampled_from(["", " ", " 7 ", "a\x00b", "\t7"]))
any_row = st.tuples(
    odd_time,
    st.one_of(st.sampled_from(EVENT_TYPES), any_text),
    odd_id,
    any_text,
    any_text,
    any_text,
    odd_price,
    odd_id,
    any_text,
)

ODD_FIELDS = [odd_time, any_text, odd_id, any_text, any_text, any_text, odd_price, odd_id, any_text]


@st.composite
def one_odd_field(draw: st.DrawFn) -> tuple[str, ...]:
    """A valid row with one field replaced by anything: each check meets its own cases."""
    row = list(draw(valid_row))
    position = draw(st.integers(0, len(row) - 1))
    row[position] = draw(ODD_FIELDS[position])
    return tuple(row)


def write_csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def ingest_rows(rows: list[tuple[str, ...]], folder: Path) -> tuple[IngestReport, list[tuple]]:
    """Writes `rows` as a REES46 file, ingests it into a new warehouse; the report, then the
    stored events (canonical fields, in line order)."""
    with duckdb.connect(str(folder / "w.duckdb")) as con:
        report = ingest_file(con, write_csv(folder / "e.csv", rows), "rees46", INGEST_TIME)
        assert con.sql("SELECT count(*) FROM raw.quarantine").fetchall() == [(report.quarantined,)]
        events = con.sql(
            "SELECT event_time, event_type, product_id, category_id, category_code, brand, "
            "price, user_id, user_session FROM raw.events ORDER BY line_number"
        ).fetchall()
    return report, events


GOOD = ("2019-10-01 00:00:00 UTC", "view", "p1", "", "", "", "1.50", "u1", "s1")
EDGES = [
    *((t, *GOOD[1:]) for t in ["0001-01-01 00:00:00 UTC", "1970-01-01 00:00:00 UTC",
                                "2031-01-01 00:00:00 UTC", "1433221332"]),
    *((*GOOD[:6], p, *GOOD[7:]) for p in ["1e308", "10000000.01", "-1", "nan", "inf"]),
    *((*GOOD[:7], u, GOOD[8]) for u in ["", " ", " u1 ", "u\x001", "\tu1"]),
    *((*GOOD[:2], p, *GOOD[3:]) for p in [" p1", "p\x7f1"]),
    (*GOOD[:5], "x" * 1001, *GOOD[6:]),
    (*GOOD[:4], "a\x00b", *GOOD[5:]),
]  # fmt: skip


@SETTINGS
@example(rows=[GOOD, *EDGES])
@given(rows=st.lists(st.one_of(any_row, one_odd_field(), valid_row), min_size=1, max_size=30))
def test_any_rows_reconcile_and_only_plausible_events_are_stored(
    rows: list[tuple[str, ...]], tmp_path_factory
) -> None:
    report, events = ingest_rows(rows, tmp_path_factory.mktemp("any"))

    assert report.rows_read == len(rows)
    assert report.rows_read == report.accepted + report.quarantined + report.duplicates
    assert sum(report.quarantine_reasons.values()) == report.quarantined
    assert len(events) == report.accepted
    for time, event_type, product, category, code, brand, price, user, session in events:
        assert datetime(2000, 1, 1) <= time <= INGEST_TIME
        assert event_type in EVENT_TYPES
        assert price is None or 0 <= price <= 1e7
        for identifier in (user, product):
            assert identifier and identifier == identifier.strip(" ")
            assert not any(ord(c) < 32 or ord(c) == 127 for c in identifier)
        for text in (product, category, code, brand, user, session):
            assert text is None or (
                len(text) <= 1000
                and not any(ord(c) < 32 and c not in "\t" or ord(c) == 127 for c in text)
            )


@SETTINGS
@given(rows=st.lists(valid_row, min_size=1, max_size=30))
def test_valid_rows_are_stored_exactly_as_written(
    rows: list[tuple[str, ...]], tmp_path_factory
) -> None:
    report, events = ingest_rows(rows, tmp_path_factory.mktemp("valid"))

    assert report.quarantined == 0, report.quarantine_reasons
    expected, seen = [], set()
    for time, event_type, product, category, code, brand, price, user, session in rows:
        event = (
            datetime.strptime(time, "%Y-%m-%d %H:%M:%S UTC"),
            event_type,
            product,
            category or None,
            code or None,
            brand or None,
            float(price) if price else None,
            user,
            session or None,
        )
        if event not in seen:  # an exact repeat is a duplicate, kept once
            seen.add(event)
            expected.append(event)
    assert events == expected
    assert report.duplicates == len(rows) - len(expected)
