"""Fixed-effect posteriors, optionally beside the REML estimates and confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bayeslmm.errors import DataError
from bayeslmm.plots.common import (
    check_fitted,
    check_probs,
    flat_draws,
    kde_density,
    reml_fit,
    resolve_terms,
)
from bayeslmm.plots.style import (
    COLORS,
    DEFAULT_PROBS,
    finish_figure,
    interval_handles,
    interval_widths,
    make_facets,
)
from bayeslmm.spec.random_effects import INTERCEPT


def plot_coefs(
    model: Any,
    terms: str | Sequence[str] | None = None,
    *,
    kind: str = "halfeye",
    probs: Sequence[float] = DEFAULT_PROBS,
    frequentist: Any = False,
    intercept: bool = True,
    row_height: float = 1.1,
    width: float = 6.4,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Fixed-effect posteriors, one row per term, as half-eyes (density over intervals) or intervals.

    Every row has its own x-scale, because an intercept and a slope rarely share one.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    terms : str or sequence of str, optional
        Fixed terms to draw; all by default.
    kind : {"halfeye", "interval"}
        Density above nested intervals, or the intervals alone.
    probs : sequence of float
        Probabilities of the nested credible intervals.
    frequentist : bool, FrequentistResult or pandas.DataFrame
        Draw the REML estimate and its 95% confidence interval under each posterior: ``True`` fits
        :func:`bayeslmm.frequentist.fit_frequentist` (cached per model); or pass a fitted result, or a
        table with ``Estimate``, ``2.5_ci`` and ``97.5_ci`` indexed by term.
    intercept : bool
        Include ``(Intercept)`` when ``terms`` is not given.
    row_height, width : float
        Size in inches.
    axes : sequence of Axes, optional
        Draw into these (one per term).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError, DataError, ValueError
        Unfitted model; unknown term; bad ``kind``.
    """
    check_fitted(model, "plot_coefs")
    if kind not in ("halfeye", "interval"):
        raise ValueError(f"kind must be 'halfeye' or 'interval', got {kind!r}")
    check_probs(probs)
    design = model.design
    available = list(design.fixed_terms)
    default = [t for t in available if intercept or t != INTERCEPT] or available
    chosen = resolve_terms(default if terms is None else terms, available, "fixed terms")
    reference = _frequentist_coefs(model, frequentist)

    beta = flat_draws(model.posterior, "beta")
    fig, panels, owned = make_facets(len(chosen), 1, (width, row_height), False, axes, sharex=False)
    for panel, term in zip(panels, chosen):
        draws = beta[:, available.index(term)]
        row = None if reference is None else reference.loc[term]
        _coef_row(panel, draws, probs, kind, row)
        panel.set_ylabel(term, rotation=0, ha="right", va="center", fontsize=10)
    handles = interval_handles(probs)
    if kind == "halfeye":
        handles.insert(0, Patch(color=COLORS["posterior"], alpha=0.35, label="posterior density"))
    if reference is not None:
        handles.append(
            Line2D(
                [],
                [],
                color=COLORS["frequentist"],
                marker="D",
                markersize=4,
                linewidth=1.2,
                label="REML estimate, 95% CI",
            )
        )
    finish_figure(fig, owned, title="Fixed effects: " + design.formula.text, legend=handles, ax=panels[0])
    return fig


def _coef_row(ax: Axes, draws: np.ndarray, probs, kind: str, reference: pd.Series | None) -> None:
    color = COLORS["posterior"]
    lo, hi = np.quantile(draws, [0.003, 0.997])
    if reference is not None:
        lo, hi = min(lo, reference["2.5_ci"]), max(hi, reference["97.5_ci"])
    pad = 0.08 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 256)
    if kind == "halfeye":
        density = kde_density(draws, grid)
        scaled = 0.85 * density / density.max() if density.max() > 0 else density
        ax.fill_between(grid, 0.0, scaled, color=color, alpha=0.35, linewidth=0)
        ax.plot(grid, scaled, color=color, linewidth=1)
    y_interval = -0.12 if kind == "halfeye" else 0.0
    for prob, width in zip(sorted(probs, reverse=True), interval_widths(len(probs))):
        lower, upper = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2])
        ax.plot([lower, upper], [y_interval] * 2, color=color, linewidth=width, solid_capstyle="butt")
    ax.scatter([np.mean(draws)], [y_interval], s=26, color="white", edgecolors=color, linewidths=1.3, zorder=4)
    if reference is not None:
        y_ref = y_interval - 0.2
        ax.plot([reference["2.5_ci"], reference["97.5_ci"]], [y_ref] * 2, color=COLORS["frequentist"], linewidth=1.2)
        ax.scatter([reference["Estimate"]], [y_ref], marker="D", s=20, color=COLORS["frequentist"], zorder=4)
    if grid[0] < 0 < grid[-1]:
        ax.axvline(0, color=COLORS["reference"], linestyle="--", linewidth=0.9)
    ax.set_ylim(-0.5 if reference is not None else -0.35, 1.0 if kind == "halfeye" else 0.35)
    ax.set_xlim(grid[0], grid[-1])
    ax.set_yticks([])
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.25)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def _frequentist_coefs(model: Any, frequentist: Any) -> pd.DataFrame | None:
    if frequentist is False or frequentist is None:
        return None
    if isinstance(frequentist, pd.DataFrame):
        table = frequentist
    elif frequentist is True:
        table = reml_fit(model).coefs
    elif hasattr(frequentist, "coefs"):
        table = frequentist.coefs
    else:
        raise ValueError(
            "frequentist must be True, False, a FrequentistResult or a DataFrame with Estimate, "
            f"2.5_ci and 97.5_ci; got {type(frequentist).__name__}"
        )
    needed = {"Estimate", "2.5_ci", "97.5_ci"}
    if not needed <= set(table.columns):
        raise ValueError(f"the frequentist table needs columns {sorted(needed)}, it has {list(table.columns)}")
    missing = [t for t in model.design.fixed_terms if t not in table.index]
    if missing:
        raise DataError(f"the frequentist table has no row for fixed term(s) {missing}")
    return table
