{#-
  Activity per (user, bucket) with an event: everything the features need that adds up across
  buckets, and the user's state at the end of the bucket.
  Session statistics use session segments (the part of a session inside one bucket), so no
  session statistic ever reads an event at or after the cutoff that follows the bucket.

  The state at the end of bucket b comes from the user's events in buckets <= b only, so it is
  what every cutoff after b sees until the user's next active bucket (user_features joins it to
  each cutoff through the last active bucket before it):
  - first_event_us; last_event_us and last_event_type_code (two events at the same microsecond:
    the higher code); last_cart_us, last_remove_us, last_purchase_us (NULL before the first);
  - last_session_events, last_session_carts: the session of the last event, counted over all of
    its segments up to b (a session can run across cutoffs);
  - carts_since_last_purchase, removes_since_last_purchase: after the last purchase (all of
    them before the first purchase).
-#}
{%- set two_to_64 = '18446744073709551616::hugeint' -%}
{%- set two_to_32 = '4294967296::hugeint' -%}

with events as not materialized (

    -- Read by four CTEs: inlined, each scans only its columns (DuckDB would copy it all once).
    select * from {{ ref('int_events') }}

),

session_segments as (

    select
        user_id,
        bucket,
        session_id,
        count(*) as n_events,
        count(*) filter (where is_cart) as n_carts,
        (max(event_us) - min(event_us)) / 1e6 as duration_seconds,
        max(event_us) as last_event_us,
        bool_or(is_cart) as has_cart_add,
        bool_or(is_purchase) as has_purchase
    from events
    group by user_id, bucket, session_id

),

sessions_through_bucket as (

    -- Each session's events and cart adds from its start to the end of each of its buckets.
    select
        *,
        sum(n_events) over by_session as session_events,
        sum(n_carts) over by_session as session_carts
    from session_segments
    window by_session as (
        partition by user_id, session_id order by bucket
        rows between unbounded preceding and current row
    )

),

segments_per_bucket as (

    select
        user_id,
        bucket,
        count(*) as n_session_segments,
        sum(n_events) as segment_events_sum,
        sum(duration_seconds) as segment_duration_sum,
        count(*) filter (where has_cart_add) as segments_with_cart,
        count(*) filter (where has_cart_add and not has_purchase) as segments_abandoned,
        -- The session of the bucket's last event (a tie: the one with more events), its two
        -- counts riding behind its last event time in one HUGEINT maximum (a third of the cost
        -- of a struct): time * 2^64 + events * 2^32 + carts, counts far below 2^32.
        max(
            last_event_us::hugeint * {{ two_to_64 }} + session_events * {{ two_to_32 }}
            + session_carts
        ) & ({{ two_to_64 }} - 1) as last_session
    from sessions_through_bucket
    group by user_id, bucket

),

events_per_bucket as (

    select
        user_id,
        bucket,
        count(*) as n_events,
        count(*) filter (where is_view) as n_views,
        count(*) filter (where is_cart) as n_carts,
        count(*) filter (where is_remove) as n_removes,
        count(*) filter (where is_purchase) as n_purchases,
        count(*) filter (where is_wishlist) as n_wishlists,
        sum(price) filter (where is_view) as view_price_sum,
        count(price) filter (where is_view) as view_price_count,
        max(price) filter (where is_view) as view_price_max,
        sum(price) filter (where is_cart) as cart_price_sum,
        count(price) filter (where is_cart) as cart_price_count,
        max(price) filter (where is_cart) as cart_price_max,
        -- The last event's time and type in one maximum: codes are 1..5, below 8.
        max(event_us * 8 + event_type_code) as last_event_key,
        min(event_us) as bucket_first_event_us,
        max(event_us) filter (where is_cart) as bucket_last_cart_us,
        max(event_us) filter (where is_remove) as bucket_last_remove_us,
        max(event_us) filter (where is_purchase) as bucket_last_purchase_us
    from events
    group by user_id, bucket

),

