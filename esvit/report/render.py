"""The report as a document: a list of sections, each rendered as markdown (``summary.md``) and as one
self-contained HTML page (``report.html``, the figures embedded).

A section is a heading and its blocks: paragraphs, tables and figures. Text is a sequence of parts: plain
strings, :class:`Code` (monospace) and :class:`Detail` (words the markdown file gives and the HTML page, which
keeps its headings and notes short, leaves out).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["Code", "Detail", "Text", "Table", "Figures", "Block", "Section", "to_markdown", "to_html", "DASH"]

DASH = "—"


class Code(str):
    """A name shown in monospace: `x` in markdown, <code>x</code> in HTML."""


class Detail(str):
    """Words of the markdown only (the HTML page is the shorter read)."""


Text = tuple[str, ...]  # plain strings, Code and Detail parts


@dataclass
class Table:
    """A data frame, its index as the first column unless ``index`` is false; ``cls``: its HTML class."""

    df: pd.DataFrame
    cls: str
    index: bool = True


@dataclass
class Figures:
    """PNG files with captions: embedded in the HTML page; the markdown links those inside ``folder``."""

    items: list[tuple[Path, str]]
    folder: Path


Block = Text | Table | Figures


@dataclass
class Section:
    """A heading (``level`` 1-3) and what follows it."""

    title: Text
    level: int = 2
    blocks: list[Block] = field(default_factory=list)


# -- cells ----------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return DASH
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """The header and the formatted cells of a table."""
    df = table.df
    head = ([df.index.name or ""] if table.index else []) + [str(c) for c in df.columns]
    rows = []
    for row in df.itertuples(index=True, name=None):  # itertuples keeps each column's type (iterrows upcasts)
        rows.append(([str(row[0])] if table.index else []) + [_fmt(v) for v in row[1:]])
    return head, rows


# -- markdown -------------------------------------------------------------------------------------------


def _md_text(text: Text) -> str:
    return "".join(f"`{part}`" if isinstance(part, Code) else str(part) for part in text)


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Table):
        head, rows = _rows(block)
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    if isinstance(block, Figures):
        return [f"![{cap}]({p.name})" for p, cap in block.items if p.parent == block.folder]
    return [_md_text(block)]


def to_markdown(sections: list[Section]) -> str:
    """The sections as markdown: a blank line around each heading and between blocks."""
    lines: list[str] = []
    for section in sections:
        lines += ([""] if lines else []) + ["#" * section.level + " " + _md_text(section.title)]
        for block in section.blocks:
            lines += ["", *_md_block(block)]
    return "\n".join(lines) + "\n"


# -- html -----------------------------------------------------------------------------------------------

STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;"
    "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}"
)


def _html_text(text: Text, quote: bool = True) -> str:
    """Escaped text, Detail parts left out (headings leave quotes as they are: "The paper's Table 1")."""
    out = []
    for part in text:
        if not isinstance(part, Detail):
            escaped = html.escape(part, quote=quote)
            out.append(f"<code>{escaped}</code>" if isinstance(part, Code) else escaped)
    return "".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(alt)
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'


def _html_block(block: Block) -> str:
    if isinstance(block, Table):
        head, rows = _rows(block)
        out = [
            f'<table class="{block.cls}"><thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>"
        ]
        out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        return "".join(out) + "</tbody></table>"
    if isinstance(block, Figures):
        return "".join(_img(p, cap) for p, cap in block.items)
    return f"<p>{_html_text(block)}</p>"


def to_html(sections: list[Section], title: str = "EsViT report") -> str:
    """The sections as one self-contained HTML page (the figures embedded as data URIs)."""
    body = []
    for section in sections:
        body.append(f"<h{section.level}>{_html_text(section.title, quote=False)}</h{section.level}>")
        body += [_html_block(block) for block in section.blocks]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
