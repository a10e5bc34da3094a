{#-
  One row per cutoff: every multiple of cutoff_step from the first one after the first event to
  the first one after the last event (the scoring cutoff), or to var('as_of') when a run sets it
  (the nightly schedule does). Data is taken to be complete up to that last cutoff, so a label
  window is complete when it ends at or before it.
-#}

with event_span as (

    select min(bucket) as first_bucket, max(bucket) as last_bucket
    from {{ ref('int_events') }}

),

cutoff_indexes as (

    select
        unnest(range(
            first_bucket + 1,
            {% if has_as_of() %}{{ as_of_index() }} + 1{% else %}last_bucket + 2{% endif %}
        )) as cutoff_index,
        first_bucket
    from event_span

)

select
    cutoff_index,
    make_timestamp(cutoff_index * {{ step_micros() }}) as cutoff_time,
    make_timestamp((cutoff_index - {{ buckets_in('lookback') }}) * {{ step_micros() }}) as lookback_start,
    make_timestamp((cutoff_index + {{ buckets_in('horizon') }}) * {{ step_micros() }}) as horizon_end,
    cutoff_index - {{ buckets_in('lookback') }} > first_bucket as lookback_complete,
    cutoff_index + {{ buckets_in('horizon') }}
        <= max(cutoff_index) over () as horizon_complete,
    cutoff_index = max(cutoff_index) over () as is_latest
from cutoff_indexes
