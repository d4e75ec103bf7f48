"""Markdown and self-contained HTML (inline CSS, figures as base64 PNG; no external assets)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .figures import ReportFigure
from .tables import MISSING

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1200px;
 color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr.published td{color:#555;font-style:italic;background:#fafafa}
td.missing{color:#999;text-align:center}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}.notes li{margin:.2rem 0;font-size:.9rem}
"""


@dataclass
class Section:
    title: str
    table: pd.DataFrame | None = None
    text: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table with the index as first column (no tabulate needed)."""
    head = [str(df.index.name or "")] + [str(c) for c in df.columns]
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join(esc(_cell(v)) for v in [idx, *row.tolist()]) + " |")
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    rows = []
    for idx, row in df.iterrows():
        cls = ' class="published"' if "(published)" in str(idx) else ""
        cells = [f"<td>{html.escape(str(idx))}</td>"]
        for v in row.tolist():
            text = _cell(v)
            miss = ' class="missing"' if text == MISSING else ""
            cells.append(f"<td{miss}>{html.escape(text)}</td>")
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_markdown(title: str, intro: list[str], sections: list[Section], figures: list[ReportFigure]) -> str:
    parts = [f"# {title}", "", *intro, ""]
    for s in sections:
        parts += [f"## {s.title}", "", *s.text]
        if s.table is not None:
            parts += ["", markdown_table(s.table)]
        if s.bullets:
            parts += [""] + [f"- {b}" for b in s.bullets]
        parts.append("")
    if figures:
        parts += ["## Figures", ""]
        for f in figures:
            parts += [f"### {f.title}", "", f"![{f.title}](figures/{f.name}.png)", "", f"_{f.caption}_", ""]
    return "\n".join(parts)


def to_html(title: str, intro: list[str], sections: list[Section], figures: list[ReportFigure]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", *(f"<p>{e(p)}</p>" for p in intro)]
    for s in sections:
        body.append(f"<h2>{e(s.title)}</h2>")
        body += [f"<p>{e(t)}</p>" for t in s.text]
        if s.table is not None:
            body.append(html_table(s.table))
        if s.bullets:
            body.append('<ul class="notes">' + "".join(f"<li>{e(b)}</li>" for b in s.bullets) + "</ul>")
    if figures:
        body.append("<h2>Figures</h2>")
        for f in figures:
            data = base64.b64encode(f.png).decode("ascii")
            body.append(f'<figure id="fig-{e(f.name)}"><img alt="{e(f.title)}" src="data:image/png;base64,{data}">'
                        f"<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
