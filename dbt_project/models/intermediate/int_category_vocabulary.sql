{#-
  A compact integer index per category for user_sequences. Indexes follow the order in which
  categories were first seen, so events that arrive later never renumber an earlier category:
  sequences at a past cutoff stay the same. Index 0 means "no category".
-#}

with category_events as (

    select
        coalesce(category_id, 'code:' || category_code) as category_key,
        category_id,
        category_code,
        event_time
    from {{ ref('stg_events') }}
    where category_id is not null or category_code is not null

),

categories as (

    select
        category_key,
        any_value(category_id) as category_id,
        max(category_code) as category_code,
        min(event_time) as first_seen,
        count(*) as n_events
    from category_events
    group by category_key

)

select
    row_number() over (order by first_seen, category_key)::integer as category_idx,
    category_key,
    category_id,
    category_code,
    first_seen,
    n_events
from categories
