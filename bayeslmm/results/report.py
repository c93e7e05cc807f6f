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
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

__all__ = [
    "SummaryParts",
    "Summary",
    "ReportTable",
    "layout_text",
    "layout_html",
    "display_table",
    "text_html",
    "significance_stars",
    "p_value_format",
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


def significance_stars(p: float) -> str:
    """pymer4's (and R's) stars for a p-value: ``***`` < .001, ``**`` < .01, ``*`` < .05, ``.`` < .1."""
    if not np.isfinite(p):
        return ""
    for limit, stars in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < limit:
            return stars
    return ""


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


class ReportTable(pd.DataFrame):
    """A result table (ANOVA, post-hoc tests) that is a DataFrame and prints with its title and notes.

    Printing and the notebook display go through :class:`SummaryParts`, like every other result;
    slices and arithmetic give plain DataFrames.

    Attributes
    ----------
    header : list of str
        Title lines.
    footer : list of str
        How to read the table, and notes.
    formats : dict of str to callable
        Per-column formatters.
    """

    _metadata: ClassVar[list[str]] = ["header", "footer", "formats"]

    @property
    def _constructor(self):
        return pd.DataFrame

    @classmethod
    def build(
        cls, frame: pd.DataFrame, header: list[str], footer: list[str] | None = None, formats: dict | None = None
    ) -> "ReportTable":
        table = cls(frame)
        table.attrs.update(frame.attrs)
        table.header, table.footer, table.formats = list(header), list(footer or []), dict(formats or {})
        return table

    @property
    def table(self) -> pd.DataFrame:
        """The numbers as a plain DataFrame."""
        return pd.DataFrame(self)

    def summary_parts(self) -> SummaryParts:
        """Title, table and notes as :class:`SummaryParts`."""
        return SummaryParts(self.header, [("", pd.DataFrame(self))], footer=self.footer, formats=self.formats)

    def __repr__(self) -> str:
        return layout_text(self.summary_parts())

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())


def p_value_format(value: float) -> str:
    """A p-value with three significant digits (``1.15e-16``, ``0.781``)."""
    return "" if not np.isfinite(value) else f"{value:.3g}"
