{#-
  How the exact distinct counts of products, categories, brands, sessions and active days in
  the lookback change at each cutoff, per (user, cutoff) where at least one of them changes.
  A running sum of a column over a user's cutoffs gives the count itself (see
  int_user_distinct_counts and user_features).

  An entity seen in bucket b is in the lookback of cutoffs b + 1 .. b + lookback: it "covers"
  them. Distinct counts do not add up across buckets, so each entity's covers are merged into
  disjoint intervals, and each interval adds +1 at its first cutoff and -1 after its last.
  - An entity whose first and last buckets lie at most one lookback apart covers one interval,
    first bucket + 1 .. last bucket + lookback: one (user, entity) aggregation, no sort.
  - An entity seen further apart gets one interval per bucket it was seen in, each starting
    where the one of the bucket before ends (a lag over its buckets); few entities need this.
  Active days come from int_user_buckets: a bucket lies inside one day (the step divides a day),
  so an event's day is its bucket's day, bucket // buckets_per_day.
-#}
{%- set lookback = buckets_in('lookback') | int -%}
{%- set buckets_per_day = buckets_in('1 day', is_var=false) | int -%}
{#- (kind, the column that names the entity, which events have one) -#}
{%- set kinds = [
    ('products', 'product_id', 'true'),
    ('categories', 'category_idx', 'category_idx > 0'),
    ('brands', 'brand', 'brand is not null'),
    ('sessions', 'session_id', 'true'),
] -%}

with events as not materialized (

    select user_id, bucket, product_id, category_idx, brand, session_id
    from {{ ref('int_events') }}

),

days as not materialized (

    select user_id, bucket // {{ buckets_per_day }} as day, bucket
    from {{ ref('int_user_buckets') }}

),

{% for kind, column, condition in kinds + [('days', 'day', 'true')] %}
{%- set source = 'days' if kind == 'days' else 'events' %}
{{ kind }}_spans as (

    select
        user_id,
        {{ column }} as entity,
        min(bucket) as first_bucket,
        max(bucket) as last_bucket
    from {{ source }}
    where {{ condition }}
    group by user_id, {{ column }}

),

{{ kind }}_covers as (

    select
        user_id,
        first_bucket + 1 as first_cutoff_index,
        last_bucket + {{ lookback }} + 1 as end_cutoff_index
    from {{ kind }}_spans
    where last_bucket - first_bucket <= {{ lookback }}

    union all

    select
        user_id,
        greatest(
            bucket + 1,
            coalesce(lag(bucket) over by_entity + {{ lookback }} + 1, bucket + 1)
        ),
        bucket + {{ lookback }} + 1
    from (
        select distinct occurrences.user_id, occurrences.{{ column }} as entity, occurrences.bucket
        from {{ source }} as occurrences
        semi join (
            select user_id, entity from {{ kind }}_spans
            where last_bucket - first_bucket > {{ lookback }}
        ) as spread
            on spread.user_id = occurrences.user_id
            and spread.entity is not distinct from occurrences.{{ column }}
    )
    window by_entity as (partition by user_id, entity order by bucket)

),

{% endfor %}
changes as (

    {%- for kind, column, condition in kinds + [('days', 'day', 'true')] %}
    select
        user_id,
        {{ loop.index }} as kind,
        unnest([first_cutoff_index, end_cutoff_index]) as cutoff_index,
        unnest([1, -1]) as change
    from {{ kind }}_covers
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}

)

select
    user_id,
    cutoff_index,
    {%- for kind, column, condition in kinds + [('days', 'day', 'true')] %}
    coalesce(sum(change) filter (where kind = {{ loop.index }}), 0)::integer as {{ kind }}_change
    {{- "," if not loop.last }}
    {%- endfor %}
from changes
group by user_id, cutoff_index
