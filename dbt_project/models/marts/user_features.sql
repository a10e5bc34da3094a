{#-
  Point-in-time features: one row per (user, cutoff) for users with an event in
  [cutoff - lookback, cutoff). Row k of the grid holds bucket k - 1, the last bucket before
  cutoff k, and every window frame ends at the current row, so no feature can read an event at
  or after its cutoff.
-#}
{%- set one_day = buckets_in('1 day', is_var=false) | int -%}
{%- set seven_days = buckets_in('7 days', is_var=false) | int -%}
{%- set lookback = buckets_in('lookback') | int -%}

with grid_activity as (

    select
        grid.user_id,
        grid.cutoff_index,
        buckets.* exclude (user_id, bucket)
    from {{ ref('int_user_cutoff_grid') }} as grid
    left join {{ ref('int_user_buckets') }} as buckets
        on buckets.user_id = grid.user_id
        and buckets.bucket = grid.cutoff_index - 1

),

windowed as (

    select
        user_id,
        cutoff_index,

        {%- for window_name in ['1d', '7d', 'lookback'] %}
        coalesce(sum(n_events) over last_{{ window_name }}, 0) as events_{{ window_name }},
        coalesce(sum(n_views) over last_{{ window_name }}, 0) as views_{{ window_name }},
        coalesce(sum(n_carts) over last_{{ window_name }}, 0) as carts_{{ window_name }},
        coalesce(sum(n_removes) over last_{{ window_name }}, 0) as removes_{{ window_name }},
        coalesce(sum(n_purchases) over last_{{ window_name }}, 0) as purchases_{{ window_name }},
        coalesce(sum(n_wishlists) over last_{{ window_name }}, 0) as wishlists_{{ window_name }},
        {%- endfor %}

        coalesce(sum(n_events) over previous_7d, 0) as events_previous_7d,
        sum(view_price_sum) over last_lookback as view_price_sum,
        sum(view_price_count) over last_lookback as view_price_count,
        max(view_price_max) over last_lookback as max_view_price,
        sum(cart_price_sum) over last_lookback as cart_price_sum,
        sum(cart_price_count) over last_lookback as cart_price_count,
        max(cart_price_max) over last_lookback as max_cart_price,
        sum(n_session_segments) over last_lookback as session_segments,
        sum(segment_events_sum) over last_lookback as segment_events_sum,
        sum(segment_duration_sum) over last_lookback as segment_duration_sum,
        sum(segments_with_cart) over last_lookback as segments_with_cart,
        sum(segments_abandoned) over last_lookback as segments_abandoned,
        max(last_event_us) over history as last_event_us,
        max(last_cart_us) over history as last_cart_us,
        max(last_purchase_us) over history as last_purchase_us
    from grid_activity
    window
        by_user as (partition by user_id order by cutoff_index),
        last_1d as (by_user rows between {{ one_day - 1 }} preceding and current row),
        last_7d as (by_user rows between {{ seven_days - 1 }} preceding and current row),
        last_lookback as (by_user rows between {{ lookback - 1 }} preceding and current row),
        previous_7d as (
            by_user rows between {{ 2 * seven_days - 1 }} preceding and {{ seven_days }} preceding
        ),
        history as (by_user rows between unbounded preceding and current row)

),

cutoffs as (

    select cutoff_index, cutoff_time, epoch_us(cutoff_time) as cutoff_us
    from {{ ref('cutoffs') }}

)

select
    windowed.user_id,
    cutoffs.cutoff_time,

    {%- for window_name in ['1d', '7d', 'lookback'] %}
    windowed.events_{{ window_name }},
    windowed.views_{{ window_name }},
    windowed.carts_{{ window_name }},
    windowed.removes_{{ window_name }},
    windowed.purchases_{{ window_name }},
    windowed.wishlists_{{ window_name }},
    {%- endfor %}

    windowed.events_previous_7d,
    distinct_counts.sessions_lookback,
    distinct_counts.distinct_products_lookback,
    distinct_counts.distinct_categories_lookback,
    distinct_counts.distinct_brands_lookback,
    distinct_counts.active_days_lookback,

    (cutoffs.cutoff_us - windowed.last_event_us) / 3.6e9 as hours_since_last_event,
    (cutoffs.cutoff_us - windowed.last_cart_us) / 3.6e9 as hours_since_last_cart,
    (cutoffs.cutoff_us - windowed.last_purchase_us) / 3.6e9 as hours_since_last_purchase,

    -- Capped at 1: some shops record cart adds without a view, or purchases without a cart.
    least(windowed.carts_lookback / nullif(windowed.views_lookback, 0), 1.0)
        as view_to_cart_ratio,
    least(windowed.purchases_lookback / nullif(windowed.carts_lookback, 0), 1.0)
        as cart_to_purchase_ratio,
    windowed.segments_abandoned / nullif(windowed.segments_with_cart, 0)
        as cart_abandonment_rate,

    windowed.view_price_sum / nullif(windowed.view_price_count, 0) as avg_view_price,
    windowed.max_view_price,
    windowed.cart_price_sum / nullif(windowed.cart_price_count, 0) as avg_cart_price,
    windowed.max_cart_price,

    windowed.segment_duration_sum / nullif(windowed.session_segments, 0)
        as avg_session_seconds,
    windowed.segment_events_sum / nullif(windowed.session_segments, 0)
        as avg_session_events,

    -- -1 (all activity in the 7 days before) .. +1 (all activity in the last 7 days).
    coalesce(
        (windowed.events_7d - windowed.events_previous_7d)
        / nullif(windowed.events_7d + windowed.events_previous_7d, 0),
        0.0
    ) as activity_trend_7d

from windowed
inner join cutoffs using (cutoff_index)
inner join {{ ref('int_user_distinct_counts') }} as distinct_counts
    using (user_id, cutoff_index)
where windowed.events_lookback > 0
