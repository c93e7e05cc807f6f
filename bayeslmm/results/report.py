"""Report: one path from results to text and HTML.

Every printed result (the Bayesian summary, the frequentist summary, the comparison table) is first
assembled as :class:`SummaryParts` (header lines, titled tables, footer lines, diagnostics);
:func:`layout_text` lays the parts out as text and :func:`layout_html` as HTML for Jupyter, so a result's
text and its HTML can never disagree. :class:`Summary` wraps the parts as the object ``summary()``
returns: it prints as text, renders as HTML in a notebook, and ``str()`` gives the text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

__all__ = [
    "SummaryParts",
    "Summary",
    "layout_text",
    "layout_html",
    "display_table",
    "text_html",
    "DIAGNOSTICS_OK",
]

DIAGNOSTICS_OK = "no problems (0 divergences, R-hat <= 1.01, ESS_bulk >= 400)"
_DIGITS = 3


@dataclass(frozen=True)
class SummaryParts:
    """The content of a printed result, before layout.

    Attributes
    ----------
    header : list of str
        Title, formula, family, numbers of observations and groups.
    tables : list of (str, pandas.DataFrame)
        Titled tables in print order (an empty title prints no title line).
    diagnostics : list of str or None
        The diagnostic warnings of a fit (empty when all is well; the layout then says so); None for
        results without diagnostics.
    footer : list of str
        Lines after the tables (how to read them, notes).
    formats : dict of str to callable
        Per-column formatters; other float columns get three decimals.
    """

    header: list[str]
    tables: list[tuple[str, pd.DataFrame]]
    diagnostics: list[str] | None = None
    footer: list[str] = field(default_factory=list)
    formats: dict[str, Callable] = field(default_factory=dict)


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Effective sample sizes as whole numbers, everything else untouched."""
    frame = frame.copy()
    for column in ("ESS_bulk", "ESS_tail"):
        if column in frame:
            frame[column] = frame[column].round().astype(int)
    return frame


def _float(value: float) -> str:
    return f"{value:.{_DIGITS}f}"


def _formatters(frame: pd.DataFrame, formats: dict[str, Callable]) -> dict[str, Callable]:
    return {column: formats[column] for column in frame.columns if column in formats}


def _diagnostics_line(warnings: list[str]) -> str:
    return f"{len(warnings)} warning(s):" if warnings else DIAGNOSTICS_OK


def layout_text(parts: SummaryParts) -> str:
    """Summary parts as text: header lines, titled tables, footer, and (for a fit) the diagnostics."""
    lines = list(parts.header)
    for title, frame in parts.tables:
        lines.append("")
        if title:
            lines.append(title)
        lines.append(frame.to_string(float_format=_float, formatters=_formatters(frame, parts.formats)))
    if parts.footer:
        lines += [""] + list(parts.footer)
    if parts.diagnostics is not None:
        lines += ["", f"Diagnostics: {_diagnostics_line(parts.diagnostics)}"]
        lines += [f"  - {message}" for message in parts.diagnostics]
    return "\n".join(lines)


def layout_html(parts: SummaryParts) -> str:
    """Summary parts as HTML, one table per section; the twin of :func:`layout_text`."""
    blocks = ["<p>" + "<br>".join(html.escape(line) for line in parts.header) + "</p>"]
    for title, frame in parts.tables:
        if title:
            blocks.append(f"<p><b>{html.escape(title)}</b></p>")
        blocks.append(frame.to_html(float_format=_float, formatters=_formatters(frame, parts.formats)))
    if parts.footer:
        blocks.append("<p><small>" + "<br>".join(html.escape(line) for line in parts.footer) + "</small></p>")
    if parts.diagnostics is not None:
        blocks.append(f"<p>Diagnostics: {html.escape(_diagnostics_line(parts.diagnostics))}</p>")
        if parts.diagnostics:
            items = "".join(f"<li>{html.escape(message)}</li>" for message in parts.diagnostics)
            blocks.append(f"<ul>{items}</ul>")
    return '<div class="bayeslmm-summary">' + "".join(blocks) + "</div>"


def text_html(text: str) -> str:
    """Preformatted HTML of a text, for objects whose display is text only."""
    return f'<pre class="bayeslmm-summary">{html.escape(text)}</pre>'


class Summary(str):
    """What ``summary()`` returns: the text (it *is* a ``str``), printed plainly and shown as HTML in Jupyter.

    ``print(model.summary())`` and ``str(model.summary())`` give the text; as the last line of a
    notebook cell it renders as HTML tables instead of a quoted string.
    """

    parts: SummaryParts

    def __new__(cls, parts: SummaryParts) -> "Summary":
        text = super().__new__(cls, layout_text(parts))
        text.parts = parts
        return text

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return layout_html(self.parts)
