{% test list_values_in(model, column_name, values) %}
{#- Every element of a list column is one of the accepted values (e.g. event type codes). -#}
select {{ column_name }}
from {{ model }}
where len(list_filter({{ column_name }}, lambda x: x not in ({{ values | join(', ') }}))) > 0
{% endtest %}
