{% test unique_combination(model, combination) %}
{#- Each combination of the given columns appears at most once (e.g. one row per user and cutoff). -#}
select {{ combination | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ combination | join(', ') }}
having count(*) > 1
{% endtest %}
