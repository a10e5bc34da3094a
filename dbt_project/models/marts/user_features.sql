{#-
  Point-in-time features: one row per (user, cutoff) for users with an event in
  [cutoff - lookback, cutoff). Row k of the grid holds bucket k - 1, the last bucket before
  cutoff k, and every window frame ends at the current row, so no feature can read an event at
  or after its cutoff.

  How it stays fast: window aggregates over the 5M+ rows of the grid are the cost of this
  model (each one is a pass over the sorted rows), so there are as few as possible.
  - Whole numbers summed over the same frame go in pairs into one HUGEINT: low + high * 2^64.
    Both sums are non-negative counts far below 2^64 (the running sums of the distinct-count
    changes too, although single changes are negative), so one sum gives both sums exactly,
    and `& (2^64 - 1)` and `>> 64` take them apart again. (Sums of doubles are summed alone.)
  - A one-bucket window (1 day when the step is a day) is the bucket's own value.
  - The distinct counts are running sums of their changes (int_user_distinct_changes), in the
    same pass.
  - Whatever depends on the order of events (the last event, cart, remove and purchase, the
    last session, the carts since the last purchase, the first event) is the user's state at
    the end of the last active bucket before the cutoff (int_user_buckets). One maximum finds
    that bucket and one join fetches its state: no window aggregate per column.

  Order-aware features (last_event_type, the carts and removes since the last purchase,
  has_open_cart, seconds_since_last_remove, last_cart_removed, last_session_*) and
  hours_since_first_event see the user's whole history before the cutoff (from data_start when
  it is set), like the hours_since_last_* features; the counts by window see their window only.
-#}
{%- set one_day = buckets_in('1 day', is_var=false) | int -%}
{%- set seven_days = buckets_in('7 days', is_var=false) | int -%}
{%- set lookback = buckets_in('lookback') | int -%}
{%- set two_to_64 = '18446744073709551616::hugeint' -%}

