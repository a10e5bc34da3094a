{#-
  Events with their time bucket. Bucket b covers [b * step, (b + 1) * step) since the epoch in the
  shop's timezone (macros/time_grid.sql), so an event in bucket b is strictly before cutoff k
  exactly when b < k. All point-in-time logic downstream compares buckets with cutoff indexes and
  never compares timestamps again.
  The rows are in no particular order: no model depends on it (sums of prices can differ in
  the last bit with the order of their terms, as they did between runs before), and sorting
  all events cost about a quarter of this model's time.
-#}

with events as (

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
