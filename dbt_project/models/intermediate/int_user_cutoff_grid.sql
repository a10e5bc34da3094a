{#-
  A dense grid of (user, cutoff) from the first cutoff after a user's first event to the last
  cutoff at which that user can still be active in the lookback. Dense rows let the features use
  plain ROWS window frames: a frame of N rows is exactly N buckets.
-#}

with user_spans as (

    select
        user_id,
        min(bucket) + 1 as first_cutoff_index,
        max(bucket) + {{ buckets_in('lookback') }} as last_active_cutoff_index
    from {{ ref('int_user_buckets') }}
    group by user_id

),

last_cutoff as (

    select max(cutoff_index) as cutoff_index from {{ ref('cutoffs') }}

)

select
    user_spans.user_id,
    unnest(range(
        user_spans.first_cutoff_index,
        least(user_spans.last_active_cutoff_index, last_cutoff.cutoff_index) + 1
    )) as cutoff_index
from user_spans
cross join last_cutoff