after_last_purchase as (

    -- Cart adds and removes later than the bucket's last purchase, in buckets with a purchase.
    select
        events.user_id,
        events.bucket,
        count(*) filter (where events.is_cart) as carts_after_purchase,
        count(*) filter (where events.is_remove) as removes_after_purchase
    from events
    inner join events_per_bucket as purchase_buckets
        on purchase_buckets.user_id = events.user_id
        and purchase_buckets.bucket = events.bucket
    where (events.is_cart or events.is_remove)
        and events.event_us > purchase_buckets.bucket_last_purchase_us
    group by events.user_id, events.bucket

),

state_inputs as (

    -- Only what the running state needs: a window pass costs with the width of its rows.
    select
        events_per_bucket.user_id,
        events_per_bucket.bucket,
        events_per_bucket.bucket_first_event_us,
        events_per_bucket.bucket_last_cart_us,
        events_per_bucket.bucket_last_remove_us,
        events_per_bucket.bucket_last_purchase_us,
        events_per_bucket.n_carts,
        events_per_bucket.n_removes,
        coalesce(after_last_purchase.carts_after_purchase, 0) as carts_after_purchase,
        coalesce(after_last_purchase.removes_after_purchase, 0) as removes_after_purchase
    from events_per_bucket
    left join after_last_purchase
        on after_last_purchase.user_id = events_per_bucket.user_id
        and after_last_purchase.bucket = events_per_bucket.bucket

),

running_state as (

    -- Running over the user's buckets up to and including this one.
    select
        user_id,
        bucket,
        carts_after_purchase,
        removes_after_purchase,
        min(bucket_first_event_us) over by_user as first_event_us,
        max(bucket_last_cart_us) over by_user as last_cart_us,
        max(bucket_last_remove_us) over by_user as last_remove_us,
        max(bucket_last_purchase_us) over by_user as last_purchase_us,
        sum(n_carts) over by_user as carts_through_bucket,
        sum(n_removes) over by_user as removes_through_bucket
    from state_inputs
    window by_user as (
        partition by user_id order by bucket rows between unbounded preceding and current row
    )

),

state as (

    -- Cart adds and removes since the last purchase: those through this bucket less those up
    -- to the last purchase (in the bucket of the last purchase: through it less those after).
    select
        running_state.user_id,
        running_state.bucket,
        running_state.first_event_us,
        running_state.last_cart_us,
        running_state.last_remove_us,
        running_state.last_purchase_us,
        running_state.carts_through_bucket - coalesce(
            purchase_bucket.carts_through_bucket - purchase_bucket.carts_after_purchase, 0
        ) as carts_since_last_purchase,
        running_state.removes_through_bucket - coalesce(
            purchase_bucket.removes_through_bucket - purchase_bucket.removes_after_purchase, 0
        ) as removes_since_last_purchase
    from running_state
    left join running_state as purchase_bucket
        on purchase_bucket.user_id = running_state.user_id
        and purchase_bucket.bucket = {{ bucket_of('running_state.last_purchase_us') }}

)

select
    events_per_bucket.* exclude (
        last_event_key,
        bucket_first_event_us,
        bucket_last_cart_us,
        bucket_last_remove_us,
        bucket_last_purchase_us
    ),
    segments_per_bucket.* exclude (user_id, bucket, last_session),
    state.* exclude (user_id, bucket),
    events_per_bucket.last_event_key // 8 as last_event_us,
    (events_per_bucket.last_event_key % 8)::utinyint as last_event_type_code,
    segments_per_bucket.last_session >> 32 as last_session_events,
    segments_per_bucket.last_session & ({{ two_to_32 }} - 1) as last_session_carts
from events_per_bucket
inner join segments_per_bucket
    on segments_per_bucket.user_id = events_per_bucket.user_id
    and segments_per_bucket.bucket = events_per_bucket.bucket
inner join state
    on state.user_id = events_per_bucket.user_id
    and state.bucket = events_per_bucket.bucket
