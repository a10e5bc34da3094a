{#-
  The last sequence_length events before each cutoff, per user_features row, oldest first.
  Each user's events are sorted once into one list; a cutoff's sequence is the slice that ends
  at the number of events before that cutoff, so no event at or after the cutoff is included.
  Event types are the codes of the event_types seed; categories are int_category_vocabulary
  indexes (0 = none).

  How it stays fast: the events before cutoff k only change when k passes an active bucket, so
  the slices are cut once per active (user, bucket) b, inside one row per user (no per-row copy
  of a user's whole list), and each slice is then repeated for the cutoffs b + 1 .. e, where e
  is the last cutoff before the user's next active bucket, at most b + lookback (after that the
  user has no event in the lookback and no user_features row) and at most the last cutoff. Only
  seconds_before_cutoff depends on the cutoff itself.
-#}
{%- set sequence_length = var('sequence_length') | int -%}
{%- set lookback = buckets_in('lookback') | int -%}

with user_event_lists as (

    -- list_sort orders by event time first (ties by type, category, price): the oldest first.
    select
        user_id,
        list_sort(list(struct_pack(
            event_us := event_us,
            event_type_code := event_type_code,
            category_idx := category_idx,
            price := price
        ))) as events
    from {{ ref('int_events') }}
    group by user_id

),

last_cutoff as (

    select max(cutoff_index) as cutoff_index from {{ ref('cutoffs') }}

),

active_buckets as (

    select
        buckets.user_id,
        buckets.bucket,
        sum(buckets.n_events) over by_user as n_events_through_bucket,
        least(
            coalesce(lead(buckets.bucket) over by_user_ordered, buckets.bucket + {{ lookback }}),
            buckets.bucket + {{ lookback }},
            last_cutoff.cutoff_index
        ) as last_cutoff_index
    from {{ ref('int_user_buckets') }} as buckets
    cross join last_cutoff
    window
        by_user_ordered as (partition by buckets.user_id order by buckets.bucket),
        by_user as (by_user_ordered rows between unbounded preceding and current row)

),

bucket_lists as (

    select
        user_id,
        list(struct_pack(
            first_cutoff_index := bucket + 1,
            last_cutoff_index := last_cutoff_index,
            n_events_before_cutoff := n_events_through_bucket
        )) as buckets
    from active_buckets
    group by user_id

),

slices as (

    select
        bucket_lists.user_id,
        unnest(list_transform(bucket_lists.buckets, lambda b: struct_pack(
            first_cutoff_index := b.first_cutoff_index,
            last_cutoff_index := b.last_cutoff_index,
            events := list_slice(
                user_event_lists.events,
                greatest(b.n_events_before_cutoff - {{ sequence_length - 1 }}, 1),
                b.n_events_before_cutoff
            )
        ))) as slice
    from bucket_lists
    inner join user_event_lists using (user_id)

),

slice_columns as (

    select
        user_id,
        slice.first_cutoff_index,
        slice.last_cutoff_index,
        list_transform(slice.events, lambda e: e.event_type_code) as event_type_codes,
        list_transform(slice.events, lambda e: e.category_idx) as category_indexes,
        list_transform(slice.events, lambda e: e.price) as prices,
        list_transform(slice.events, lambda e: e.event_us) as event_us
    from slices

),

sequences as (

    select
        * exclude (first_cutoff_index, last_cutoff_index),
        unnest(range(first_cutoff_index, last_cutoff_index + 1)) as cutoff_index
    from slice_columns

)

select
    user_id,
    {{ cutoff_timestamp('cutoff_index') }} as cutoff_time,
    len(event_type_codes) as sequence_length,
    event_type_codes,
    category_indexes,
    prices,
    list_transform(
        event_us, lambda t: ({{ cutoff_micros('cutoff_index') }} - t) / 1e6
    ) as seconds_before_cutoff
from sequences
