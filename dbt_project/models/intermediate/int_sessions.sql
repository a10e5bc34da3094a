{#-
  One row per session, for analysis. Features do not read this model: a whole session can reach
  past a cutoff, so the features build session statistics from session segments cut at cutoffs
  (int_user_buckets) instead.
-#}

select
    session_id,
    user_id,
    min(event_time) as session_start,
    max(event_time) as session_end,
    date_diff('second', min(event_time), max(event_time)) as duration_seconds,
    count(*) as n_events,
    count(*) filter (where is_cart) as n_cart_adds,
    count(*) filter (where is_purchase) as n_purchases
from {{ ref('int_events') }}
group by session_id, user_id
