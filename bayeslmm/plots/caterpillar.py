"""Caterpillar plot: sorted group effects with their intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bayeslmm.plots.common import (
    check_fitted,
    check_probs,
    fixed_means,
    group_draws,
    group_terms,
    resolve_terms,
)
from bayeslmm.plots.style import (
    COLORS,
    DEFAULT_PROBS,
    OKABE_ITO,
    finish_figure,
    interval_handles,
    interval_widths,
    make_facets,
    shorten,
)


def plot_caterpillar(
    model: Any,
    group: str | None = None,
    terms: str | Sequence[str] | None = None,
    *,
    which: str = "ranef",
    probs: Sequence[float] = DEFAULT_PROBS,
    sort_by: str | None = None,
    max_labels: int = 60,
    panel_width: float = 3.4,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Group effects with nested credible intervals, sorted, one panel per term (lme4's dotplot).

    Parameters
    ----------
    model : Lmer
        A fitted model.
    group : str, optional
        Grouping factor; the model's first by default.
    terms : str or sequence of str, optional
        Group terms to draw; all of the factor's by default.
    which : {"ranef", "fixef"}
        ``"ranef"``: deviations from the fixed effects (reference line at 0); ``"fixef"``: group
        coefficients, fixed plus random (reference line at the fixed effect).
    probs : sequence of float
        Probabilities of the nested intervals (thick inner, thin outer).
    sort_by : str, optional
        Term whose posterior mean orders the rows (shared by all panels); the first term by default.
    max_labels : int
        With more levels than this, rows are drawn without level labels (as a ranked band) and a
        note says so.
    panel_width : float
        Width of a panel in inches.
    axes : sequence of Axes, optional
        Draw into these (one per term).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError, DataError, ValueError
        Unfitted model; unknown factor or term; ``which`` not ``"ranef"`` or ``"fixef"``.
    """
    check_fitted(model, "plot_caterpillar")
    if which not in ("ranef", "fixef"):
        raise ValueError(f"which must be 'ranef' (group deviations) or 'fixef' (group coefficients), got {which!r}")
    check_probs(probs)
    design = model.design
    factor = design.random.resolve_factor(group)
    available = group_terms(design, factor)
    chosen = resolve_terms(available if terms is None else terms, available, f"terms with a group effect on {factor!r}")
    sort_term = resolve_terms(sort_by or chosen[0], available, f"terms with a group effect on {factor!r}")[0]
    total = which == "fixef"

    posterior = model.posterior
    draws = group_draws(design, posterior, factor, list(dict.fromkeys(chosen + [sort_term])), total=total)
    columns = list(dict.fromkeys(chosen + [sort_term]))
    order = np.argsort(draws[..., columns.index(sort_term)].mean(axis=0), kind="stable")
    levels = design.factors[factor]
    G = len(levels)
    labelled = G <= max_labels
    height = float(np.clip(0.2 * G + 1.4, 3.0, 10.0)) if labelled else 5.0
    width = max(panel_width, 6.0 / len(chosen))
    fig, panels, owned = make_facets(len(chosen), len(chosen), (width, height), True, axes, sharex=False)
    beta = fixed_means(design, posterior, chosen)
    for panel, term, reference in zip(panels, chosen, beta):
        values = draws[..., columns.index(term)][:, order]  # (S, G) sorted
        _caterpillar_panel(panel, values, probs, reference if total else 0.0, labelled)
        panel.set_title(term, fontsize=10)
        panel.set_xlabel("coefficient" if total else "deviation from fixed effect", fontsize=8)
    if labelled:
        panels[0].set_yticks(np.arange(G), [shorten(levels[g]) for g in order], fontsize=7 if G > 30 else 8)
    else:
        panels[0].set_yticks([])
    panels[0].set_ylabel(f"{factor} (sorted by {sort_term})")
    for panel in panels[1:]:
        panel.tick_params(labelleft=False)
    note = (
        ""
        if labelled
        else f"{G} levels of {factor}, one row each, ranked; level labels omitted (more than max_labels={max_labels})."
    )
    kind = "group coefficients (fixef)" if total else "group effects (ranef)"
    handles = interval_handles(probs, small_dots=not labelled) + [
        Line2D([], [], color=COLORS["reference"], linestyle="--", label="fixed effect" if total else "zero")
    ]
    finish_figure(
        fig,
        owned,
        title=f"{factor} {kind}, posterior means with credible intervals",
        legend=handles,
        note=note,
        ax=panels[0],
    )
    return fig


def _caterpillar_panel(ax: Axes, values: np.ndarray, probs, reference: float, labelled: bool) -> None:
    G = values.shape[1]
    y = np.arange(G)
    widths = interval_widths(len(probs))
    many = not labelled
    for prob, width in zip(sorted(probs, reverse=True), widths):
        lower, upper = np.quantile(values, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        segments = np.stack([np.stack([lower, y], 1), np.stack([upper, y], 1)], axis=1)
        ax.add_collection(
            LineCollection(
                segments, colors=COLORS["posterior"], linewidths=0.4 if many else width, alpha=0.35 if many else 0.9
            )
        )
    if many:
        ax.scatter(values.mean(axis=0), y, s=2, color=OKABE_ITO["black"], zorder=3, linewidths=0)
    else:
        ax.scatter(
            values.mean(axis=0), y, s=18, color="white", edgecolors=COLORS["posterior"], linewidths=1.2, zorder=3
        )
    ax.axvline(reference, color=COLORS["reference"], linestyle="--", linewidth=1)
    ax.set_ylim(-1, G)
    ax.autoscale_view(scaley=False)
    ax.grid(axis="x", alpha=0.25)
    ax.tick_params(labelsize=8)
