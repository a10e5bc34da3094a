{% test ends_at_as_of(model, column_name) %}
{#- With var('as_of') set, the latest cutoff is that cutoff (the one the run was asked for). -#}
select max({{ column_name }}) as latest_cutoff
from {{ model }}
having {% if has_as_of() -%}
    max({{ column_name }}) is distinct from {{ as_of_time() }}
{%- else -%}
    false
{%- endif %}
{% endtest %}
