"""Shrinkage: each group's no-pooling estimate moving to its partial-pooling estimate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bayeslmm.engines.posterior_names import var_names
from bayeslmm.plots.common import (
    check_fitted,
    check_positive_int,
    check_probability,
    fixed_means,
    flat_draws,
    group_draws,
    group_terms,
    no_pooling_fits,
    resolve_terms,
)
from bayeslmm.plots.style import (
    COLORS,
    OKABE_ITO,
    finish_figure,
    percent,
    shorten,
    single_axes,
)
from bayeslmm.spec.design import Design


def plot_shrinkage(
    model: Any,
    terms: str | Sequence[str] | None = None,
    group: str | None = None,
    *,
    ellipses: bool = False,
    population: bool = True,
    ellipse_prob: float = 0.5,
    max_groups: int | None = None,
    label_groups: bool | None = None,
    ax: Axes | None = None,
    seed: int = 0,
) -> Figure:
    """Each group's no-pooling estimate joined by an arrow to its partial-pooling estimate.

    With two terms (the default when the group block has two or more) the picture is a plane, e.g.
    intercept against slope: every arrow points from the group's own least-squares fit to its posterior
    mean, the population mean (the fixed effects) is marked, and the estimated population
    distribution of group coefficients is drawn as 50% and 95% contours. Groups with little or noisy
    data move most, along the correlation of the group effects. With one term the picture is 1-D:
    one row per group, sorted by the no-pooling estimate.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    terms : str or sequence of str, optional
        One term (1-D) or two terms (2-D) with a group effect on ``group``; the first two by default.
    group : str, optional
        Grouping factor; the model's first by default.
    ellipses : bool
        2-D: draw each group's ``ellipse_prob`` posterior ellipse (normal approximation of its draws).
        1-D: draw each group's 95% credible interval.
    population : bool
        Draw the estimated population distribution (2-D) or its mean +- 1 SD band (1-D).
    ellipse_prob : float
        Probability of the group ellipses.
    max_groups : int, optional
        Most groups drawn (a random subset beyond that, with a note): 300 in 2-D, 60 in 1-D.
    label_groups : bool, optional
        Write each level's name next to its no-pooling point (2-D) or on the y-axis (1-D); by default
        when there are few groups.
    ax : Axes, optional
        Draw into this Axes.
    seed : int
        Seed of the subsampling.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError, DataError
        Unfitted model; unknown factor or term, or a term without a group effect.
    """
    check_fitted(model, "plot_shrinkage")
    design = model.design
    factor = design.random.resolve_factor(group)
    available = group_terms(design, factor)
    if terms is None:
        terms = available[:2]
    chosen = resolve_terms(terms, available, f"terms with a group effect on {factor!r}")
    if len(chosen) > 2:
        raise ValueError(f"plot_shrinkage draws one or two terms, got {len(chosen)}: {chosen}")
    check_probability(ellipse_prob=ellipse_prob)

    posterior = model.posterior
    partial_draws = group_draws(design, posterior, factor, chosen, total=True)  # (S, G, t)
    nopool = no_pooling_fits(model, factor)[chosen].to_numpy()  # (G, t), NaN where unidentified
    beta_mean = fixed_means(design, posterior, chosen)
    usable = np.flatnonzero(np.all(np.isfinite(nopool), axis=1))
    notes = []
    if len(usable) < nopool.shape[0]:
        notes.append(
            f"{nopool.shape[0] - len(usable)} group(s) whose own data cannot identify "
            f"{' and '.join(chosen)} have no no-pooling estimate and are left out."
        )
    limit = max_groups if max_groups is not None else (300 if len(chosen) == 2 else 60)
    check_positive_int(max_groups=limit)
    if len(usable) > limit:
        rng = np.random.default_rng(seed)
        usable = np.sort(rng.choice(usable, limit, replace=False))
        notes.append(f"Showing a random {limit} of {nopool.shape[0]} groups of {factor}; pass max_groups= to change.")
    label = label_groups if label_groups is not None else len(usable) <= (30 if len(chosen) == 2 else 60)
    size = (6.4, 5.6) if len(chosen) == 2 else (6.4, float(np.clip(0.15 * len(usable) + 1.8, 4.5, 12.0)))
    fig, ax, owned = single_axes(ax, size)
    data = _Shrinkage(model.design, posterior, factor, chosen, partial_draws, nopool, beta_mean, usable, label)
    if len(chosen) == 2:
        _shrinkage_2d(ax, data, ellipses, population, ellipse_prob)
        title = f"Shrinkage of {factor} coefficients: no pooling \u2192 partial pooling"
    else:
        _shrinkage_1d(ax, data, ellipses, population)
        title = f"Shrinkage of {chosen[0]} by {factor}: no pooling \u2192 partial pooling"
    finish_figure(fig, owned, title=title, note=" ".join(notes), ax=ax)
    return fig


@dataclass(frozen=True)
class _Shrinkage:
    """What a shrinkage plot draws: per-group draws (S, G, t) and no-pooling estimates (G, t) of ``terms``,
    the fixed-effect means, the positions ``rows`` of the groups drawn and whether to label them."""

    design: Design
    posterior: Any
    factor: str
    terms: list
    draws: np.ndarray
    nopool: np.ndarray
    beta_mean: np.ndarray
    rows: np.ndarray
    label: bool


def _arrows(ax: Axes, x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> None:
    """One arrow per group (a single Quiver artist, fast for hundreds of groups)."""
    ax.quiver(
        x, y, dx, dy, angles="xy", scale_units="xy", scale=1, width=0.003, headwidth=4, headlength=5,
        headaxislength=4.5, color="#555555", alpha=0.8, zorder=2,
    )  # fmt: skip


def _shrinkage_2d(ax: Axes, data: _Shrinkage, ellipses: bool, population: bool, prob: float) -> None:
    factor, terms, rows = data.factor, data.terms, data.rows
    if population:
        _population_contours(ax, data.design, data.posterior, factor, terms, data.beta_mean)
    if ellipses:
        _group_ellipses(ax, data.draws[:, rows, :], prob)
    start, end = data.nopool[rows], data.draws.mean(axis=0)[rows]
    ax.scatter(*start.T, s=18, color=COLORS["no_pooling"], zorder=3, label=f"no pooling (OLS per {factor})")
    ax.scatter(*end.T, s=18, color=COLORS["posterior"], zorder=4, label="partial pooling (posterior mean)")
    _arrows(ax, start[:, 0], start[:, 1], end[:, 0] - start[:, 0], end[:, 1] - start[:, 1])
    ax.scatter(
        *data.beta_mean, s=140, marker="X", color=OKABE_ITO["black"], edgecolors="white", linewidths=1, zorder=6,
        label="population mean (fixed effects)",
    )  # fmt: skip
    if data.label:
        levels = data.design.factors[factor]
        for g in rows:
            ax.annotate(shorten(levels[g]), data.nopool[g], xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(f"{terms[0]}  ({factor} coefficient)")
    ax.set_ylabel(f"{terms[1]}  ({factor} coefficient)")
    handles, _ = ax.get_legend_handles_labels()
    if population:
        label = "population distribution (50%, 95%)"
        handles.append(Line2D([], [], color=COLORS["reference"], linestyle="--", label=label))
    if ellipses:
        label = f"{percent(prob)} posterior ellipse per group"
        handles.append(Patch(facecolor="none", edgecolor=COLORS["posterior"], label=label))
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    ax.grid(alpha=0.25)


def _population_contours(ax, design, posterior, factor, terms, center) -> None:
    """Contours of the estimated normal distribution of group coefficients (posterior-mean SDs, corr)."""
    cov = _population_covariance(design, posterior, factor, terms)
    for prob in (0.5, 0.95):
        curve = _ellipse_points(center, cov, prob)
        ax.plot(curve[:, 0], curve[:, 1], color=COLORS["reference"], linestyle="--", linewidth=1, zorder=1)


def _population_covariance(design, posterior, factor, terms) -> np.ndarray:
    """Covariance of two group terms: posterior mean of ``diag(sd) corr diag(sd)``.

    Terms in separate blocks (``||``) are independent: a diagonal covariance.
    """
    for block in design.blocks_of(factor):
        if all(t in block.terms for t in terms):
            names = var_names(block)
            idx = [block.terms.index(t) for t in terms]
            sd = flat_draws(posterior, names["sd"])[:, idx]
            corr = (
                flat_draws(posterior, names["corr"])[:, idx][:, :, idx]
                if block.n_terms > 1
                else np.ones((len(sd), 1, 1))
            )
            return (sd[:, :, None] * corr * sd[:, None, :]).mean(axis=0)
    terms_sd = []
    for term in terms:
        for block in design.blocks_of(factor):
            if term in block.terms:
                terms_sd.append(flat_draws(posterior, var_names(block)["sd"])[:, block.terms.index(term)])
    return np.diag([np.mean(sd**2) for sd in terms_sd])  # separate blocks (||): independent


def _ellipse_points(center, cov: np.ndarray, prob: float, n: int = 90) -> np.ndarray:
    """Points on the ``prob`` contour of a bivariate normal."""
    radius = np.sqrt(-2.0 * np.log(1.0 - prob))
    values, vectors = np.linalg.eigh(cov)
    angle = np.linspace(0, 2 * np.pi, n)
    circle = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return np.asarray(center) + radius * circle * np.sqrt(np.clip(values, 0, None)) @ vectors.T


def _group_ellipses(ax, draws: np.ndarray, prob: float) -> None:
    """Normal-approximation posterior ellipse of each group's two coefficients, one LineCollection."""
    centered = draws - draws.mean(axis=0)
    cov = np.einsum("sgi,sgj->gij", centered, centered) / (draws.shape[0] - 1)
    curves = [_ellipse_points(draws[:, g].mean(axis=0), cov[g], prob, n=48) for g in range(draws.shape[1])]
    ax.add_collection(LineCollection(curves, colors=COLORS["posterior"], linewidths=0.7, alpha=0.45, zorder=1))


