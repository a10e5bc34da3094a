{% test before_as_of(model, column_name) %}
{#- With var('as_of') set, no event at or after that cutoff may enter the warehouse models. -#}
select {{ column_name }}
from {{ model }}
{%- if has_as_of() %}
where {{ column_name }} >= {{ as_of_time() }}
{%- else %}
where false
{%- endif %}
{% endtest %}
