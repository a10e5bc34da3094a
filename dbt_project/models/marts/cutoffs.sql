{#-
  One row per cutoff: every multiple of cutoff_step (on the shop's local grid, var('timezone'))
  from the first one after the first event to the first one after the last event (the scoring
  cutoff), or to var('as_of') when a run sets it (the nightly schedule does).

  A label window [cutoff, cutoff + horizon) is complete when it ends at or before data_end: the
  time up to which the data is known to be complete (var('data_end'), else the as_of cutoff, else
  the newest event; macros/time_grid.sql). A file that ends at 16:00 leaves the window ending at
  the next midnight incomplete, although a cutoff follows it.

  In the `serving` target the span comes from the scoring service (source serving.event_span):
  the shop's first event from the nightly snapshot, the last bucket from the request's cutoff,
  and the grid holds that one cutoff (no feature reads another cutoff's row).
-#}
{%- set lookback_seconds = interval_seconds(var('lookback')) | int -%}

with event_span as (

    {% if target.name == 'serving' -%}
    -- The scoring service: the shop's first event, and the request's cutoff as the last bucket
    -- (one shopper's events cannot say where the shop's data starts).
    select first_bucket, last_bucket, first_event_time, last_event_time
    from {{ source('serving', 'event_span') }}
    {%- else -%}
    select
        min(bucket) as first_bucket,
        max(bucket) as last_bucket,
        min(event_time) as first_event_time,
        max(event_time) as last_event_time
    from {{ ref('int_events') }}
    {%- endif %}

),

cutoff_indexes as (

    select
        unnest(range(
            {#- The scoring service needs only the request's cutoff (the last). #}
            {% if target.name == 'serving' %}last_bucket + 1{% else %}first_bucket + 1{% endif %},
            {% if has_as_of() %}{{ as_of_index() }} + 1{% else %}last_bucket + 2{% endif %}
        )) as cutoff_index,
        first_bucket,
        first_event_time,
        {{ data_end('last_event_time') }} as data_end
    from event_span

),

cutoff_times as (

    select
        *,
        {{ cutoff_timestamp('cutoff_index') }} as cutoff_time,
        {{ cutoff_timestamp('cutoff_index - ' ~ buckets_in('lookback')) }} as lookback_start,
        {{ cutoff_timestamp('cutoff_index + ' ~ buckets_in('horizon')) }} as horizon_end
    from cutoff_indexes

)

select
    cutoff_index,
    cutoff_time,
    lookback_start,
    horizon_end,
    cutoff_index - {{ buckets_in('lookback') }} > first_bucket as lookback_complete,
    horizon_end <= data_end as horizon_complete,
    cutoff_index = max(cutoff_index) over () as is_latest,
    data_end,
    -- Days of data before the cutoff, at most one lookback: the same for every user.
    least(
        epoch_us(cutoff_time) - epoch_us(first_event_time), {{ lookback_seconds * 1000000 }}
    ) / 86400e6 as days_of_history
from cutoff_times
