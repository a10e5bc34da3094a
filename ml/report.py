"""The run report: one self-contained HTML page a shop manager would rather look at than read.

Sections are plain (title, html) pairs built by the caller (`orchestration/defs/reporting.py`
gathers them from the warehouse, MLflow and the Dagster instance); this module turns frames
and images into HTML and writes the page. Images are embedded (base64 data URIs), so the page
opens anywhere by itself, and are also written beside it as PNG files. Every table is escaped
text: nothing in the warehouse can inject markup.

The warehouse figures here are counts and pseudonymous ids only: raw user ids stay in the raw
layer, and the pseudonym key never reaches this module.
"""

from __future__ import annotations

import base64
import html
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

REPORT_FILE = "report.html"
INTERVENTION_ROWS = 20
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top;
  max-width: 36em; overflow-wrap: anywhere; }
th { background: #f3f5f8; } .note { color: #555; font-size: .9em; }
figure { display: inline-block; margin: .5em 1em .5em 0; } img { max-width: 480px; }
"""


@dataclass(frozen=True)
class Section:
    title: str
    html: str


def table(frame: pd.DataFrame, caption: str = "") -> str:
    """An escaped HTML table (no index)."""
    body = frame.to_html(index=False, escape=True, border=0, na_rep="")
    return (f'<p class="note">{html.escape(caption)}</p>' if caption else "") + body


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def markdown_table(text: str) -> pd.DataFrame:
    """A pipe table (as Dagster metadata and MLflow hold comparisons) as a frame."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.strip().startswith("|")
    ]
    rows = [row for row in rows if not all(set(cell) <= set(":-") for cell in row)]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows[1:], columns=rows[0])


def figure(image: Path, caption: str, folder: Path) -> str:
    """The PNG embedded, and copied into `folder` beside the report."""
    target = folder / image.name
    if image.resolve() != target.resolve():
        shutil.copyfile(image, target)
    encoded = base64.b64encode(image.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}" '
        f'data-file="{html.escape(target.name)}"><figcaption>{html.escape(caption)}'
        "</figcaption></figure>"
    )


def write_report(folder: Path, title: str, sections: list[Section]) -> Path:
    """Writes folder/report.html (the folder is created) and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(
        f'<section><h2 id="{_anchor(s.title)}">{html.escape(s.title)}</h2>\n{s.html}</section>'
        for s in sections
    )
    contents = "".join(
        f'<li><a href="#{_anchor(s.title)}">{html.escape(s.title)}</a></li>' for s in sections
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="note">Written {written}.</p>'
        f"<ul>{contents}</ul>\n{body}\n</body></html>\n"
    )
    path = folder / REPORT_FILE
    staging = path.with_suffix(".html.tmp")
    staging.write_text(page, encoding="utf-8")
    staging.replace(path)  # a reader never sees half a report
    return path


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def data_overview(warehouse: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the data in figures, quarantined rows per reason): counts only, no id."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        events, users, first, last = con.execute(
            "select count(*), count(distinct user_id), min(event_time), max(event_time) "
            "from raw.events"
        ).fetchone()
        files, quarantined = con.execute(
            "select count(*), coalesce(sum(quarantined), 0) from raw.ingested_files"
        ).fetchone()
        cutoffs, complete = con.execute(
            "select count(*), count(*) filter (where horizon_complete) from marts.cutoffs"
        ).fetchone()
        reasons = con.execute(
            "select reason, count(*) as rows from raw.quarantine group by reason "
            "order by rows desc, reason"
        ).df()
    overview = pd.DataFrame(
        [
            ("events ingested", f"{events:,}"),
            ("shoppers", f"{users:,}"),
            ("first event (UTC)", f"{first}"),
            ("last event (UTC)", f"{last}"),
            ("files ingested", f"{files:,}"),
            ("rows quarantined", f"{quarantined:,}"),
            ("cutoffs (with a complete label window)", f"{cutoffs:,} ({complete:,})"),
        ],
        columns=["what", "value"],
    )
    return overview, reasons


def top_interventions(warehouse: Path, rows: int = INTERVENTION_ROWS) -> pd.DataFrame:
    """The top of the latest intervention list, with the action and the reasons in words."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            """
            select rank, user_id as shopper, round(score, 4) as score, action, action_category
                as category, concat_ws('; ', driver_1, driver_2, driver_3) as reasons,
                event_reasons as past_events, model_version
            from predictions.intervention_targets
            where cutoff_time = (select max(cutoff_time) from predictions.intervention_targets)
            order by rank
            limit ?
            """,
            [rows],
        ).df()
