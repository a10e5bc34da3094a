{#-
  Events with their time bucket. Bucket b covers [b * step, (b + 1) * step) since the epoch in the
  shop's timezone (macros/time_grid.sql), so an event in bucket b is strictly before cutoff k
  exactly when b < k. All point-in-time logic downstream compares buckets with cutoff indexes and
  never compares timestamps again.
  The rows are in no particular order: no model depends on it (sums of prices can differ in
  the last bit with the order of their terms, as they did between runs before), and sorting
  all events cost about a quarter of this model's time.
-#}

{%- set max_cutoffs = var('max_cutoffs') | int -%}
{%- set raw_in_scope -%}
    {{ source('raw', 'events') }}
    where true
    {%- if has_as_of() %} and event_time < {{ as_of_time() }}{% endif %}
    {%- if has_data_start() %} and event_time >= {{ data_start_time() }}{% endif %}
{%- endset %}

with event_span as (

    -- Two columns of the raw table (the same scope as stg_events): cheap, and read before any
    -- per-user work, so a span that would create a runaway cutoff grid stops the build here.
    select min(event_time) as first_time, max(event_time) as last_time from {{ raw_in_scope }}

),

span_checked as (

    select
        case
            when {{ bucket_of('epoch_us(last_time)') }} - {{ bucket_of('epoch_us(first_time)') }}
                    + 1 > {{ max_cutoffs }}
                then error(
                    'The events span '
                    || ({{ bucket_of('epoch_us(last_time)') }}
                        - {{ bucket_of('epoch_us(first_time)') }} + 1)
                    || ' cutoffs of {{ var("cutoff_step") }} (from ' || first_time || ' to '
                    || last_time || '), more than max_cutoffs = {{ max_cutoffs }}. The earliest '
                    || 'events: ' || (
                        select string_agg(event_time::varchar, ', ' order by event_time)
                        from (select event_time from {{ raw_in_scope }} order by event_time limit 5)
                    )
                    || '; the latest: ' || (
                        select string_agg(event_time::varchar, ', ' order by event_time)
                        from (
                            select event_time from {{ raw_in_scope }}
                            order by event_time desc limit 2
                        )
                    )
                    || '. If the earliest are strays, set the dbt var data_start after them; '
                    || 'otherwise raise max_cutoffs or the cutoff_step.'
                )
            else true
        end as within_bounds
    from event_span

),

events as (

    select * from {{ ref('stg_events') }}

),

categories as (

    select category_key, category_idx from {{ ref('int_category_vocabulary') }}

)

select
    events.user_id,
    events.event_time,
    epoch_us(events.event_time) as event_us,
    {{ bucket_of('epoch_us(events.event_time)') }} as bucket,
    events.event_type_code,
    events.is_view,
    events.is_cart,
    events.is_remove,
    events.is_purchase,
    events.is_wishlist,
    events.product_id,
    coalesce(categories.category_idx, 0) as category_idx,
    events.brand,
    events.price,
    events.session_id
from events
left join categories
    on categories.category_key = coalesce(events.category_id, 'code:' || events.category_code)
where (select within_bounds from span_checked) is not false
