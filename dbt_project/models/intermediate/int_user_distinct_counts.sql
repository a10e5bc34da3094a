{#-
  Exact distinct counts of products, categories, brands, sessions and active days in the
  lookback, per (user, cutoff): the running sums of int_user_distinct_changes over the grid.

  A view: user_features computes the same running sums inside its own window pass, so during
  a build nothing reads this model and it costs nothing; it is here for analysis and for the
  data tests, which compute it when they run.
-#}
{{ config(materialized='view') }}

select
    grid.user_id,
    grid.cutoff_index,
    sum(coalesce(changes.products_change, 0)) over running as distinct_products_lookback,
    sum(coalesce(changes.categories_change, 0)) over running as distinct_categories_lookback,
    sum(coalesce(changes.brands_change, 0)) over running as distinct_brands_lookback,
    sum(coalesce(changes.sessions_change, 0)) over running as sessions_lookback,
    sum(coalesce(changes.days_change, 0)) over running as active_days_lookback
from {{ ref('int_user_cutoff_grid') }} as grid
left join {{ ref('int_user_distinct_changes') }} as changes
    on changes.user_id = grid.user_id and changes.cutoff_index = grid.cutoff_index
window running as (
    partition by grid.user_id order by grid.cutoff_index
    rows between unbounded preceding and current row
)
