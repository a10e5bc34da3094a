"""Features, labels and sequences on a handful of events whose answers are computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.data.ingest import ingest_paths
from tests.conftest import query, run_dbt

HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
# User 1: two sessions before the 09-03 cutoff (one crossing no cutoff), a cart, then a purchase
# on 09-05. User 2: one view on 09-01, nothing after. User 4 (for the order of events): session
# s6 runs across the 09-04 cutoff with cart adds before and after a purchase and a remove last;
# on 09-06 another purchase and a view in session s7. Cutoffs fall at midnight (UTC); the newest
# event (u3's) is at 09-11 00:00, so label windows ending later than that are incomplete.
EVENTS = """\
2025-09-01 10:00:00 UTC,view,p1,c1,shoes.sneakers,nike,50.00,u1,s1
2025-09-01 10:10:00 UTC,view,p2,c1,shoes.sneakers,adidas,70.00,u1,s1
2025-09-01 10:20:00 UTC,cart,p2,c1,shoes.sneakers,adidas,70.00,u1,s1
2025-09-02 18:00:00 UTC,view,p3,c2,bags.backpack,nike,30.00,u1,s2
2025-09-02 18:30:00 UTC,remove_from_cart,p2,c1,shoes.sneakers,adidas,70.00,u1,s2
2025-09-01 12:00:00 UTC,view,p1,c1,shoes.sneakers,nike,50.00,u2,s3
2025-09-05 09:00:00 UTC,purchase,p3,c2,bags.backpack,nike,30.00,u1,s4
2025-09-11 00:00:00 UTC,view,p9,c2,bags.backpack,nike,10.00,u3,s5
2025-09-03 23:50:00 UTC,view,p5,c3,home.lamp,ikea,20.00,u4,s6
2025-09-03 23:55:00 UTC,cart,p5,c3,home.lamp,ikea,20.00,u4,s6
2025-09-04 00:05:00 UTC,cart,p6,c3,home.lamp,ikea,25.00,u4,s6
2025-09-04 00:10:00 UTC,purchase,p5,c3,home.lamp,ikea,20.00,u4,s6
2025-09-04 00:20:00 UTC,cart,p7,c3,home.lamp,ikea,15.00,u4,s6
2025-09-04 00:30:00 UTC,cart,p8,c3,home.lamp,ikea,18.00,u4,s6
2025-09-04 00:40:00 UTC,remove_from_cart,p7,c3,home.lamp,ikea,15.00,u4,s6
2025-09-06 10:00:00 UTC,purchase,p6,c3,home.lamp,ikea,25.00,u4,s7
2025-09-06 10:05:00 UTC,view,p8,c3,home.lamp,ikea,18.00,u4,s7
"""


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hand")
    events = folder / "events.csv"
    events.write_text(HEADER + "\n" + EVENTS)
    warehouse = folder / "warehouse.duckdb"
    ingest_paths(warehouse, [events], "rees46")
    run_dbt(warehouse, "build")  # includes every dbt data test and unit test
    return warehouse


def features_at(warehouse: Path, raw_user: str, cutoff: str) -> dict:
    """Features of one raw user at one cutoff (the test maps raw ids to pseudonyms via raw+stg)."""
    rows = query(
        warehouse,
        f"""
        select f.* from marts.user_features f
        where f.cutoff_time = '{cutoff}' and f.user_id = (
            select distinct s.user_id from staging.stg_events s
            join raw.events r on r.event_time = s.event_time and r.product_id = s.product_id
            where r.user_id = '{raw_user}')
        """,
    )
    columns = [r[0] for r in query(warehouse, "describe marts.user_features")]
    assert len(rows) == 1, f"expected one row for {raw_user} at {cutoff}, got {len(rows)}"
    return dict(zip(columns, rows[0], strict=True))


def test_cutoffs_span_the_data_and_flag_incomplete_horizons(warehouse: Path) -> None:
    cutoffs = query(
        warehouse,
        "select cutoff_time::date::varchar, horizon_complete from marts.cutoffs order by 1",
    )
    # First cutoff after the first event (09-01 10:00) .. first cutoff after the last (09-11).
    assert cutoffs[0] == ("2025-09-02", True)
    assert cutoffs[-1] == ("2025-09-12", False)
    assert len(cutoffs) == 11
    # A 7-day horizon is complete when cutoff + 7 days <= the newest event (09-11 00:00), not
    # the last cutoff (09-12): nothing says the data is complete after its newest event.
    assert dict(cutoffs)["2025-09-04"] is True and dict(cutoffs)["2025-09-05"] is False


def test_days_of_history_count_the_data_before_each_cutoff(warehouse: Path) -> None:
    days = dict(
        query(
            warehouse,
            "select cutoff_time::date::varchar, days_of_history from marts.cutoffs order by 1",
        )
    )
    # The data starts at 09-01 10:00: 14 hours before the 09-02 cutoff, 10 days more by 09-12
    # (the 30-day lookback caps nothing here; test_time_grid.py shows the cap).
    assert days["2025-09-02"] == pytest.approx(14 / 24)
    assert days["2025-09-12"] == pytest.approx(10 + 14 / 24)
    # The same figure on every feature row of a cutoff.
    per_row = query(
        warehouse,
        "select count(distinct days_of_history), min(days_of_history) from marts.user_features "
        "where cutoff_time = '2025-09-06'",
    )
    assert per_row == [(1, pytest.approx(4 + 14 / 24))]


def test_features_count_only_events_before_the_cutoff(warehouse: Path) -> None:
    at_0903 = features_at(warehouse, "u1", "2025-09-03 00:00:00")
    assert (at_0903["views_lookback"], at_0903["carts_lookback"]) == (3, 1)
    assert (at_0903["removes_lookback"], at_0903["purchases_lookback"]) == (1, 0)
    assert (at_0903["events_1d"], at_0903["views_1d"], at_0903["removes_1d"]) == (2, 1, 1)
    assert at_0903["sessions_lookback"] == 2
    assert at_0903["distinct_products_lookback"] == 3
    assert at_0903["distinct_categories_lookback"] == 2
    assert at_0903["distinct_brands_lookback"] == 2
    assert at_0903["active_days_lookback"] == 2
    assert at_0903["hours_since_last_event"] == pytest.approx(5.5)
    assert at_0903["hours_since_last_cart"] == pytest.approx(24 + 13 + 40 / 60)
    assert at_0903["hours_since_last_purchase"] is None
    assert at_0903["view_to_cart_ratio"] == pytest.approx(1 / 3)
    assert at_0903["cart_abandonment_rate"] == pytest.approx(1.0)
    assert at_0903["avg_view_price"] == pytest.approx(50.0)
    assert at_0903["max_cart_price"] == pytest.approx(70.0)
    assert at_0903["avg_session_events"] == pytest.approx(2.5)
    assert at_0903["avg_session_seconds"] == pytest.approx((20 * 60 + 30 * 60) / 2)

    # The purchase on 09-05 is visible from the 09-06 cutoff on, never before.
    assert features_at(warehouse, "u1", "2025-09-05 00:00:00")["purchases_lookback"] == 0
    at_0906 = features_at(warehouse, "u1", "2025-09-06 00:00:00")
    assert at_0906["purchases_lookback"] == 1
    assert at_0906["cart_to_purchase_ratio"] == pytest.approx(1.0)
    assert at_0906["hours_since_last_purchase"] == pytest.approx(15.0)


VIEW, CART, REMOVE, PURCHASE = 1, 2, 3, 4  # the event_types seed codes of last_event_type


def test_order_aware_features_follow_the_order_of_events(warehouse: Path) -> None:
    # u1 at 09-03: viewed, carted (09-01 10:20), then removed it (09-02 18:30) in session s2.
    at_0903 = features_at(warehouse, "u1", "2025-09-03 00:00:00")
    assert at_0903["last_event_type"] == REMOVE
    assert (at_0903["carts_since_last_purchase"], at_0903["removes_since_last_purchase"]) == (1, 1)
    assert at_0903["has_open_cart"] == 0
    assert at_0903["last_cart_removed"] == 1
    assert at_0903["seconds_since_last_remove"] == pytest.approx(5.5 * 3600)
    assert (at_0903["last_session_events"], at_0903["last_session_carts"]) == (2, 0)
    assert at_0903["hours_since_first_event"] == pytest.approx(14 + 24)
    # u1 at 09-06: the purchase (09-05 09:00, session s4) came last; the cart was before it.
    at_0906 = features_at(warehouse, "u1", "2025-09-06 00:00:00")
    assert at_0906["last_event_type"] == PURCHASE
    assert (at_0906["carts_since_last_purchase"], at_0906["removes_since_last_purchase"]) == (0, 0)
    assert (at_0906["has_open_cart"], at_0906["last_cart_removed"]) == (0, 1)
    assert at_0906["seconds_since_last_remove"] == pytest.approx((3 * 24 + 5.5) * 3600)
    assert (at_0906["last_session_events"], at_0906["last_session_carts"]) == (1, 0)
    # u2 never carted nor removed anything.
    u2 = features_at(warehouse, "u2", "2025-09-02 00:00:00")
    assert (u2["last_event_type"], u2["has_open_cart"], u2["last_cart_removed"]) == (VIEW, 0, 0)
    assert u2["seconds_since_last_remove"] is None
    assert (u2["carts_since_last_purchase"], u2["removes_since_last_purchase"]) == (0, 0)


def test_order_aware_features_across_a_cutoff_and_a_purchase(warehouse: Path) -> None:
    # u4 at 09-04 sees only 09-03 23:50 (view) and 23:55 (cart): no purchase yet, the cart open.
    at_0904 = features_at(warehouse, "u4", "2025-09-04 00:00:00")
    assert at_0904["last_event_type"] == CART
    assert (at_0904["carts_since_last_purchase"], at_0904["removes_since_last_purchase"]) == (1, 0)
    assert (at_0904["has_open_cart"], at_0904["last_cart_removed"]) == (1, 0)
    assert at_0904["seconds_since_last_remove"] is None
    # Session s6 so far: only its two events before the cutoff.
    assert (at_0904["last_session_events"], at_0904["last_session_carts"]) == (2, 1)
    assert at_0904["hours_since_first_event"] == pytest.approx(10 / 60)
    # At 09-05: cart 00:05, purchase 00:10, carts 00:20 and 00:30, remove 00:40. Since the
    # purchase: 2 cart adds, 1 remove, so a cart is still open; the last cart add (00:30) was
    # followed by a remove (of another product: the rule does not match products).
    at_0905 = features_at(warehouse, "u4", "2025-09-05 00:00:00")
    assert at_0905["last_event_type"] == REMOVE
    assert (at_0905["carts_since_last_purchase"], at_0905["removes_since_last_purchase"]) == (2, 1)
    assert (at_0905["has_open_cart"], at_0905["last_cart_removed"]) == (1, 1)
    assert at_0905["seconds_since_last_remove"] == pytest.approx((23 * 60 + 20) * 60)
    # s6 across the cutoff: 2 events (1 cart) on 09-03 and 5 (3 carts) on 09-04.
    assert (at_0905["last_session_events"], at_0905["last_session_carts"]) == (7, 4)
    # 09-06: no new event, the same state a day older.
    at_0906 = features_at(warehouse, "u4", "2025-09-06 00:00:00")
    assert (at_0906["carts_since_last_purchase"], at_0906["has_open_cart"]) == (2, 1)
    assert (at_0906["last_session_events"], at_0906["last_session_carts"]) == (7, 4)
    assert at_0906["seconds_since_last_remove"] == pytest.approx((47 * 60 + 20) * 60)
    # 09-07: a purchase and a view in session s7 on 09-06 close the cart.
    at_0907 = features_at(warehouse, "u4", "2025-09-07 00:00:00")
    assert at_0907["last_event_type"] == VIEW
    assert (at_0907["carts_since_last_purchase"], at_0907["removes_since_last_purchase"]) == (0, 0)
    assert (at_0907["has_open_cart"], at_0907["last_cart_removed"]) == (0, 1)
    assert (at_0907["last_session_events"], at_0907["last_session_carts"]) == (2, 0)
    assert at_0907["hours_since_first_event"] == pytest.approx(3 * 24 + 10 / 60)


def test_labels_match_the_hand_computed_purchases(warehouse: Path) -> None:
    labels = query(
        warehouse,
        """
        select r.user_id, l.cutoff_time::date::varchar, l.purchased, l.horizon_complete
        from marts.labels l
        join (select distinct s.user_id as pseudo, r.user_id from staging.stg_events s
              join raw.events r on r.event_time = s.event_time and r.product_id = s.product_id) r
          on r.pseudo = l.user_id
        order by 1, 2
        """,
    )
    by_key = {(user, day): (purchased, complete) for user, day, purchased, complete in labels}
    # u1 buys on 09-05: the label is true for cutoffs 09-02 .. 09-05, false from 09-06; the
    # window from 09-05 ends on 09-12, after the newest event (09-11 00:00): not complete.
    for day in ("2025-09-02", "2025-09-03", "2025-09-04"):
        assert by_key[("u1", day)] == (True, True)
    assert by_key[("u1", "2025-09-05")] == (True, False)
    assert by_key[("u1", "2025-09-06")] == (False, False)
    # u2 never buys; it is active (in the lookback) at every cutoff from 09-02 on.
    assert by_key[("u2", "2025-09-02")] == (False, True)
    # u3's only event is exactly at the 09-11 cutoff: it belongs after it, not before.
    assert ("u3", "2025-09-11") not in by_key
    assert ("u3", "2025-09-12") in by_key


def test_category_labels_list_the_categories_touched_in_the_label_window(warehouse: Path) -> None:
    names = dict(query(warehouse, "select category_idx, category_name from marts.categories"))
    assert sorted(names.values()) == ["bags.backpack", "home.lamp", "shoes.sneakers"]
    rows = query(
        warehouse,
        """
        select r.user_id, l.cutoff_time::date::varchar, l.horizon_category_indexes,
            l.horizon_complete
        from marts.category_labels l
        join (select distinct s.user_id as pseudo, r.user_id from staging.stg_events s
              join raw.events r on r.event_time = s.event_time and r.product_id = s.product_id) r
          on r.pseudo = l.user_id
        """,
    )
    by_key = {
        (user, day): ([names[i] for i in indexes], complete)
        for user, day, indexes, complete in rows
    }
    # u1 from 09-02: a backpack viewed at 18:00, the sneakers removed at 18:30 (any event type
    # counts), the backpack bought on 09-05: each category once, in order of first touch.
    assert by_key[("u1", "2025-09-02")] == (["bags.backpack", "shoes.sneakers"], True)
    # From 09-03 only the purchase of 09-05 is ahead; from 09-06 nothing is.
    assert by_key[("u1", "2025-09-03")] == (["bags.backpack"], True)
    assert by_key[("u1", "2025-09-06")] == ([], False)
    # u4's lamp events at 23:50 and 23:55 on 09-03 are before the 09-04 cutoff, those at 00:05
    # and later after it.
    assert by_key[("u4", "2025-09-04")][0] == ["home.lamp"]
    assert by_key[("u2", "2025-09-02")] == ([], True)
    # One row per user_features row, as the labels.
    (n_labels, n_category_labels) = query(
        warehouse,
        "select (select count(*) from marts.labels), (select count(*) from marts.category_labels)",
    )[0]
    assert n_labels == n_category_labels


def test_sequences_hold_the_last_events_before_the_cutoff(warehouse: Path) -> None:
    (row,) = query(
        warehouse,
        """
        select q.sequence_length, q.event_type_codes, q.prices, q.seconds_before_cutoff
        from marts.user_sequences q join marts.user_features f using (user_id, cutoff_time)
        where q.cutoff_time = '2025-09-03' and f.views_lookback = 3
        """,
    )
    length, types, prices, seconds = row
    assert length == 5
    assert types == [1, 1, 2, 1, 3]  # view, view, cart, view, remove_from_cart; oldest first
    assert prices == [50.0, 70.0, 70.0, 30.0, 70.0]
    assert seconds[-1] == pytest.approx(5.5 * 3600) and seconds == sorted(seconds, reverse=True)


def test_hourly_cutoffs_work_on_the_rees46_sample(tmp_path: Path, shared_datasets: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    ingest_paths(warehouse, [shared_datasets / "rees46_oct2019_head" / "events.csv"], "rees46")
    hourly = {"cutoff_step": "1 hour", "lookback": "2 hours", "horizon": "1 hour"}
    run_dbt(warehouse, "build", dbt_vars=hourly)
    (n_cutoffs, n_features, n_labels, n_sequences) = query(
        warehouse,
        "select (select count(*) from marts.cutoffs), (select count(*) from marts.user_features),"
        " (select count(*) from marts.labels), (select count(*) from marts.user_sequences)",
    )[0]
    assert n_cutoffs == 3  # 01:00, 02:00, 03:00 for events from 00:00 to 02:50
    assert n_features > 1000 and n_labels == n_features == n_sequences
    (positives,) = query(warehouse, "select count(*) from marts.labels where purchased")[0]
    assert positives > 0