def _shrinkage_1d(ax: Axes, data: _Shrinkage, intervals: bool, population: bool) -> None:
    factor, term = data.factor, data.terms[0]
    draws, nopool, beta = data.draws[..., 0], data.nopool[:, 0], float(data.beta_mean[0])
    order = data.rows[np.argsort(nopool[data.rows], kind="stable")]
    y = np.arange(len(order))
    partial = draws.mean(axis=0)
    if population:
        sd = _population_sd(data.design, data.posterior, factor, term)
        label = "population mean \u00b1 1 SD"
        ax.axvspan(beta - sd, beta + sd, color=COLORS["reference"], alpha=0.12, linewidth=0, label=label)
    ax.axvline(beta, color=OKABE_ITO["black"], linewidth=1.2, label="population mean (fixed effect)")
    if intervals:
        lower, upper = np.quantile(draws[:, order], [0.025, 0.975], axis=0)
        ax.hlines(y, lower, upper, color=COLORS["posterior"], alpha=0.35, linewidth=2.2, label="95% credible interval")
    ax.scatter(nopool[order], y, s=20, color=COLORS["no_pooling"], zorder=3, label=f"no pooling (OLS per {factor})")
    ax.scatter(partial[order], y, s=20, color=COLORS["posterior"], zorder=4, label="partial pooling (posterior mean)")
    _arrows(ax, nopool[order], y, partial[order] - nopool[order], np.zeros(len(order)))
    levels = data.design.factors[factor]
    if data.label:
        ax.set_yticks(y, [shorten(levels[g]) for g in order], fontsize=7 if len(order) > 30 else 8)
    else:
        ax.set_yticks([])
    ax.set_ylim(-0.8, len(order) - 0.2)
    ax.set_ylabel(f"{factor} (sorted by no-pooling estimate)")
    ax.set_xlabel(f"{term}  ({factor} coefficient)")
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    ax.grid(axis="x", alpha=0.25)


def _population_sd(design, posterior, factor, term) -> float:
    for block in design.blocks_of(factor):
        if term in block.terms:
            return float(flat_draws(posterior, var_names(block)["sd"])[:, block.terms.index(term)].mean())
    return 0.0
