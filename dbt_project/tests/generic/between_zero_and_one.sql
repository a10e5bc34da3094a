{% test between_zero_and_one(model, column_name) %}
{#- Ratios and rates are shares: NULL (undefined) is allowed, anything outside [0, 1] is not. -#}
select {{ column_name }}
from {{ model }}
where {{ column_name }} < 0 or {{ column_name }} > 1
{% endtest %}
