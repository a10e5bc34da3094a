{#-
  The cutoff grid. Every event falls in one bucket of length cutoff_step; cutoff k sits at
  k * step since 1970-01-01 00:00 in the shop's timezone (var('timezone')), so "events strictly
  before cutoff k" is exactly "buckets < k". Windows (1 day, 7 days, lookback, horizon) are whole
  numbers of buckets, checked here at compile time so that a bad var fails with a clear message
  instead of a silent misalignment.

  Timestamps stay UTC everywhere (event_time, cutoff_time); only the grid moves: with an offset
  of +08:00 and a daily step, bucket b is the b-th local day and cutoff k is local midnight,
  16:00 UTC the day before. bucket_of() and cutoff_micros() are the only two places that apply
  the offset; with UTC (the default) they compile to the same SQL as without a timezone.
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
  The shop's UTC offset in seconds, from var('timezone'):
  - 'UTC' (the default),
  - a fixed offset '+08:00', '-05:00', '+05:30' (local = UTC + offset),
  - or an IANA name whose offset never changes, such as 'Asia/Shanghai' or 'Asia/Kolkata'.
  The grid has buckets of one fixed length, so it cannot follow daylight saving time: a zone
  whose offset changes between 2000 and 2040 (per the tz database in pytz, e.g. 'Europe/Berlin')
  is refused at compile time; pick the offset its cutoffs should keep (e.g. '+01:00') instead.
-#}
{% macro utc_offset_seconds() -%}
    {%- set name = var('timezone', 'UTC') | string | trim -%}
    {%- set fixed = modules.re.match('^([+-])([0-9]{2}):?([0-9]{2})$', name) -%}
    {%- if name in ('', 'UTC', 'Etc/UTC') -%}
        {{- 0 -}}
    {%- elif fixed -%}
        {%- set seconds = (fixed.group(2) | int) * 3600 + (fixed.group(3) | int) * 60 -%}
        {%- if seconds > 14 * 3600 or (fixed.group(3) | int) >= 60 -%}
            {{ exceptions.raise_compiler_error("timezone '" ~ name ~ "' is not a UTC offset between -14:00 and +14:00.") }}
        {%- endif -%}
        {{- -seconds if fixed.group(1) == '-' else seconds -}}
    {%- elif name in modules.pytz.all_timezones -%}
        {%- set zone = modules.pytz.timezone(name) -%}
        {%- set offsets = [] -%}
        {%- for year in range(2000, 2041) -%}
            {%- for month in (1, 7) -%}
                {%- set offset = zone.utcoffset(modules.datetime.datetime(year, month, 15, 12)).total_seconds() | int -%}
                {%- if offset not in offsets -%}{%- do offsets.append(offset) -%}{%- endif -%}
            {%- endfor -%}
        {%- endfor -%}
        {%- if offsets | length != 1 -%}
            {{ exceptions.raise_compiler_error("timezone '" ~ name ~ "' changes its UTC offset (daylight saving time or a new zone rule), and cutoffs of one fixed step cannot follow it: set a fixed offset such as '+01:00' instead.") }}
        {%- endif -%}
        {{- offsets[0] -}}
    {%- else -%}
        {{ exceptions.raise_compiler_error("Cannot read the timezone '" ~ name ~ "': write 'UTC', an offset like '+08:00', or an IANA name like 'Asia/Shanghai'.") }}
    {%- endif -%}
{%- endmacro %}

{#- The bucket of an epoch-microseconds expression: the step it falls in, on the local grid. -#}
{% macro bucket_of(micros) -%}
    {%- set offset = (utc_offset_seconds() | int) * 1000000 -%}
    {%- if offset == 0 -%}
        ({{ micros }} // {{ step_micros() }})::bigint
    {%- else -%}
        (({{ micros }} + {{ offset }}) // {{ step_micros() }})::bigint
    {%- endif -%}
{%- endmacro %}

{#- Epoch microseconds (UTC) of cutoff `index`: the inverse of bucket_of at a bucket's start. -#}
{% macro cutoff_micros(index) -%}
    {%- set offset = (utc_offset_seconds() | int) * 1000000 -%}
    {%- if offset == 0 -%}
        (({{ index }}) * {{ step_micros() }})
    {%- else -%}
        (({{ index }}) * {{ step_micros() }} - {{ offset }})
    {%- endif -%}
{%- endmacro %}

{#- The UTC timestamp of cutoff `index`. -#}
{% macro cutoff_timestamp(index) -%}make_timestamp({{ cutoff_micros(index) }}){%- endmacro %}

{#-
  The run's cutoff ("as of"): var('as_of'), an ISO timestamp in UTC such as '2025-10-01 00:00:00',
  rounded down to the cutoff grid. Events at or after it are left out (stg_events), and it is the
  latest cutoff (marts.cutoffs), so a nightly run scores exactly the day it was asked for even when
  later events have already arrived. Empty (the default): the first cutoff after the last event.
-#}
{% macro has_as_of() -%}{{ return((var('as_of', '') | string | trim) != '') }}{%- endmacro %}

{% macro as_of_index() -%}
    {{ bucket_of("epoch_us(timestamp '" ~ (var('as_of') | string | trim) ~ "')") }}
{%- endmacro %}

{#- The time (UTC) of the as_of cutoff: events at or after it wait for a later run. -#}
{% macro as_of_time() -%}{{ cutoff_timestamp(as_of_index()) }}{%- endmacro %}

{#-
  The data's start: var('data_start'), a UTC timestamp. Events before it are dropped in
  stg_events, as events at or after as_of are, so no model sees them (features, sessions,
  sequences, labels, the vocabulary) and the grid starts at the first cutoff after the first
  event at or after it. For a stray event far before the rest that would otherwise stretch the
  grid (and make every lookback look incomplete). Empty (the default): keep every event.
-#}
{% macro has_data_start() -%}{{ return((var('data_start', '') | string | trim) != '') }}{%- endmacro %}

{% macro data_start_time() -%}timestamp '{{ var("data_start") | string | trim }}'{%- endmacro %}

{#-
  The end of the observed data, the time up to which label windows are complete: var('data_end')
  when set (a UTC timestamp), else the as_of cutoff when set, else the newest event. With as_of
  set, data_end never reaches past it: events at or after as_of are not in the models.
  `newest_event` is the SQL of the newest event time, for the last case.
-#}
{% macro data_end(newest_event) -%}
    {%- set given = var('data_end', '') | string | trim -%}
    {%- if given != '' and has_as_of() -%}
        least(timestamp '{{ given }}', {{ as_of_time() }})
    {%- elif given != '' -%}
        timestamp '{{ given }}'
    {%- elif has_as_of() -%}
        {{ as_of_time() }}
    {%- else -%}
        {{ newest_event }}
    {%- endif -%}
{%- endmacro %}
