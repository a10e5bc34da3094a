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

cutoffs as (

    select cutoff_index, cutoff_time, epoch_us(cutoff_time) as cutoff_us
    from {{ ref('cutoffs') }}

)

select
    unpacked.user_id,
    cutoffs.cutoff_time,

    {%- for window_name in ['1d', '7d', 'lookback'] %}
    unpacked.events_{{ window_name }},
    unpacked.views_{{ window_name }},
    unpacked.carts_{{ window_name }},
    unpacked.removes_{{ window_name }},
    unpacked.purchases_{{ window_name }},
    unpacked.wishlists_{{ window_name }},
    {%- endfor %}

    unpacked.events_previous_7d,
    unpacked.sessions_lookback,
    unpacked.distinct_products_lookback,
    unpacked.distinct_categories_lookback,
    unpacked.distinct_brands_lookback,
    unpacked.active_days_lookback,

    (cutoffs.cutoff_us - unpacked.last_event_us) / 3.6e9 as hours_since_last_event,
    (cutoffs.cutoff_us - unpacked.last_cart_us) / 3.6e9 as hours_since_last_cart,
    (cutoffs.cutoff_us - unpacked.last_purchase_us) / 3.6e9 as hours_since_last_purchase,

    -- Capped at 1: some shops record cart adds without a view, or purchases without a cart.
    least(unpacked.carts_lookback / nullif(unpacked.views_lookback, 0), 1.0)
        as view_to_cart_ratio,
    least(unpacked.purchases_lookback / nullif(unpacked.carts_lookback, 0), 1.0)
        as cart_to_purchase_ratio,
    unpacked.segments_abandoned / nullif(unpacked.segments_with_cart, 0)
        as cart_abandonment_rate,

    unpacked.view_price_sum / nullif(unpacked.view_price_count, 0) as avg_view_price,
    unpacked.max_view_price,
    unpacked.cart_price_sum / nullif(unpacked.cart_price_count, 0) as avg_cart_price,
    unpacked.max_cart_price,

    unpacked.segment_duration_sum / nullif(unpacked.session_segments, 0)
        as avg_session_seconds,
    unpacked.segment_events_sum / nullif(unpacked.session_segments, 0)
        as avg_session_events,

    -- -1 (all activity in the 7 days before) .. +1 (all activity in the last 7 days).
    coalesce(
        (unpacked.events_7d - unpacked.events_previous_7d)
        / nullif(unpacked.events_7d + unpacked.events_previous_7d, 0),
        0.0
    ) as activity_trend_7d

from unpacked
inner join cutoffs using (cutoff_index)
where unpacked.events_lookback > 0