{#- The whole-number window sums: (window, input column, output column). -#}
{%- set type_counts = ['events', 'views', 'carts', 'removes', 'purchases', 'wishlists'] -%}
{%- set sums = [] -%}
{%- for window, suffix in ([('last_1d', '1d')] if one_day != 1 else [])
    + [('last_7d', '7d'), ('last_lookback', 'lookback')] -%}
    {%- for name in type_counts -%}
        {%- do sums.append((window, 'n_' ~ name, name ~ '_' ~ suffix)) -%}
    {%- endfor -%}
{%- endfor -%}
{%- for column, output in [
    ('view_price_count', 'view_price_count'),
    ('cart_price_count', 'cart_price_count'),
    ('n_session_segments', 'session_segments'),
    ('segment_events_sum', 'segment_events_sum'),
    ('segments_with_cart', 'segments_with_cart'),
    ('segments_abandoned', 'segments_abandoned'),
] -%}
    {%- do sums.append(('last_lookback', column, output)) -%}
{%- endfor -%}
{%- for column, output in [
    ('products_change', 'distinct_products_lookback'),
    ('categories_change', 'distinct_categories_lookback'),
    ('brands_change', 'distinct_brands_lookback'),
    ('sessions_change', 'sessions_lookback'),
    ('days_change', 'active_days_lookback'),
] -%}
    {%- do sums.append(('history', column, output)) -%}
{%- endfor -%}
{#- Pairs of sums over the same window share one aggregate; a sum left over is on its own. -#}
{%- set pairs = [] -%}
{%- set singles = [] -%}
{%- for window in ['last_1d', 'last_7d', 'last_lookback', 'history'] -%}
    {%- set in_window = [] -%}
    {%- for sum in sums if sum[0] == window -%}{%- do in_window.append(sum) -%}{%- endfor -%}
    {%- for group in in_window | batch(2) -%}
        {%- do (pairs if group | length == 2 else singles).append(group) -%}
    {%- endfor -%}
{%- endfor -%}

with grid_activity as (

    select
        grid.user_id,
        grid.cutoff_index,
        buckets.bucket as active_bucket,
        buckets.* exclude (user_id, bucket),
        distinct_changes.* exclude (user_id, cutoff_index)
    from {{ ref('int_user_cutoff_grid') }} as grid
    left join {{ ref('int_user_buckets') }} as buckets
        on buckets.user_id = grid.user_id
        and buckets.bucket = grid.cutoff_index - 1
    left join {{ ref('int_user_distinct_changes') }} as distinct_changes
        on distinct_changes.user_id = grid.user_id
        and distinct_changes.cutoff_index = grid.cutoff_index

),

windowed as (

    select
        user_id,
        cutoff_index,
        {%- if one_day == 1 %}
        {%- for name in type_counts %}
        coalesce(n_{{ name }}, 0)::hugeint as {{ name }}_1d,
        {%- endfor %}
        {%- endif %}
        {%- for (window, low, low_name), (_, high, high_name) in pairs %}
        sum(coalesce({{ low }}, 0)::hugeint + coalesce({{ high }}, 0) * {{ two_to_64 }})
            over {{ window }} as packed_{{ loop.index }},
        {%- endfor %}
        {%- for single in singles %}
        {%- set window, column, name = single[0] %}
        coalesce(sum({{ column }}) over {{ window }}, 0) as {{ name }},
        {%- endfor %}
        coalesce(sum(n_events) over previous_7d, 0) as events_previous_7d,
        sum(view_price_sum) over last_lookback as view_price_sum,
        max(view_price_max) over last_lookback as max_view_price,
        sum(cart_price_sum) over last_lookback as cart_price_sum,
        max(cart_price_max) over last_lookback as max_cart_price,
        sum(segment_duration_sum) over last_lookback as segment_duration_sum,
        max(active_bucket) over history as last_active_bucket
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

unpacked as (

    -- The low 64 bits and the high bits of each pair: two exact sums.
    select
        * exclude (
            {%- for pair in pairs %}packed_{{ loop.index }}{{ ", " if not loop.last }}{% endfor -%}
        ),
        {%- for (window, low, low_name), (_, high, high_name) in pairs %}
        packed_{{ loop.index }} & ({{ two_to_64 }} - 1) as {{ low_name }},
        packed_{{ loop.index }} >> 64 as {{ high_name }}{{ "," if not loop.last }}
        {%- endfor %}
    from windowed

),

with_state as (

    -- Rows with activity in the lookback, with the state at the end of their last active bucket.
    select
        unpacked.*,
        state.first_event_us,
        state.last_event_us,
        state.last_event_type_code,
        state.last_cart_us,
        state.last_remove_us,
        state.last_purchase_us,
        state.last_session_events,
        state.last_session_carts,
        state.carts_since_last_purchase,
        state.removes_since_last_purchase
    from unpacked
    inner join {{ ref('int_user_buckets') }} as state
        on state.user_id = unpacked.user_id
        and state.bucket = unpacked.last_active_bucket
    where unpacked.events_lookback > 0

),

cutoffs as (

    select cutoff_index, cutoff_time, epoch_us(cutoff_time) as cutoff_us, days_of_history
    from {{ ref('cutoffs') }}

)

select
    features.user_id,
    cutoffs.cutoff_time,

    {%- for window_name in ['1d', '7d', 'lookback'] %}
    features.events_{{ window_name }},
    features.views_{{ window_name }},
    features.carts_{{ window_name }},
    features.removes_{{ window_name }},
    features.purchases_{{ window_name }},
    features.wishlists_{{ window_name }},
    {%- endfor %}

    features.events_previous_7d,
    features.sessions_lookback,
    features.distinct_products_lookback,
    features.distinct_categories_lookback,
    features.distinct_brands_lookback,
    features.active_days_lookback,

    (cutoffs.cutoff_us - features.last_event_us) / 3.6e9 as hours_since_last_event,
    (cutoffs.cutoff_us - features.last_cart_us) / 3.6e9 as hours_since_last_cart,
    (cutoffs.cutoff_us - features.last_purchase_us) / 3.6e9 as hours_since_last_purchase,
    -- Capped at 1: some shops record cart adds without a view, or purchases without a cart.
    least(features.carts_lookback / nullif(features.views_lookback, 0), 1.0)
        as view_to_cart_ratio,
    least(features.purchases_lookback / nullif(features.carts_lookback, 0), 1.0)
        as cart_to_purchase_ratio,
    features.segments_abandoned / nullif(features.segments_with_cart, 0)
        as cart_abandonment_rate,

    features.view_price_sum / nullif(features.view_price_count, 0) as avg_view_price,
    features.max_view_price,
    features.cart_price_sum / nullif(features.cart_price_count, 0) as avg_cart_price,
    features.max_cart_price,

    features.segment_duration_sum / nullif(features.session_segments, 0)
        as avg_session_seconds,
    features.segment_events_sum / nullif(features.session_segments, 0)
        as avg_session_events,

    -- -1 (all activity in the 7 days before) .. +1 (all activity in the last 7 days).
    coalesce(
        (features.events_7d - features.events_previous_7d)
        / nullif(features.events_7d + features.events_previous_7d, 0),
        0.0
    ) as activity_trend_7d,

    -- Since the user's first event (whole history): below the horizon, a shopper new to the shop.
    (cutoffs.cutoff_us - features.first_event_us) / 3.6e9 as hours_since_first_event,
    -- Days of data before the cutoff, at most the lookback: below it, no lookback is complete.
    cutoffs.days_of_history,

    -- The order of events, over the whole history (see the header). last_event_type is the
    -- event_types seed code: 1 view, 2 cart, 3 remove_from_cart, 4 purchase, 5 wishlist.
    features.last_event_type_code as last_event_type,
    features.carts_since_last_purchase,
    features.removes_since_last_purchase,
    -- A cart is open while cart adds since the last purchase outnumber removes (no product match).
    (features.carts_since_last_purchase > features.removes_since_last_purchase)::integer
        as has_open_cart,
    (cutoffs.cutoff_us - features.last_remove_us) / 1e6 as seconds_since_last_remove,
    -- 1 when a remove_from_cart came after the last cart add (any product); 0 without one.
    coalesce(features.last_remove_us > features.last_cart_us, false)::integer
        as last_cart_removed,
    features.last_session_events,
    features.last_session_carts

from with_state as features
inner join cutoffs using (cutoff_index)
