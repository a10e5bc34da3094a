{#-
  The next-category target: the distinct categories a user touched (any event type: view,
  cart, remove, purchase) in [cutoff, cutoff + horizon), one row per user_features row, in the
  order they were first touched; an empty list when the user touched none. As with labels,
  rows with horizon_complete = false are not observed to the end and must not be trained or
  evaluated on.

  An event in bucket b lies in the label window of cutoff k exactly when k <= b < k + horizon
  (in buckets), so each (user, bucket, category) is spread over the cutoffs b - horizon + 1 .. b
  instead of joining every feature row with every event of its user.
-#}
{%- set horizon = buckets_in('horizon') | int -%}

with feature_rows as (

    select user_id, cutoff_time from {{ ref('user_features') }}

),

cutoffs as (

    select cutoff_index, cutoff_time, horizon_complete from {{ ref('cutoffs') }}

),

category_touches_by_bucket as (

    select user_id, bucket, category_idx, min(event_us) as first_touch_us
    from {{ ref('int_events') }}
    where category_idx > 0
    group by user_id, bucket, category_idx

),

category_touches_by_cutoff as (

    select
        user_id,
        category_idx,
        first_touch_us,
        unnest(range(bucket - {{ horizon - 1 }}, bucket + 1)) as cutoff_index
    from category_touches_by_bucket

),

first_touches as (

    select user_id, cutoff_index, category_idx, min(first_touch_us) as first_touch_us
    from category_touches_by_cutoff
    group by user_id, cutoff_index, category_idx

),

category_lists as (

    select
        user_id,
        cutoff_index,
        list(category_idx order by first_touch_us, category_idx) as horizon_category_indexes
    from first_touches
    group by user_id, cutoff_index

)

select
    feature_rows.user_id,
    feature_rows.cutoff_time,
    coalesce(category_lists.horizon_category_indexes, []::integer[]) as horizon_category_indexes,
    cutoffs.horizon_complete
from feature_rows
inner join cutoffs using (cutoff_time)
left join category_lists
    on category_lists.user_id = feature_rows.user_id
    and category_lists.cutoff_index = cutoffs.cutoff_index
