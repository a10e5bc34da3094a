{% test non_negative(model, column_name) %}
{#- Counts, prices and durations can never be below zero. -#}
select {{ column_name }}
from {{ model }}
where {{ column_name }} < 0
{% endtest %}
