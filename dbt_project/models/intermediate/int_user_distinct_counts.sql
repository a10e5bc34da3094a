{#-
  Exact distinct counts of products, categories, brands, sessions and active days in the
  lookback, per (user, cutoff). Distinct counts do not add up across buckets, so each entity's
  occurrence in bucket b "covers" cutoffs b + 1 .. b + lookback (cut short where its next
  occurrence takes over); counting covering intervals with +1/-1 changes and a running sum gives
  the number of distinct entities seen in [cutoff - lookback, cutoff).
-#}
{%- set lookback = buckets_in('lookback') | int -%}

with events as (

    select * from {{ ref('int_events') }}

),

entity_occurrences as (

    select distinct user_id, 'product' as entity_kind, product_id as entity, bucket from events
    union all
    select distinct user_id, 'category', category_idx::varchar, bucket from events
    where category_idx > 0
    union all
    select distinct user_id, 'brand', brand, bucket from events where brand is not null
    union all
    select distinct user_id, 'session', session_id, bucket from events
    union all
    select distinct user_id, 'day', (event_us // 86400000000)::varchar, bucket from events

),

coverage_intervals as (

    select
        user_id,
        entity_kind,
        bucket + 1 as first_cutoff_index,
        least(
            bucket + {{ lookback }},
            coalesce(lead(bucket) over by_entity, bucket + {{ lookback }})
        ) + 1 as end_cutoff_index
    from entity_occurrences
    window by_entity as (partition by user_id, entity_kind, entity order by bucket)

),

coverage_changes as (

    select user_id, entity_kind, first_cutoff_index as cutoff_index, 1 as change
    from coverage_intervals
    union all
    select user_id, entity_kind, end_cutoff_index, -1
    from coverage_intervals

),

changes_per_cutoff as (

    select
        user_id,
        cutoff_index,
        sum(change) filter (where entity_kind = 'product') as products_change,
        sum(change) filter (where entity_kind = 'category') as categories_change,
        sum(change) filter (where entity_kind = 'brand') as brands_change,
        sum(change) filter (where entity_kind = 'session') as sessions_change,
        sum(change) filter (where entity_kind = 'day') as days_change
    from coverage_changes
    group by user_id, cutoff_index

)

select
    grid.user_id,
    grid.cutoff_index,
    sum(coalesce(products_change, 0)) over running as distinct_products_lookback,
    sum(coalesce(categories_change, 0)) over running as distinct_categories_lookback,
    sum(coalesce(brands_change, 0)) over running as distinct_brands_lookback,
    sum(coalesce(sessions_change, 0)) over running as sessions_lookback,
    sum(coalesce(days_change, 0)) over running as active_days_lookback
from {{ ref('int_user_cutoff_grid') }} as grid
left join changes_per_cutoff using (user_id, cutoff_index)
window running as (
    partition by grid.user_id order by grid.cutoff_index
    rows between unbounded preceding and current row
)
