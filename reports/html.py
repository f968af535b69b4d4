"""The report page: one static HTML file (inline style, no script, no network), built from sections.

Tables arrive as the Markdown that ``bench table`` renders (title, ``>`` header lines, GitHub-style
tables, notes) and are turned into HTML here; figures are ``<img>`` elements with paths relative to
the page, so the page and its ``figures/`` folder can be moved or opened anywhere.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.35; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.note { color: #555; font-size: .85em; margin: .2em 0; }
.missing { color: #a33; font-size: .9em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #444; max-width: 1000px; }
nav a { margin-right: 1em; }
"""


@dataclass(frozen=True)
class Section:
    """One part of the page: an anchor id, a heading and its HTML body."""

    id: str
    title: str
    body: str


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_rule(line: str) -> bool:
    return set(line.replace("|", "").strip()) <= {"-", ":", " "} and "-" in line


def markdown_table_html(markdown: str) -> str:
    """HTML of a table rendered by ``bench table --format md``: ``##`` / ``###`` headings, ``>`` lines and
    other text as notes, and every ``| … |`` block (header, rule, rows) as a ``<table>``."""
    out: list[str] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        if line.startswith("|"):
            block = []
            while index < len(lines) and lines[index].startswith("|"):
                block.append(lines[index])
                index += 1
            out.append(_table_block(block))
            continue
        if line.startswith("### "):
            out.append(f"<h4>{escape(line[4:])}</h4>")
        elif line.startswith("## "):
            out.append(f"<h3>{escape(line[3:])}</h3>")
        elif line.startswith(">"):
            out.append(f'<p class="note">{escape(line.lstrip("> "))}</p>')
        elif line.strip():
            out.append(f'<p class="note">{escape(line)}</p>')
        index += 1
    return "\n".join(out)


def _table_block(block: Sequence[str]) -> str:
    header, rows = _cells(block[0]), [_cells(line) for line in block[1:] if not _is_rule(line)]
    return rows_table(header, rows)


def rows_table(headers: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A ``<table>`` with one header row."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def key_value_table(values: Mapping[str, object]) -> str:
    """A two-column ``<table>`` of ``values``."""
    return rows_table(["setting", "value"], [(k, v) for k, v in values.items()])


def figure_html(src: str, caption: str, notes: Sequence[str] = ()) -> str:
    """A ``<figure>`` of the image at the relative path ``src`` with its caption and notes."""
    extra = "".join(f'<br><span class="missing">{escape(n)}</span>' for n in notes)
    return (f'<figure><img src="{escape(src)}" alt="{escape(caption[:120])}">'
            f"<figcaption>{escape(caption)}{extra}</figcaption></figure>")


def missing_html(what: str, reason: str) -> str:
    """A line saying that ``what`` could not be drawn, and why."""
    return f'<p class="missing">{escape(what)}: not available — {escape(reason)}</p>'


def render_page(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page: title, intro lines, a table of contents, the sections."""
    nav = " ".join(f'<a href="#{escape(s.id)}">{escape(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{escape(s.id)}">\n<h2>{escape(s.title)}</h2>\n{s.body}\n</section>'
                     for s in sections)
    lead = "\n".join(f'<p class="note">{escape(line)}</p>' for line in intro)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n{lead}\n<nav>{nav}</nav>\n{body}\n"
            "</body>\n</html>\n")
