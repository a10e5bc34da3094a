{#-
  Typed and cleaned events, only those in [data_start, as_of) when those vars are set. The raw
  user id is replaced by its pseudonym here and never leaves the raw layer: pseudonym() is the
  keyed hash (HMAC-SHA-256) that ml/data/dbt_plugin.py registers on dbt's connection, keyed with
  PROPENSITY_PSEUDONYM_SALT from the environment, so the key is in no SQL text. It runs once
  per distinct user. A table, not a view: readers outside dbt have no pseudonym() function.

  Event types are named here once: a small code (seed event_types) for the sequences and one
  flag per type. Events without a source session id get one from 30 minutes of inactivity; the
  derived id is the user plus the session's first event time, so appending later events never
  renames an earlier session.

  Performance: raw_events and cleaned are NOT MATERIALIZED. They are read by the two branches of the union,
  and DuckDB would otherwise materialize the whole cleaned event table (every row hashed and
  copied once more) before filtering it; inlined, each branch streams from raw.events and the
  filter on the session id is applied before the per-row work.
-#}
{{ config(materialized='table') }}

with raw_events as not materialized (

    select * from {{ source('raw', 'events') }}
    where true
    {%- if has_as_of() %}
        -- As of the run's cutoff: later events wait for a later run (see macros/time_grid.sql).
        and event_time < {{ as_of_time() }}
    {%- endif %}
    {%- if has_data_start() %}
        -- From the data's start on: stray events before it must not stretch the cutoff grid.
        and event_time >= {{ data_start_time() }}
    {%- endif %}

),

user_pseudonyms as (

    select user_id as raw_user_id, pseudonym(user_id) as user_id
    from (select distinct user_id from raw_events)

),

cleaned as not materialized (

    select
        event_time,
        event_type,
        case event_type
            when 'view' then 1
            when 'cart' then 2
            when 'remove_from_cart' then 3
            when 'purchase' then 4
            when 'wishlist' then 5
        end::utinyint as event_type_code,
        -- The event types by name, so that no later model compares codes.
        event_type = 'view' as is_view,
        event_type = 'cart' as is_cart,
        event_type = 'remove_from_cart' as is_remove,
        event_type = 'purchase' as is_purchase,
        event_type = 'wishlist' as is_wishlist,
        trim(product_id) as product_id,
        nullif(trim(category_id), '') as category_id,
        nullif(lower(trim(category_code)), '') as category_code,
        nullif(lower(trim(brand)), '') as brand,
        price,
        -- 60 bits of the keyed hash: pseudonymous, and a compact key for the marts.
        user_pseudonyms.user_id,
        nullif(trim(user_session), '') as source_session_id,
        source
    from raw_events
    inner join user_pseudonyms on raw_events.user_id = user_pseudonyms.raw_user_id

),

events_without_session as (

    select
        *,
        coalesce(
            event_time - lag(event_time) over by_user_time
                > interval '{{ var("session_gap_minutes") }} minutes',
            true
        ) as starts_session
    from cleaned
    where source_session_id is null
    window by_user_time as (partition by user_id order by event_time)

),

derived_sessions as (

    select
        * exclude (starts_session),
        'derived-' || user_id || '-' || epoch_ms(
            max(case when starts_session then event_time end) over (
                partition by user_id order by event_time
                range between unbounded preceding and current row
            )
        ) as session_id
    from events_without_session

)

select * exclude (source_session_id), source_session_id as session_id
from cleaned
where source_session_id is not null

union all

select * exclude (source_session_id)
from derived_sessions
