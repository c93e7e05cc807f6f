"""Posterior predictive checks: the observed distribution against replicated data sets."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from bayeslmm.plots.common import check_fitted, check_positive_int, kde_density
from bayeslmm.plots.style import COLORS, OKABE_ITO, finish_figure, single_axes


def plot_ppc(
    model: Any,
    *,
    n_draws: int = 50,
    kind: str = "auto",
    seed: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Distribution of the observed response against data sets replicated from the posterior predictive.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    n_draws : int
        Replicated data sets drawn (evenly spaced posterior draws).
    kind : {"auto", "kde", "hist", "ecdf"}
        Densities, histograms (observed bars; replicated proportions as median and 90% range per bin)
        or cumulative distributions. ``"auto"`` picks ``"hist"`` for a response with few integer
        values (ratings, counts), ``"kde"`` otherwise.
    seed : int
        Seed of the replicated draws.
    ax : Axes, optional
        Draw into this Axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    check_fitted(model, "plot_ppc")
    if kind not in ("auto", "kde", "hist", "ecdf"):
        raise ValueError(f"kind must be 'auto', 'kde', 'hist' or 'ecdf', got {kind!r}")
    check_positive_int(n_draws=n_draws)
    y = model.design.y
    if kind == "auto":
        kind = "hist" if _few_integer_values(y) else "kde"
    replicated = model.posterior_predictive(n_draws=n_draws, random_seed=seed)
    fig, ax, owned = single_axes(ax, (6.4, 4.0))
    {"kde": _ppc_kde, "hist": _ppc_hist, "ecdf": _ppc_ecdf}[kind](ax, y, replicated)
    ax.set_xlabel(model.design.formula.response)
    ax.set_ylabel({"kde": "density", "hist": "proportion", "ecdf": "cumulative proportion"}[kind])
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.25)
    finish_figure(fig, owned, title=f"Posterior predictive check: {model.design.formula.text}", ax=ax)
    return fig


def _few_integer_values(y: np.ndarray) -> bool:
    return bool(np.all(np.equal(np.mod(y, 1), 0)) and len(np.unique(y)) <= 25)


def _replicated_curves(ax: Axes, curves: list[np.ndarray]) -> None:
    """One thin line per replicated data set, as a single collection (fast for many draws)."""
    ax.add_collection(
        LineCollection(
            curves,
            colors=COLORS["replicated"],
            linewidths=0.8,
            alpha=0.35,
            label=f"replicated ({len(curves)} draws)",
        )
    )


def _ppc_kde(ax: Axes, y: np.ndarray, replicated: np.ndarray) -> None:
    lo, hi = np.quantile(np.concatenate([y, replicated[: min(5, len(replicated))].ravel()]), [0.001, 0.999])
    pad = 0.05 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 256)
    _replicated_curves(ax, [np.stack([grid, kde_density(r, grid)], axis=1) for r in replicated])
    ax.plot(
        grid,
        kde_density(replicated.ravel(), grid),
        color=COLORS["posterior"],
        linestyle="--",
        linewidth=1.4,
        label="posterior predictive mean",
    )
    ax.plot(grid, kde_density(y, grid), color=OKABE_ITO["black"], linewidth=2.0, label="observed")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(bottom=0)


def _ppc_hist(ax: Axes, y: np.ndarray, replicated: np.ndarray) -> None:
    if _few_integer_values(y):
        values = np.unique(y)
        lo, hi = min(values.min(), np.quantile(replicated, 0.001)), max(values.max(), np.quantile(replicated, 0.999))
        edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0, 1.0)
    else:
        lo, hi = np.quantile(np.concatenate([y, replicated.ravel()]), [0.001, 0.999])
        edges = np.histogram_bin_edges(y, bins=30, range=(lo, hi))
    observed = np.histogram(y, bins=edges)[0] / len(y)
    counts = np.stack([np.histogram(r, bins=edges)[0] for r in replicated]) / replicated.shape[1]
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    ax.bar(
        centers,
        observed,
        width=width * 0.9,
        color="#bdbdbd",
        edgecolor=OKABE_ITO["black"],
        linewidth=0.6,
        label="observed",
    )
    low, mid, high = np.quantile(counts, [0.05, 0.5, 0.95], axis=0)
    ax.vlines(centers, low, high, color=COLORS["posterior"], linewidth=2.2, label="replicated, 90% range")
    ax.scatter(
        centers, mid, s=16, color=COLORS["posterior"], zorder=3, label=f"replicated median ({len(replicated)} draws)"
    )


def _ppc_ecdf(ax: Axes, y: np.ndarray, replicated: np.ndarray) -> None:
    lo, hi = np.quantile(np.concatenate([y, replicated.ravel()]), [0.0005, 0.9995])
    grid = np.linspace(lo, hi, 400)
    _replicated_curves(
        ax, [np.stack([grid, np.searchsorted(np.sort(r), grid, side="right") / len(r)], 1) for r in replicated]
    )
    ax.step(
        grid,
        np.searchsorted(np.sort(y), grid, side="right") / len(y),
        where="post",
        color=OKABE_ITO["black"],
        linewidth=1.8,
        label="observed",
    )
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1.01)
