{#-
  A compact integer index per category for user_sequences. Indexes follow the order in which
  categories were first seen, so events that arrive later never renumber an earlier category:
  sequences at a past cutoff stay the same. Index 0 means "no category". In the `serving`
  target it is the nightly run's vocabulary (source serving.category_vocabulary, the indexes
  the models were trained on), and a category first seen in the request's events follows it,
  as it would in the next nightly build.
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

{%- if target.name == 'serving' %},

known as (

    select category_idx, category_key, category_id, category_code, first_seen, n_events
    from {{ source('serving', 'category_vocabulary') }}

)

select * from known
union all
select
    (select coalesce(max(category_idx), 0) from known)
    + row_number() over (order by first_seen, category_key)::integer as category_idx,
    category_key,
    category_id,
    category_code,
    first_seen,
    n_events
from categories
where category_key not in (select category_key from known)
{%- else %}

select
    row_number() over (order by first_seen, category_key)::integer as category_idx,
    category_key,
    category_id,
    category_code,
    first_seen,
    n_events
from categories
{%- endif %}
