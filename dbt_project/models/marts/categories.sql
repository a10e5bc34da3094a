{#-
  The category vocabulary as the shop reads it: the index the models use (category_idx, as in
  user_sequences and category_labels) and a display name, the category code where the source
  has one ("electronics.smartphone"), else "category <id>".
-#}

with vocabulary as (

    select * from {{ ref('int_category_vocabulary') }}

)

select
    category_idx,
    category_key,
    category_id,
    category_code,
    coalesce(category_code, 'category ' || category_id) as category_name,
    first_seen,
    n_events
from vocabulary
