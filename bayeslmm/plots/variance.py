"""Posterior densities of the variance components (SDs and correlations), REML estimates marked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bayeslmm.errors import DataError
from bayeslmm.plots.common import (
    check_fitted,
    check_probs,
    density_grid,
    hyperparameters,
    kde_density,
    reml_fit,
)
from bayeslmm.plots.style import COLORS, finish_figure, make_facets, percent


def plot_variance_components(
    model: Any,
    *,
    reml: Any = True,
    correlations: bool = True,
    residual: bool = True,
    prob: float = 0.95,
    col_wrap: int = 3,
    panel_size: tuple[float, float] = (3.0, 2.2),
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Posterior densities of the group SDs, the residual SD and the correlations, REML estimate marked.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    reml : bool or FrequentistResult
        Mark the REML estimates: ``True`` fits :func:`bayeslmm.frequentist.fit_frequentist` (cached per
        model), or pass a fitted result; ``False`` for none. A failed REML fit is reported in a note.
    correlations : bool
        Include one panel per correlation.
    residual : bool
        Include the residual SD ``sigma``.
    prob : float
        Probability of the shaded credible interval.
    col_wrap : int
        Panels per row.
    panel_size : (float, float)
        Inches per panel.
    axes : sequence of Axes, optional
        Draw into these (one per parameter).

    Returns
    -------
    matplotlib.figure.Figure
    """
    check_fitted(model, "plot_variance_components")
    check_probs([prob])
    params = [
        p
        for p in hyperparameters(model)
        if p.kind == "sd" or (correlations and p.kind == "corr") or (residual and p.kind == "sigma")
    ]
    estimates, note = _reml_estimates(model, reml)
    fig, panels, owned = make_facets(len(params), col_wrap, panel_size, False, axes, sharex=False)
    for panel, param in zip(panels, params):
        draws = param.draws
        grid = density_grid(draws, param.bounds, extra=estimates.get(param.name))
        density = kde_density(draws, grid, *param.bounds)
        lower, upper = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2])
        inside = (grid >= lower) & (grid <= upper)
        panel.fill_between(grid, 0, density, where=inside, color=COLORS["posterior"], alpha=0.3, linewidth=0)
        panel.plot(grid, density, color=COLORS["posterior"], linewidth=1.4)
        panel.axvline(np.median(draws), color=COLORS["posterior"], linewidth=1.2)
        if param.name in estimates:
            panel.axvline(estimates[param.name], color=COLORS["frequentist"], linestyle="--", linewidth=1.4)
        panel.set_title(param.title, fontsize=9)
        panel.set_yticks([])
        panel.set_ylim(bottom=0)
        panel.tick_params(labelsize=8)
        for side in ("left", "right", "top"):
            panel.spines[side].set_visible(False)
    handles = [
        Line2D([], [], color=COLORS["posterior"], linewidth=1.4, label="posterior density"),
        Patch(color=COLORS["posterior"], alpha=0.3, label=f"{percent(prob)} credible interval"),
        Line2D([], [], color=COLORS["posterior"], linewidth=1.2, label="posterior median"),
    ]
    if estimates:
        handles.append(
            Line2D([], [], color=COLORS["frequentist"], linestyle="--", linewidth=1.4, label="REML estimate")
        )
    finish_figure(
        fig, owned, title="Variance components: " + model.design.formula.text, legend=handles, note=note, ax=panels[0]
    )
    return fig


def _reml_estimates(model: Any, reml: Any) -> tuple[dict[str, float], str]:
    """REML point estimates keyed by hyperparameter name, and a note when they are unavailable."""
    if reml is False or reml is None:
        return {}, ""
    if reml is not True and not hasattr(reml, "ranef_var"):
        raise ValueError(f"reml must be True, False or a FrequentistResult, got {type(reml).__name__}")
    try:
        result = reml_fit(model) if reml is True else reml
    except (DataError, ValueError, np.linalg.LinAlgError) as exc:
        return {}, f"REML estimate unavailable: {exc}"
    table, corr = result.ranef_var, result.ranef_corr
    out: dict[str, float] = {"sigma": float(result.sigma)}
    sds = iter(table["Std"].to_numpy(dtype=float))  # one row per (block, term) in block order
    for block in model.design.blocks:
        for term in block.terms:
            out[f"sd({term}|{block.name})"] = float(next(sds))
        if corr is None or block.n_terms < 2:
            continue
        for _, row in corr[corr.index == block.factor].iterrows():
            pair = (row["IV1"], row["IV2"])
            if all(term in block.terms for term in pair):
                first, second = sorted(pair, key=block.terms.index)
                out.setdefault(f"corr({first},{second}|{block.name})", float(row["Corr"]))
    return out, ""
