{#-
  The last sequence_length events before each cutoff, per user_features row, oldest first.
  Each user's events are sorted once into one list; a cutoff's sequence is the slice that ends
  at the number of events before that cutoff, so no event at or after the cutoff is included.
  Event types are the codes of the event_types seed; categories are int_category_vocabulary
  indexes (0 = none).
-#}
{%- set sequence_length = var('sequence_length') | int -%}

with user_event_lists as (

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

events_before_cutoff as (

    select
        grid.user_id,
        grid.cutoff_index,
        sum(coalesce(buckets.n_events, 0)) over (
            partition by grid.user_id order by grid.cutoff_index
            rows between unbounded preceding and current row
        ) as n_events_before_cutoff
    from {{ ref('int_user_cutoff_grid') }} as grid
    left join {{ ref('int_user_buckets') }} as buckets
        on buckets.user_id = grid.user_id
        and buckets.bucket = grid.cutoff_index - 1

),

feature_rows as (

    select
        features.user_id,
        features.cutoff_time,
        epoch_us(features.cutoff_time) as cutoff_us,
        cutoffs.cutoff_index
    from {{ ref('user_features') }} as features
    inner join {{ ref('cutoffs') }} as cutoffs using (cutoff_time)

),

sequences as (

    select
        feature_rows.user_id,
        feature_rows.cutoff_time,
        feature_rows.cutoff_us,
        list_slice(
            user_event_lists.events,
            greatest(events_before_cutoff.n_events_before_cutoff - {{ sequence_length - 1 }}, 1),
            events_before_cutoff.n_events_before_cutoff
        ) as events
    from feature_rows
    inner join events_before_cutoff using (user_id, cutoff_index)
    inner join user_event_lists using (user_id)

)

select
    user_id,
    cutoff_time,
    len(events) as sequence_length,
    list_transform(events, lambda e: e.event_type_code) as event_type_codes,
    list_transform(events, lambda e: e.category_idx) as category_indexes,
    list_transform(events, lambda e: e.price) as prices,
    list_transform(events, lambda e: (cutoff_us - e.event_us) / 1e6) as seconds_before_cutoff
from sequences
