"""Report: the printed forms of a model (an lme4-like summary, its HTML twin, a one-line repr).

The summary is assembled once, as plain parts (header lines, titled tables, diagnostics), by
:func:`summary_parts`; :func:`summary_text` lays the parts out as text and :func:`summary_html` as
HTML tables for Jupyter, so the two can never disagree.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from bayeslmm.lmer import Lmer

__all__ = [
    "SummaryParts",
    "summary_parts",
    "summary_text",
    "summary_html",
    "layout_text",
    "layout_html",
    "display_table",
    "short_repr",
    "text_html",
]

_DIAGNOSTICS_OK = "no problems (0 divergences, R-hat <= 1.01, ESS_bulk >= 400)"
_DIGITS = 3


@dataclass(frozen=True)
class SummaryParts:
    """The content of a summary, before layout.

    Attributes
    ----------
    header : list of str
        Title, formula, family, numbers of observations and groups.
    tables : list of (str, pandas.DataFrame)
        Titled tables in print order, already rounded for display where that matters (ESS).
    diagnostics : list of str
        The diagnostic warnings; empty when all is well.
    """

    header: list[str]
    tables: list[tuple[str, pd.DataFrame]]
    diagnostics: list[str]


def short_repr(model: "Lmer") -> str:
    """``Lmer('Reaction ~ Days + (Days | Subject)', n=180, Subject: 18 groups, fitted: 4x1000 draws)``."""
    groups = ", ".join(f"{factor}: {count}" for factor, count in model.grps.items())
    state = (
        f"fitted: {model.sampler.chains}x{model.sampler.draws} draws"
        + (f", {len(model.warnings)} warning(s)" if model.warnings else "")
        if model.fitted
        else "not fitted"
    )
    return f"Lmer({model.formula!r}, family={model.family.name!r}, n={model.design.n_obs}, groups: {groups}; {state})"


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Effective sample sizes as whole numbers, everything else untouched."""
    frame = frame.copy()
    for column in ("ESS_bulk", "ESS_tail"):
        if column in frame:
            frame[column] = frame[column].round().astype(int)
    return frame


def _float(value: float) -> str:
    return f"{value:.{_DIGITS}f}"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_string(float_format=_float)


def _header(model: "Lmer") -> list[str]:
    design = model.design
    groups = ", ".join(f"{factor}, {count}" for factor, count in model.grps.items())
    title = (
        f"Bayesian linear mixed model (bayeslmm) fit by {model.sampler}"
        if model.fitted
        else "Bayesian linear mixed model (bayeslmm), not fitted yet: call .fit()"
    )
    return [
        title,
        f"Formula: {model.formula}",
        f"Family: {model.family.name} ({model.family.link} link)",
        f"Number of obs: {design.n_obs}; groups: {groups}"
        + (f"; {design.n_dropped} rows dropped for missing values" if design.n_dropped else ""),
    ]


def summary_parts(model: "Lmer") -> SummaryParts:
    """What the summary of a fitted ``model`` says; an unfitted one lists its priors instead."""
    if not model.fitted:
        return SummaryParts(_header(model), [("Priors:", model.priors)], [])
    tables = [("Random effects (posterior median of Var and Std, 95% interval of Std):", model.ranef_var)]
    if model.ranef_corr is not None:
        tables.append(("Correlations of random effects (posterior median, 95% interval):", model.ranef_corr))
    tables.append(
        (
            "Fixed effects (posterior mean, 95% equal-tailed interval, posterior SD, probability of direction):",
            display_table(model.coefs.drop(columns=["ESS_tail"])),
        )
    )
    return SummaryParts(_header(model), tables, list(model.warnings))


def _diagnostics_line(warnings: list[str]) -> str:
    return f"{len(warnings)} warning(s):" if warnings else _DIAGNOSTICS_OK


def summary_text(model: "Lmer") -> str:
    """The summary :meth:`Lmer.summary` prints."""
    return layout_text(summary_parts(model), diagnostics=model.fitted)


def summary_html(model: "Lmer") -> str:
    """The summary as HTML (Jupyter's rich display): header, one HTML table per section, diagnostics."""
    return layout_html(summary_parts(model), diagnostics=model.fitted)


def layout_text(parts: SummaryParts, diagnostics: bool = True) -> str:
    """Summary parts as text: header lines, titled tables, and (for a fit) the diagnostics line."""
    lines = list(parts.header)
    for title, frame in parts.tables:
        lines += ["", title, _table(frame)]
    if diagnostics:
        lines += ["", f"Diagnostics: {_diagnostics_line(parts.diagnostics)}"]
        lines += [f"  - {message}" for message in parts.diagnostics]
    return "\n".join(lines)


def layout_html(parts: SummaryParts, diagnostics: bool = True) -> str:
    """Summary parts as HTML, one table per section; the twin of :func:`layout_text`."""
    blocks = ["<p>" + "<br>".join(html.escape(line) for line in parts.header) + "</p>"]
    for title, frame in parts.tables:
        blocks.append(f"<p><b>{html.escape(title)}</b></p>")
        blocks.append(frame.to_html(float_format=_float))
    if diagnostics:
        blocks.append(f"<p>Diagnostics: {html.escape(_diagnostics_line(parts.diagnostics))}</p>")
        if parts.diagnostics:
            items = "".join(f"<li>{html.escape(message)}</li>" for message in parts.diagnostics)
            blocks.append(f"<ul>{items}</ul>")
    return '<div class="bayeslmm-summary">' + "".join(blocks) + "</div>"


def text_html(text: str) -> str:
    """Preformatted HTML of a text summary, for results whose summary is text only."""
    return f'<pre class="bayeslmm-summary">{html.escape(text)}</pre>'
