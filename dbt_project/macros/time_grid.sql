{#-
  The cutoff grid. Every event falls in one bucket of length cutoff_step; cutoff k sits at
  k * step since the epoch, so "events strictly before cutoff k" is exactly "buckets < k".
  Windows (1 day, 7 days, lookback, horizon) are whole numbers of buckets, checked here at
  compile time so that a bad var fails with a clear message instead of a silent misalignment.
-#}

{% macro interval_seconds(text) -%}
    {%- set units = {
        'second': 1, 'seconds': 1, 'minute': 60, 'minutes': 60, 'hour': 3600, 'hours': 3600,
        'day': 86400, 'days': 86400, 'week': 604800, 'weeks': 604800} -%}
    {%- set parts = (text | string).strip().split() -%}
    {%- if parts | length != 2 or parts[1] | lower not in units or not parts[0].isdigit() -%}
        {{ exceptions.raise_compiler_error("Cannot read the interval '" ~ text ~ "': write it like '30 days' or '2 hours'.") }}
    {%- endif -%}
    {{- (parts[0] | int) * units[parts[1] | lower] -}}
{%- endmacro %}

{% macro step_seconds() -%}
    {%- set step = interval_seconds(var('cutoff_step')) | int -%}
    {%- if step <= 0 or 86400 % step != 0 -%}
        {{ exceptions.raise_compiler_error("cutoff_step '" ~ var('cutoff_step') ~ "' must divide one day (e.g. '1 day', '6 hours', '1 hour').") }}
    {%- endif -%}
    {{- step -}}
{%- endmacro %}

{% macro buckets_in(var_name_or_interval, is_var=true) -%}
    {%- set text = var(var_name_or_interval) if is_var else var_name_or_interval -%}
    {%- set seconds = interval_seconds(text) | int -%}
    {%- set step = step_seconds() | int -%}
    {%- if seconds <= 0 or seconds % step != 0 -%}
        {{ exceptions.raise_compiler_error("'" ~ text ~ "' must be a positive multiple of cutoff_step '" ~ var('cutoff_step') ~ "'.") }}
    {%- endif -%}
    {{- (seconds // step) -}}
{%- endmacro %}

{% macro step_micros() -%}{{ (step_seconds() | int) * 1000000 }}{%- endmacro %}

{#-
  The run's cutoff ("as of"): var('as_of'), an ISO timestamp in UTC such as '2025-10-01 00:00:00',
  rounded down to the cutoff grid. Events at or after it are left out (stg_events), and it is the
  latest cutoff (marts.cutoffs), so a nightly run scores exactly the day it was asked for even when
  later events have already arrived. Empty (the default): the first cutoff after the last event.
-#}
{% macro has_as_of() -%}{{ return((var('as_of', '') | string | trim) != '') }}{%- endmacro %}

{% macro as_of_index() -%}
    (epoch_us(timestamp '{{ var("as_of") | string | trim }}') // {{ step_micros() }})::bigint
{%- endmacro %}
