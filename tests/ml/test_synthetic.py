"""Tests of the synthetic shop-traffic generator: the file contract, determinism, and realism.

The realism tests read the default demo shop (5,000 users, 30 days) once and check the
properties the model relies on: funnel order, bots, repeat buyers and a purchase signal.
"""

import re
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.data.synthetic import GenerationSummary, SyntheticConfig, generate_events, main

# The contract with the ingestion code, written out rather than imported from the module.
EXPECTED_SCHEMA = pa.schema(
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
SMALL = SyntheticConfig(n_users=2_500, days=10, seed=7)


def read_all(folder: Path) -> pa.Table:
    """All files of a folder, concatenated in file-name order."""
    return pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("*.parquet")))


def sorted_rows(folder: Path) -> pa.Table:
    """All events of a folder in a canonical order, to compare folders written differently."""
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{folder}/*.parquet') ORDER BY ALL"
    ).to_arrow_table()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationSummary]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate_events(out, SyntheticConfig())


@pytest.fixture(scope="module")
def con(demo: tuple[Path, GenerationSummary]) -> duckdb.DuckDBPyConnection:
    """The demo events as view ``e``, with ``t`` = days since day 0 as a number."""
    connection = duckdb.connect()
    connection.sql(
        f"""CREATE VIEW e AS SELECT *,
              epoch(event_time - TIMESTAMP '2025-09-01') / 86400.0 AS t
            FROM read_parquet('{demo[0]}/*.parquet')"""
    )
    return connection


def one(con: duckdb.DuckDBPyConnection, query: str) -> tuple:
    """The single row of a query."""
    (row,) = con.sql(query).fetchall()
    return row


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = generate_events(tmp_path / "a", SMALL)
    second = generate_events(tmp_path / "b", SMALL)
    assert first.n_events > 10_000
    assert [f.name for f in first.files] == [f.name for f in second.files]
    for a, b in zip(first.files, second.files, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_different_seeds_give_different_events(tmp_path: Path) -> None:
    generate_events(tmp_path / "a", SMALL)
    generate_events(tmp_path / "b", SyntheticConfig(n_users=2_500, days=10, seed=8))
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert not a.equals(b)
    shared_sessions = set(a["user_session"].to_pylist()) & set(b["user_session"].to_pylist())
    assert not shared_sessions


def test_chunk_size_does_not_change_events(tmp_path: Path) -> None:
    whole = generate_events(tmp_path / "whole", SMALL)
    chunked = generate_events(tmp_path / "chunked", SMALL, users_per_chunk=700)
    assert len(whole.files) == 1 and len(chunked.files) == 4
    assert read_all(tmp_path / "chunked").equals(read_all(tmp_path / "whole"))
    assert (chunked.n_events, chunked.n_users) == (whole.n_events, whole.n_users)


def test_next_day_continues_the_same_shop(tmp_path: Path) -> None:
    """Days [0, 11) equal days [0, 10) plus day 10 written later into the same folder."""
    shop = {"n_users": 2_500, "seed": 7}
    generate_events(tmp_path / "once", SyntheticConfig(days=11, **shop))
    generate_events(tmp_path / "nightly", SyntheticConfig(days=10, **shop))
    next_day = generate_events(tmp_path / "nightly", SyntheticConfig(days=1, start_day=10, **shop))
    assert next_day.n_events > 0
    assert sorted(p.name for p in (tmp_path / "nightly").iterdir()) == [
        "events_d000-d010_part0000.parquet",
        "events_d010-d011_part0000.parquet",
    ]
    assert sorted_rows(tmp_path / "nightly").equals(sorted_rows(tmp_path / "once"))


# ----------------------------------------------------------------------------- file contract


def test_schema_and_columns_follow_the_contract(demo: tuple[Path, GenerationSummary]) -> None:
    out, summary = demo
    assert summary.files and all(f.parent == out for f in summary.files)
    assert all(re.fullmatch(r"events_d000-d030_part\d{4}\.parquet", f.name) for f in summary.files)
    for path in summary.files:
        assert pq.read_schema(path).remove_metadata() == EXPECTED_SCHEMA
    table = read_all(out)
    assert table.num_rows == summary.n_events
    assert set(table["event_type"].to_pylist()) == {"view", "cart", "remove_from_cart", "purchase"}
    for column in ("event_time", "event_type", "product_id", "category_id", "price", "user_id"):
        assert table[column].null_count == 0, column
    codes = table["category_code"]
    assert 0 < codes.null_count < table.num_rows and table["brand"].null_count > 0
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", c) for c in set(codes.drop_null().to_pylist()))
    prices = table["price"].to_numpy()
    assert prices.min() >= 0 and (abs(prices * 100 - (prices * 100).round()) < 1e-6).all()
    assert table["user_id"].to_numpy().min() >= 500_000_000
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert all(uuid.fullmatch(s) for s in set(table["user_session"].to_pylist()[:5_000]))


def test_rows_sorted_without_duplicates(demo: tuple[Path, GenerationSummary]) -> None:
    for path in demo[1].files:
        table = pq.read_table(path)
        keys = list(zip(table["user_id"].to_pylist(), table["event_time"].to_pylist(), strict=True))
        assert keys == sorted(keys)
    files = f"read_parquet('{demo[0]}/*.parquet')"
    total, distinct = one(
        duckdb.connect(),
        f"""SELECT (SELECT count(*) FROM {files}),
                   (SELECT count(*) FROM (SELECT DISTINCT * FROM {files}))""",
    )
    assert total == distinct > 0


def test_events_stay_inside_the_day_range(tmp_path: Path, demo) -> None:
    summary = demo[1]
    assert summary.first_event >= datetime(2025, 9, 1)
    assert summary.last_event < datetime(2025, 10, 1)
    assert summary.last_event - summary.first_event > (datetime(2025, 9, 30) - datetime(2025, 9, 2))

    window = generate_events(tmp_path, SyntheticConfig(n_users=2_000, days=3, start_day=5))
    times = read_all(tmp_path)["event_time"].to_pylist()
    assert min(times) == window.first_event and max(times) == window.last_event
    assert datetime(2025, 9, 6) <= min(times) and max(times) < datetime(2025, 9, 9)
    assert window.n_users == len(set(read_all(tmp_path)["user_id"].to_pylist()))


# ----------------------------------------------------------------------------- realism


def test_weekly_buyers_are_one_to_five_percent_of_active_users(con) -> None:
    for week in range(4):
        active, buyers = one(
            con,
            f"""SELECT count(DISTINCT user_id),
                       count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase')
                FROM e WHERE t >= {7 * week} AND t < {7 * week + 7}""",
        )
        assert active > 1_000
        assert 0.01 <= buyers / active <= 0.05, (week, buyers, active)


def test_funnel_order(con) -> None:
    counts = dict(con.sql("SELECT event_type, count(*) FROM e GROUP BY 1").fetchall())
    assert counts["view"] > 10 * counts["cart"] > 0
    assert counts["cart"] > counts["purchase"] > 0 and counts["remove_from_cart"] > 0

    def share_preceded(kind: str, by: str) -> float:
        """Share of `kind` events with an earlier `by` event of the same user and product."""
        return one(
            con,
            f"""SELECT avg(EXISTS (SELECT 1 FROM e b WHERE b.user_id = a.user_id
                  AND b.product_id = a.product_id AND b.event_type = '{by}'
                  AND b.event_time <= a.event_time)::int)
                FROM e a WHERE a.event_type = '{kind}' AND a.t >= 3""",
        )[0]

    assert share_preceded("cart", "view") > 0.9
    assert share_preceded("remove_from_cart", "cart") > 0.98
    assert 0.7 < share_preceded("purchase", "cart") < 0.98  # mostly, but not always


def test_remove_cancels_the_cart(con) -> None:
    """Carts removed again are (almost) never bought; the others often are."""
    rates = dict(
        con.sql(
            """SELECT EXISTS (SELECT 1 FROM e r WHERE r.user_id = c.user_id
                   AND r.product_id = c.product_id AND r.event_type = 'remove_from_cart'
                   AND r.t > c.t AND r.t < c.t + 3) AS removed,
                 avg(EXISTS (SELECT 1 FROM e p WHERE p.user_id = c.user_id
                   AND p.product_id = c.product_id AND p.event_type = 'purchase'
                   AND p.t > c.t AND p.t < c.t + 3)::int)
               FROM e c WHERE c.event_type = 'cart' AND c.t < 27 GROUP BY 1"""
        ).fetchall()
    )
    assert rates[True] < 0.05 and rates[False] > 0.3


def test_bots_view_a_lot_and_never_buy(con) -> None:
    """Bot-like users: far more views than any buyer, and not a single cart or purchase."""
    per_user = """SELECT user_id, count(*) FILTER (WHERE event_type = 'view') AS views,
                         count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                         count(*) FILTER (WHERE event_type <> 'view') AS other
                  FROM e GROUP BY 1"""
    median_views, heaviest_buyer_views = one(
        con,
        f"SELECT median(views), max(views) FILTER (WHERE purchases > 0) FROM ({per_user})",
    )
    top_views, top_other = one(
        con, f"SELECT views, other FROM ({per_user}) ORDER BY views DESC LIMIT 1"
    )
    n_bots = one(
        con,
        f"""SELECT count(*) FROM ({per_user})
            WHERE other = 0 AND views > greatest(1.5 * {heaviest_buyer_views}, 1000)""",
    )[0]
    assert top_other == 0 and top_views > 50 * median_views
    assert n_bots >= 1


def test_repeat_buyers_exist(con) -> None:
    buyers, repeat = one(
        con,
        """SELECT count(*), count(*) FILTER (WHERE n_days >= 2) FROM (
             SELECT user_id, count(DISTINCT event_time::DATE) n_days FROM e
             WHERE event_type = 'purchase' GROUP BY 1)""",
    )
    assert repeat >= 20 and repeat / buyers > 0.1


def test_zipf_skew_and_daily_cycle(con) -> None:
    top_share = one(
        con,
        """SELECT sum(n) FILTER (WHERE rank <= 200) / sum(n) FROM (
             SELECT count(*) n, row_number() OVER (ORDER BY count(*) DESC) rank
             FROM e WHERE event_type = 'view' GROUP BY product_id)""",
    )[0]
    assert top_share > 0.15  # 1 % of the products get far more than 1 % of the views
    night, evening = one(
        con,
        """SELECT count(*) FILTER (WHERE hour(event_time) BETWEEN 1 AND 4),
                  count(*) FILTER (WHERE hour(event_time) BETWEEN 16 AND 19) FROM e""",
    )
    assert evening > 2 * night


def test_recent_carts_predict_purchases_in_the_next_week(con) -> None:
    """At daily cutoffs, users who carted in the last 2 days buy in the next 7 days more often
    than users who carted 4 to 9 days ago, who in turn buy more often than users without carts."""
    rates = {}
    for group, n, rate in con.sql(
        """WITH cutoffs AS (SELECT unnest(range(8, 23, 2)) AS cutoff),
           per_user AS (
             SELECT c.cutoff, e.user_id,
                    bool_or(event_type = 'cart' AND t >= cutoff - 2 AND t < cutoff) AS recent,
                    bool_or(event_type = 'cart' AND t >= cutoff - 9 AND t < cutoff - 4) AS old,
                    bool_or(event_type = 'purchase' AND t >= cutoff AND t < cutoff + 7) AS bought
             FROM e JOIN cutoffs c ON e.t < c.cutoff + 7
             GROUP BY 1, 2 HAVING min(t) < c.cutoff)
           SELECT CASE WHEN recent THEN 'recent' WHEN old THEN 'old' ELSE 'none' END,
                  count(*), avg(bought::int)
           FROM per_user GROUP BY 1"""
    ).fetchall():
        assert n >= 100, group
        rates[group] = rate
    assert rates["recent"] > 0.15
    assert rates["recent"] > 1.3 * rates["old"]
    assert rates["old"] > 3 * rates["none"]


# ----------------------------------------------------------------------------- sizing and CLI


@pytest.mark.parametrize("target", [10_000, 150_000])
def test_for_target_events_lands_within_20_percent(tmp_path: Path, target: int) -> None:
    config = SyntheticConfig.for_target_events(target, days=30, seed=3)
    assert (config.days, config.seed) == (30, 3)
    summary = generate_events(tmp_path, config)
    assert abs(summary.n_events - target) <= 0.2 * target


def test_cli_writes_files_and_prints_summary(tmp_path: Path, capsys) -> None:
    summary = main(["--out", str(tmp_path), "--users", "400", "--days", "2", "--seed", "5"])
    assert summary.n_events > 0 and summary.files
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["events_d000-d002_part0000.parquet"]
    assert f"{summary.n_events:,} events" in capsys.readouterr().out


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(n_users=0)
    with pytest.raises(ValueError):
        SyntheticConfig(start_day=-1)
    with pytest.raises(ValueError):
        SyntheticConfig(n_products=10, n_categories=20)
