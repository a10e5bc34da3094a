{#-
  The target: did the user buy in [cutoff, cutoff + horizon)? One row per user_features row.
  horizon_complete is false where the data does not reach the end of the label window yet;
  such rows are for scoring, never for training or evaluation.
-#}

with feature_rows as (

    select user_id, cutoff_time from {{ ref('user_features') }}

),

cutoffs as (

    select cutoff_time, horizon_end, horizon_complete from {{ ref('cutoffs') }}

),

purchases as (

    select user_id, event_time from {{ ref('int_events') }} where is_purchase

),

purchases_in_horizon as (

    select
        feature_rows.user_id,
        feature_rows.cutoff_time,
        count(purchases.event_time) as purchases_in_horizon
    from feature_rows
    inner join cutoffs using (cutoff_time)
    left join purchases
        on purchases.user_id = feature_rows.user_id
        and purchases.event_time >= feature_rows.cutoff_time
        and purchases.event_time < cutoffs.horizon_end
    group by feature_rows.user_id, feature_rows.cutoff_time

)

select
    purchases_in_horizon.user_id,
    purchases_in_horizon.cutoff_time,
    purchases_in_horizon.purchases_in_horizon > 0 as purchased,
    purchases_in_horizon.purchases_in_horizon,
    cutoffs.horizon_complete
from purchases_in_horizon
inner join cutoffs using (cutoff_time)
