{% test list_values_positive(model, column_name) %}
{#- Every element of a list column is > 0: for seconds_before_cutoff, no event at or after the cutoff. -#}
select {{ column_name }}
from {{ model }}
where len(list_filter({{ column_name }}, lambda x: x is null or x <= 0)) > 0
{% endtest %}
