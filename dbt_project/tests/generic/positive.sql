{% test positive(model, column_name) %}
{#- Time to an event strictly before the cutoff, or a count of something that exists, is > 0 (NULL allowed). -#}
select {{ column_name }}
from {{ model }}
where {{ column_name }} <= 0
{% endtest %}
