{% test before_as_of(model, column_name) %}
{#- With var('as_of') set, no event at or after that cutoff may enter the warehouse models. -#}
select {{ column_name }}
from {{ model }}
{%- if has_as_of() %}
where {{ column_name }} >= make_timestamp({{ as_of_index() }} * {{ step_micros() }})
{%- else %}
where false
{%- endif %}
{% endtest %}
