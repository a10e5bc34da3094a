{#-
  Activity per (user, bucket): everything the features need that adds up across buckets.
  Session statistics use session segments (the part of a session inside one bucket), so no
  session statistic ever reads an event at or after the cutoff that follows the bucket.
-#}

with events as (

    select * from {{ ref('int_events') }}

),

session_segments as (

    select
        user_id,
        bucket,
        session_id,
        count(*) as n_events,
        (max(event_us) - min(event_us)) / 1e6 as duration_seconds,
        bool_or(event_type_code = 2) as has_cart_add,
        bool_or(event_type_code = 4) as has_purchase
    from events
    group by user_id, bucket, session_id

),

segments_per_bucket as (

    select
        user_id,
        bucket,
        count(*) as n_session_segments,
        sum(n_events) as segment_events_sum,
        sum(duration_seconds) as segment_duration_sum,
        count(*) filter (where has_cart_add) as segments_with_cart,
        count(*) filter (where has_cart_add and not has_purchase) as segments_abandoned
    from session_segments
    group by user_id, bucket

),

events_per_bucket as (

    select
        user_id,
        bucket,
        count(*) as n_events,
        count(*) filter (where event_type_code = 1) as n_views,
        count(*) filter (where event_type_code = 2) as n_carts,
        count(*) filter (where event_type_code = 3) as n_removes,
        count(*) filter (where event_type_code = 4) as n_purchases,
        count(*) filter (where event_type_code = 5) as n_wishlists,
        sum(price) filter (where event_type_code = 1) as view_price_sum,
        count(price) filter (where event_type_code = 1) as view_price_count,
        max(price) filter (where event_type_code = 1) as view_price_max,
        sum(price) filter (where event_type_code = 2) as cart_price_sum,
        count(price) filter (where event_type_code = 2) as cart_price_count,
        max(price) filter (where event_type_code = 2) as cart_price_max,
        max(event_us) as last_event_us,
        max(event_us) filter (where event_type_code = 2) as last_cart_us,
        max(event_us) filter (where event_type_code = 4) as last_purchase_us
    from events
    group by user_id, bucket

)

select
    events_per_bucket.*,
    segments_per_bucket.* exclude (user_id, bucket)
from events_per_bucket
inner join segments_per_bucket using (user_id, bucket)
