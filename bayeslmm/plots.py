"""Plots: the pictures that make partial pooling and posterior uncertainty visible.

Every function takes a fitted :class:`~bayeslmm.Lmer` (or, for :func:`plot_compare`, a comparison
table), draws with matplotlib and returns the :class:`~matplotlib.figure.Figure`. Single-panel plots
accept ``ax=`` to draw into an existing Axes; faceted plots accept ``axes=`` (a sequence with at least
one Axes per panel). Everything is computed from the posterior draws with NumPy: nothing is compiled
or resampled, so the plots are quick even for large models.

=================================  ===============================================================
function                           picture
=================================  ===============================================================
:func:`plot_group_fits`            one facet per group: data, posterior mean and nested credible
                                   bands of the group's expected response; optional no-pooling and
                                   complete-pooling overlays
:func:`plot_shrinkage`             no-pooling estimate -> partial-pooling estimate of every group,
                                   2-D (two terms) or 1-D (one term)
:func:`plot_caterpillar`           sorted group effects with intervals, one panel per term
:func:`plot_coefs`                 fixed-effect posteriors (half-eye or intervals), optionally with
                                   the REML estimate and confidence interval beside each
:func:`plot_variance_components`   posterior densities of SDs and correlations, REML estimate marked
:func:`plot_ppc`                   observed distribution against replicated data sets
:func:`plot_compare`               elpd (LOO) with standard errors for several models
:func:`plot_prior_posterior`       prior against posterior for any hyperparameter
=================================  ===============================================================

Colours come from the Okabe-Ito palette (:data:`OKABE_ITO`), which stays distinguishable under the
common forms of colour blindness; the same meaning keeps the same colour in every plot (see
:data:`COLORS`). Large models stay readable: beyond ``max_groups`` groups a plot shows an evenly spaced
subset (ranked by the estimate) or drops the labels, and says so in a note under the figure.
"""

from __future__ import annotations

import textwrap
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import formulae
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bayeslmm.design import INTERCEPT, Design, RandomBlock
from bayeslmm.errors import DataError, NotFittedError
from bayeslmm.model import var_names

__all__ = [
    "OKABE_ITO",
    "COLORS",
    "plot_group_fits",
    "plot_shrinkage",
    "plot_caterpillar",
    "plot_coefs",
    "plot_variance_components",
    "plot_ppc",
    "plot_compare",
    "plot_prior_posterior",
]

#: The Okabe-Ito palette (Okabe & Ito 2008), safe for the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: What each colour means, the same in every plot.
COLORS = {
    "posterior": OKABE_ITO["blue"],  # partial pooling, Bayesian estimates and bands
    "no_pooling": OKABE_ITO["vermillion"],
    "complete_pooling": OKABE_ITO["bluish_green"],
    "frequentist": OKABE_ITO["vermillion"],  # REML estimates and confidence intervals
    "prior": OKABE_ITO["orange"],
    "replicated": OKABE_ITO["sky_blue"],
    "data": "#3b3b3b",
    "reference": "#8c8c8c",
}

_DEFAULT_PROBS = (0.5, 0.95)
_NOTE_SIZE = 8


# ==================================================================================================
# 1. Group fits
# ==================================================================================================


def plot_group_fits(
    model: Any,
    x: str | None = None,
    group: str | None = None,
    *,
    groups: Sequence[Any] | None = None,
    max_groups: int = 24,
    col_wrap: int = 6,
    probs: Sequence[float] = _DEFAULT_PROBS,
    no_pooling: bool = False,
    complete_pooling: bool = False,
    n_grid: int = 40,
    max_draws: int = 1000,
    max_points: int = 1000,
    sharey: bool = True,
    panel_size: tuple[float, float] = (2.1, 1.8),
    axes: Sequence[Axes] | None = None,
    seed: int = 0,
) -> Figure:
    """One facet per group: its data, posterior mean and nested credible bands of its expected response.

    The expected response of group ``g`` at predictor value ``x`` is the fixed part plus the group's
    deviation, computed for every posterior draw; the bands are central quantiles of those draws (the
    uncertainty of the group's line, not of single observations). Other predictors are held at their
    mean (numeric) or most common value (categorical), as a note says; other grouping factors are at
    their population mean (zero deviation).

    Parameters
    ----------
    model : Lmer
        A fitted model.
    x : str, optional
        The data column on the x-axis; by default the first predictor of the formula. Numeric
        predictors get a line and bands; categorical ones a point and intervals per level.
    group : str, optional
        The grouping factor whose levels are the facets; the model's first by default.
    groups : sequence, optional
        Levels to show (in this order). By default every level, or ``max_groups`` levels evenly spaced
        along the ranking of the estimated first group term when there are more.
    max_groups : int
        Most facets drawn when ``groups`` is not given.
    col_wrap : int
        Facets per row.
    probs : sequence of float
        Probabilities of the nested credible bands, e.g. ``(0.5, 0.95)``.
    no_pooling, complete_pooling : bool
        Overlay the per-group least-squares fit (no pooling) and the single least-squares fit that
        ignores the groups (complete pooling).
    n_grid : int
        Points along a numeric ``x``.
    max_draws : int
        Posterior draws used for the bands (evenly thinned).
    max_points : int
        Most data points drawn per facet (a random subset beyond that, with a note).
    sharey : bool
        One y-scale for all facets.
    panel_size : (float, float)
        Width and height of a facet in inches.
    axes : sequence of Axes, optional
        Draw into these (at least one per facet) instead of a new figure.
    seed : int
        Seed of the point subsampling and the jitter of categorical ``x``.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError
        The model has not been fitted.
    DataError
        ``x`` is not a predictor of the model, ``group`` is not one of its grouping factors, or a level
        in ``groups`` does not exist.

    Examples
    --------
    >>> fig = plot_group_fits(model, "Days", "Subject", no_pooling=True)  # doctest: +SKIP
    """
    _check_fitted(model, "plot_group_fits")
    design = model.design
    factor = _resolve_factor(design, group)
    x = _resolve_x(design, x)
    _check_probs(probs)
    _check_positive_int(max_groups=max_groups, col_wrap=col_wrap, n_grid=n_grid, max_draws=max_draws)

    posterior = model.posterior
    shown, note = _select_groups(design, posterior, factor, groups, max_groups)
    grid = _prediction_grid(design, x, n_grid)
    bands = _group_expected_response(model, posterior, factor, shown, grid, probs, max_draws)
    overlays = _pooling_overlays(model, factor, shown, grid, no_pooling, complete_pooling)

    fig, panels, owned = _facets(len(shown), col_wrap, panel_size, sharey, axes)
    rng = np.random.default_rng(seed)
    data_x, codes = design.data[x], design.blocks_of(factor)[0].group_index
    levels = design.factors[factor]
    jitter = _jitter_widths(design.y, data_x, grid.categorical)
    thinned = 0
    for panel, (position, g) in zip(panels, enumerate(shown)):
        rows = np.flatnonzero(codes == g)
        if len(rows) > max_points:
            rows, thinned = np.sort(rng.choice(rows, max_points, replace=False)), thinned + 1
        draw = _draw_group_categorical if grid.categorical else _draw_group_numeric
        y_rows = design.y[rows] + (rng.uniform(-jitter[1], jitter[1], len(rows)) if jitter[1] else 0.0)
        draw(panel, grid, data_x.iloc[rows], y_rows, bands, position, overlays, rng, jitter[0])
        panel.set_title(_facet_title(factor, levels[g]), fontsize=9, pad=3)
        panel.tick_params(labelsize=8)
    notes = [note] if note else []
    if thinned:
        notes.append(f"{thinned} facet(s) show a random {max_points} of their points.")
    if "no_pooling" in overlays and np.isnan(overlays["no_pooling"]).all(axis=1).any():
        missing = int(np.isnan(overlays["no_pooling"]).all(axis=1).sum())
        notes.append(f"{missing} facet(s) have no no-pooling line: the group's own data cannot identify it.")
    if jitter[1]:
        notes.append("Points are jittered: the response takes few distinct values.")
    if grid.held:
        notes.append("Other predictors held at " + ", ".join(f"{k} = {v}" for k, v in grid.held.items()) + ".")
    handles = _group_fit_handles(probs, grid.categorical, overlays)
    _label_outer(panels, min(col_wrap, len(panels)), x, design.formula.response, owned)
    _finish(
        fig,
        owned,
        title=f"{design.formula.response} by {x}, one panel per {factor}",
        legend=handles,
        note=" ".join(notes),
        ax=panels[0],
    )
    return fig


@dataclass(frozen=True)
class _Grid:
    """Predictor values at which group fits are evaluated, with their model-matrix rows.

    ``X`` has the fixed-effects columns, ``Z[block_name]`` each random block's columns, and ``held``
    the values other predictors are held at (for the note).
    """

    x: str
    values: np.ndarray
    categorical: bool
    X: np.ndarray
    Z: dict
    held: dict


def _resolve_x(design: Design, x: str | None) -> str:
    predictors = _predictor_columns(design)
    if x is None:
        if not predictors:
            raise DataError(
                f"the formula {design.formula.text!r} has no predictor to put on the x-axis; "
                "use plot_caterpillar to see the group effects of an intercept-only model"
            )
        return predictors[0]
    if x not in predictors:
        raise DataError(f"x={x!r} is not a predictor of the model; predictors are {predictors}")
    return x


def _predictor_columns(design: Design) -> list[str]:
    """Data columns used by the fixed part or a random block's expression, in formula order."""
    formula = design.formula
    columns = set(map(str, design.data.columns))
    excluded = {formula.response} | {part for factor in design.factors for part in factor.split(":")}
    found: list[str] = []
    for expression in [f"{formula.response} ~ {formula.fixed}"] + [term.expr for term in formula.random]:
        description = formulae.model_description(expression)
        for term in description.terms:
            found += sorted(v for v in getattr(term, "var_names", set()) if v in columns and v not in excluded)
    return list(dict.fromkeys(found))


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _prediction_grid(design: Design, x: str, n_grid: int) -> _Grid:
    """New data along ``x`` (others held at typical values) and its fixed and per-block model matrices."""
    data = design.data
    categorical = _is_categorical(data[x])
    if categorical:
        series = data[x]
        if isinstance(series.dtype, pd.CategoricalDtype):
            values = np.asarray(series.cat.remove_unused_categories().cat.categories, dtype=object)
        else:
            values = np.asarray(sorted(series.unique(), key=str), dtype=object)
    else:
        values = np.linspace(float(data[x].min()), float(data[x].max()), n_grid)
    frame = pd.DataFrame({x: _like(data[x], values)})
    held = {}
    for column in _predictor_columns(design):
        if column == x:
            continue
        typical = _typical(data[column])
        held[column] = f"{typical:.3g}" if isinstance(typical, float) else str(typical)
        frame[column] = _like(data[column], [typical] * len(values))
    X = np.asarray(design._fixed_matrices.common.evaluate_new_data(frame).design_matrix, dtype=float)
    Z = {}
    for term, block in zip(design.formula.random, design.blocks):
        if block.terms == (INTERCEPT,):
            Z[block.name] = np.ones((len(values), 1))
        else:
            matrices = formulae.design_matrices(term.expr, data, na_action="error")
            Z[block.name] = np.asarray(matrices.common.evaluate_new_data(frame).design_matrix, dtype=float)
    return _Grid(x, values, categorical, X, Z, held)


def _typical(series: pd.Series):
    if _is_categorical(series):
        return series.mode().iloc[0]
    return float(series.mean())


def _like(template: pd.Series, values) -> pd.Series:
    """``values`` with the dtype of ``template`` (categories included), so formulae encodes them alike."""
    if isinstance(template.dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical(list(values), categories=template.cat.categories))
    if _is_categorical(template):
        return pd.Series(list(values), dtype=template.dtype)
    return pd.Series(np.asarray(values, dtype=float))


def _select_groups(
    design: Design, posterior, factor: str, groups: Sequence[Any] | None, max_groups: int
) -> tuple[np.ndarray, str]:
    """Positions of the levels to draw, and a note when only some are drawn."""
    levels = design.factors[factor]
    if groups is not None:
        if isinstance(groups, str) or not isinstance(groups, Sequence | np.ndarray | pd.Index):
            groups = [groups]
        lookup = {str(level): i for i, level in enumerate(levels)}
        missing = [g for g in groups if str(g) not in lookup]
        if missing:
            raise DataError(
                f"level(s) {missing} are not levels of {factor!r}; it has {len(levels)} levels, "
                f"e.g. {[_short(v) for v in levels[:5]]}"
            )
        return np.array([lookup[str(g)] for g in groups]), ""
    if len(levels) <= max_groups:
        return np.arange(len(levels)), ""
    block = design.blocks_of(factor)[0]
    estimate = _stack(posterior, var_names(block)["ranef"])[..., 0].mean(axis=0)
    order = np.argsort(estimate, kind="stable")
    picked = order[np.unique(np.round(np.linspace(0, len(levels) - 1, max_groups)).astype(int))]
    note = (
        f"Showing {len(picked)} of {len(levels)} levels of {factor}, evenly spaced from the lowest to the "
        f"highest estimated {block.terms[0]} deviation; pass groups=[...] to choose."
    )
    return picked, note


def _group_expected_response(
    model: Any, posterior, factor: str, shown: np.ndarray, grid: _Grid, probs: Sequence[float], max_draws: int
) -> dict[str, np.ndarray]:
    """Posterior mean and band limits of each shown group's expected response along the grid.

    Returns ``{"mean": (G, m), prob: (2, G, m) ...}``, vectorised over draws, groups and grid points.
    """
    design = model.design
    beta = _stack(posterior, "beta")
    chosen = _thin(beta.shape[0], max_draws)
    eta = (beta[chosen] @ grid.X.T)[:, None, :]
    for block in design.blocks_of(factor):
        ranef = _stack(posterior, var_names(block)["ranef"])[chosen][:, shown, :]
        eta = eta + np.einsum("sgk,mk->sgm", ranef, grid.Z[block.name])
    mu = model.family.inverse_link(eta)
    result = {"mean": mu.mean(axis=0)}
    for prob in probs:
        result[prob] = np.quantile(mu, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return result


def _jitter_widths(y: np.ndarray, x: pd.Series, categorical: bool) -> tuple[float, float]:
    """Half-widths of the jitter of x and y: only for a response with few distinct values (ratings)."""
    values = np.unique(y)
    if len(values) > 12:
        return 0.0, 0.0
    y_width = 0.3 * float(np.min(np.diff(values))) if len(values) > 1 else 0.0
    if categorical:
        return 0.0, y_width
    x_values = np.unique(np.asarray(x, dtype=float))
    x_width = 0.03 * float(np.ptp(x_values)) if 1 < len(x_values) <= 12 else 0.0
    return x_width, y_width


def _draw_group_numeric(ax: Axes, grid: _Grid, x, y, bands, position, overlays, rng, x_jitter: float = 0.0) -> None:
    color = COLORS["posterior"]
    for prob, alpha in zip(sorted(_band_probs(bands), reverse=True), _band_alphas(len(_band_probs(bands)))):
        lower, upper = bands[prob][0, position], bands[prob][1, position]
        ax.fill_between(grid.values, lower, upper, color=color, alpha=alpha, linewidth=0)
    x = np.asarray(x, dtype=float) + (rng.uniform(-x_jitter, x_jitter, len(x)) if x_jitter else 0.0)
    ax.scatter(x, y, s=9, color=COLORS["data"], alpha=_point_alpha(len(y)), linewidths=0, zorder=3)
    ax.plot(grid.values, bands["mean"][position], color=color, linewidth=1.6, zorder=4)
    for key, style in (("no_pooling", "--"), ("complete_pooling", ":")):
        if key in overlays:
            ax.plot(grid.values, overlays[key][position], color=COLORS[key], linestyle=style, linewidth=1.3, zorder=5)


def _draw_group_categorical(ax: Axes, grid: _Grid, x, y, bands, position, overlays, rng, x_jitter: float = 0.0) -> None:
    color = COLORS["posterior"]
    lookup = {str(v): i for i, v in enumerate(grid.values)}
    where = np.array([lookup[str(v)] for v in x], dtype=float)
    ax.scatter(
        where - 0.08 + rng.uniform(-0.12, 0.12, len(where)),
        y,
        s=8,
        color=COLORS["data"],
        alpha=_point_alpha(len(y)),
        linewidths=0,
        zorder=3,
    )
    positions = np.arange(len(grid.values))
    for prob, width in zip(sorted(_band_probs(bands), reverse=True), _interval_widths(len(_band_probs(bands)))):
        lower, upper = bands[prob][0, position], bands[prob][1, position]
        ax.vlines(positions + 0.18, lower, upper, color=color, linewidth=width, zorder=4)
    ax.scatter(
        positions + 0.18, bands["mean"][position], s=22, color=color, edgecolors="white", linewidths=0.6, zorder=5
    )
    for key, marker, shift in (("no_pooling", "D", 0.31), ("complete_pooling", "s", 0.42)):
        if key in overlays:
            ax.scatter(positions + shift, overlays[key][position], s=16, marker=marker, color=COLORS[key], zorder=5)
    ax.set_xticks(positions, [_short(v) for v in grid.values])
    ax.set_xlim(-0.45, len(positions) - 0.4)


def _band_probs(bands: dict) -> list[float]:
    return [key for key in bands if key != "mean"]


def _band_alphas(n: int) -> list[float]:
    """Opacity of nested bands, widest (drawn first) lightest; overlapping bands add up."""
    return [0.2] * n if n > 1 else [0.3]


def _interval_widths(n: int) -> list[float]:
    return list(np.linspace(1.0, 3.2, n)) if n > 1 else [1.6]


def _point_alpha(n: int) -> float:
    return float(np.clip(30 / max(n, 1), 0.12, 0.75))


def _group_fit_handles(probs: Sequence[float], categorical: bool, overlays: dict) -> list:
    color = COLORS["posterior"]
    handles = [Line2D([], [], marker="o", linestyle="", color=COLORS["data"], markersize=4, label="data")]
    if categorical:
        handles.append(
            Line2D(
                [], [], marker="o", color=color, linewidth=2.5, label=f"posterior mean, {_prob_label(probs)} intervals"
            )
        )
    else:
        handles.append(Line2D([], [], color=color, linewidth=1.6, label="posterior mean"))
        handles += _nested_patches(probs)
    if "no_pooling" in overlays:
        style = {"marker": "D", "linestyle": ""} if categorical else {"linestyle": "--"}
        handles.append(Line2D([], [], color=COLORS["no_pooling"], label="no pooling (OLS per group)", **style))
    if "complete_pooling" in overlays:
        style = {"marker": "s", "linestyle": ""} if categorical else {"linestyle": ":"}
        handles.append(Line2D([], [], color=COLORS["complete_pooling"], label="complete pooling (one OLS)", **style))
    return handles


def _nested_patches(probs: Sequence[float]) -> list[Patch]:
    """Legend patches of nested bands with the opacity each band shows on the plot."""
    ordered = sorted(probs)  # innermost first
    alpha = _band_alphas(len(ordered))[0]
    patches = []
    for depth, prob in enumerate(ordered):
        layers = len(ordered) - depth  # the innermost band sits under every wider band
        visible = 1 - (1 - alpha) ** layers
        patches.append(
            Patch(color=COLORS["posterior"], alpha=visible, linewidth=0, label=f"{_pct(prob)} credible band")
        )
    return patches


# ==================================================================================================
# Pooling reference fits (no pooling, complete pooling)
# ==================================================================================================


def _pooling_overlays(model, factor, shown, grid, no_pooling: bool, complete_pooling: bool) -> dict[str, np.ndarray]:
    """Lines (or level values) of the no-pooling and complete-pooling fits, shape (G shown, m)."""
    from bayeslmm.pooling import complete_pooling_ols

    out: dict[str, np.ndarray] = {}
    if complete_pooling:
        coef = complete_pooling_ols(model).to_numpy()[None, :]
        out["complete_pooling"] = np.broadcast_to(_predict(grid.X, coef), (len(shown), len(grid.values)))
    if no_pooling:
        table = _no_pooling(model, factor)
        columns = _grid_columns(model.design, factor, grid, list(table.columns))
        out["no_pooling"] = _predict(columns, table.to_numpy()[shown])
    return out


def _no_pooling(model, factor: str) -> pd.DataFrame:
    """No-pooling least-squares coefficients per level (:func:`bayeslmm.pooling.no_pooling_ols`).

    Its warning about groups that cannot identify their own coefficients is not repeated: the plots
    leave those groups out and say so in a note.
    """
    import warnings

    from bayeslmm.pooling import no_pooling_ols

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return no_pooling_ols(model, factor)


def _grid_columns(design: Design, factor: str, grid: _Grid, terms: list[str]) -> np.ndarray:
    """Model-matrix columns of ``terms`` along the grid: fixed columns, else the factor's block columns."""
    columns = []
    for term in terms:
        if term in design.fixed_terms:
            columns.append(grid.X[:, design.fixed_terms.index(term)])
        else:
            block, j = _find_term(design, factor, term)
            columns.append(grid.Z[block.name][:, j])
    return np.column_stack(columns)


def _predict(X: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """``coefs @ X.T`` for (G, p) coefficients, NaN only where a row uses an unidentified coefficient."""
    missing = np.isnan(coefs).astype(float) @ (X != 0).T.astype(float) > 0
    values = np.nan_to_num(coefs) @ X.T
    values[missing] = np.nan
    return values


# ==================================================================================================
# 2. Shrinkage
# ==================================================================================================


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
    _check_fitted(model, "plot_shrinkage")
    design = model.design
    factor = _resolve_factor(design, group)
    available = _group_terms(design, factor)
    if terms is None:
        terms = available[:2]
    chosen = _resolve_terms(terms, available, f"terms with a group effect on {factor!r}")
    if len(chosen) > 2:
        raise ValueError(f"plot_shrinkage draws one or two terms, got {len(chosen)}: {chosen}")
    if not 0 < ellipse_prob < 1:
        raise ValueError(f"ellipse_prob must be between 0 and 1, got {ellipse_prob!r}")

    posterior = model.posterior
    partial_draws = _group_draws(design, posterior, factor, chosen, total=True)  # (S, G, t)
    nopool = _no_pooling(model, factor)[chosen].to_numpy()  # (G, t), NaN where unidentified
    beta_mean = _fixed_means(design, posterior, chosen)
    usable = np.flatnonzero(np.all(np.isfinite(nopool), axis=1))
    notes = []
    if len(usable) < nopool.shape[0]:
        notes.append(
            f"{nopool.shape[0] - len(usable)} group(s) whose own data cannot identify "
            f"{' and '.join(chosen)} have no no-pooling estimate and are left out."
        )
    limit = max_groups if max_groups is not None else (300 if len(chosen) == 2 else 60)
    _check_positive_int(max_groups=limit)
    if len(usable) > limit:
        rng = np.random.default_rng(seed)
        usable = np.sort(rng.choice(usable, limit, replace=False))
        notes.append(f"Showing a random {limit} of {nopool.shape[0]} groups of {factor}; pass max_groups= to change.")
    label = label_groups if label_groups is not None else len(usable) <= (30 if len(chosen) == 2 else 60)
    size = (6.4, 5.6) if len(chosen) == 2 else (6.4, float(np.clip(0.15 * len(usable) + 1.8, 4.5, 12.0)))
    fig, ax, owned = _single_axes(ax, size)
    data = _Shrinkage(model.design, posterior, factor, chosen, partial_draws, nopool, beta_mean, usable, label)
    if len(chosen) == 2:
        _shrinkage_2d(ax, data, ellipses, population, ellipse_prob)
        title = f"Shrinkage of {factor} coefficients: no pooling \u2192 partial pooling"
    else:
        _shrinkage_1d(ax, data, ellipses, population)
        title = f"Shrinkage of {chosen[0]} by {factor}: no pooling \u2192 partial pooling"
    _finish(fig, owned, title=title, note=" ".join(notes), ax=ax)
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
            ax.annotate(_short(levels[g]), data.nopool[g], xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(f"{terms[0]}  ({factor} coefficient)")
    ax.set_ylabel(f"{terms[1]}  ({factor} coefficient)")
    handles, _ = ax.get_legend_handles_labels()
    if population:
        label = "population distribution (50%, 95%)"
        handles.append(Line2D([], [], color=COLORS["reference"], linestyle="--", label=label))
    if ellipses:
        label = f"{_pct(prob)} posterior ellipse per group"
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
            sd = _stack(posterior, names["sd"])[:, idx]
            corr = (
                _stack(posterior, names["corr"])[:, idx][:, :, idx] if block.n_terms > 1 else np.ones((len(sd), 1, 1))
            )
            return (sd[:, :, None] * corr * sd[:, None, :]).mean(axis=0)
    terms_sd = []
    for term in terms:
        for block in design.blocks_of(factor):
            if term in block.terms:
                terms_sd.append(_stack(posterior, var_names(block)["sd"])[:, block.terms.index(term)])
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
        ax.set_yticks(y, [_short(levels[g]) for g in order], fontsize=7 if len(order) > 30 else 8)
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
            return float(_stack(posterior, var_names(block)["sd"])[:, block.terms.index(term)].mean())
    return 0.0


# ==================================================================================================
# 3. Caterpillar
# ==================================================================================================


def plot_caterpillar(
    model: Any,
    group: str | None = None,
    terms: str | Sequence[str] | None = None,
    *,
    which: str = "ranef",
    probs: Sequence[float] = _DEFAULT_PROBS,
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
    _check_fitted(model, "plot_caterpillar")
    if which not in ("ranef", "fixef"):
        raise ValueError(f"which must be 'ranef' (group deviations) or 'fixef' (group coefficients), got {which!r}")
    _check_probs(probs)
    design = model.design
    factor = _resolve_factor(design, group)
    available = _group_terms(design, factor)
    chosen = _resolve_terms(
        available if terms is None else terms, available, f"terms with a group effect on {factor!r}"
    )
    sort_term = _resolve_terms(sort_by or chosen[0], available, f"terms with a group effect on {factor!r}")[0]
    total = which == "fixef"

    posterior = model.posterior
    draws = _group_draws(design, posterior, factor, list(dict.fromkeys(chosen + [sort_term])), total=total)
    columns = list(dict.fromkeys(chosen + [sort_term]))
    order = np.argsort(draws[..., columns.index(sort_term)].mean(axis=0), kind="stable")
    levels = design.factors[factor]
    G = len(levels)
    labelled = G <= max_labels
    height = float(np.clip(0.2 * G + 1.4, 3.0, 10.0)) if labelled else 5.0
    width = max(panel_width, 6.0 / len(chosen))
    fig, panels, owned = _facets(len(chosen), len(chosen), (width, height), True, axes, sharex=False)
    beta = _fixed_means(design, posterior, chosen)
    for panel, term, reference in zip(panels, chosen, beta):
        values = draws[..., columns.index(term)][:, order]  # (S, G) sorted
        _caterpillar_panel(panel, values, probs, reference if total else 0.0, labelled)
        panel.set_title(term, fontsize=10)
        panel.set_xlabel("coefficient" if total else "deviation from fixed effect", fontsize=8)
    if labelled:
        panels[0].set_yticks(np.arange(G), [_short(levels[g]) for g in order], fontsize=7 if G > 30 else 8)
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
    handles = _interval_handles(probs, small_dots=not labelled) + [
        Line2D([], [], color=COLORS["reference"], linestyle="--", label="fixed effect" if total else "zero")
    ]
    _finish(
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
    widths = _interval_widths(len(probs))
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


def _interval_handles(probs: Sequence[float], small_dots: bool = False) -> list:
    widths = _interval_widths(len(probs))
    if small_dots:
        mean = Line2D([], [], marker="o", linestyle="", color=OKABE_ITO["black"], markersize=3, label="posterior mean")
    else:
        mean = Line2D(
            [], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor=COLORS["posterior"],
            markersize=5, label="posterior mean",
        )  # fmt: skip
    handles = [mean]
    for prob, width in zip(sorted(probs, reverse=True), widths):
        handles.append(
            Line2D([], [], color=COLORS["posterior"], linewidth=width, label=f"{_pct(prob)} credible interval")
        )
    return handles


# ==================================================================================================
# 4. Coefficients
# ==================================================================================================


def plot_coefs(
    model: Any,
    terms: str | Sequence[str] | None = None,
    *,
    kind: str = "halfeye",
    probs: Sequence[float] = _DEFAULT_PROBS,
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
    _check_fitted(model, "plot_coefs")
    if kind not in ("halfeye", "interval"):
        raise ValueError(f"kind must be 'halfeye' or 'interval', got {kind!r}")
    _check_probs(probs)
    design = model.design
    available = list(design.fixed_terms)
    default = [t for t in available if intercept or t != INTERCEPT] or available
    chosen = _resolve_terms(default if terms is None else terms, available, "fixed terms")
    reference = _frequentist_coefs(model, frequentist)

    beta = _stack(model.posterior, "beta")
    fig, panels, owned = _facets(len(chosen), 1, (width, row_height), False, axes, sharex=False)
    for panel, term in zip(panels, chosen):
        draws = beta[:, available.index(term)]
        row = None if reference is None else reference.loc[term]
        _coef_row(panel, draws, probs, kind, row)
        panel.set_ylabel(term, rotation=0, ha="right", va="center", fontsize=10)
    handles = _interval_handles(probs)
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
    _finish(fig, owned, title="Fixed effects: " + design.formula.text, legend=handles, ax=panels[0])
    return fig


def _coef_row(ax: Axes, draws: np.ndarray, probs, kind: str, reference: pd.Series | None) -> None:
    color = COLORS["posterior"]
    lo, hi = np.quantile(draws, [0.003, 0.997])
    if reference is not None:
        lo, hi = min(lo, reference["2.5_ci"]), max(hi, reference["97.5_ci"])
    pad = 0.08 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 256)
    if kind == "halfeye":
        density = _density(draws, grid)
        scaled = 0.85 * density / density.max() if density.max() > 0 else density
        ax.fill_between(grid, 0.0, scaled, color=color, alpha=0.35, linewidth=0)
        ax.plot(grid, scaled, color=color, linewidth=1)
    y_interval = -0.12 if kind == "halfeye" else 0.0
    for prob, width in zip(sorted(probs, reverse=True), _interval_widths(len(probs))):
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
        table = _reml_fit(model).coefs
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


_REML_CACHE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _reml_fit(model: Any):
    """REML fit of the model's design, computed once per model object."""
    from bayeslmm.frequentist import fit_frequentist

    cached = _REML_CACHE.get(model)
    if cached is None or cached.design is not model.design:
        cached = fit_frequentist(model.design, REML=True)
        _REML_CACHE[model] = cached
    return cached


# ==================================================================================================
# 5. Variance components
# ==================================================================================================


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
    _check_fitted(model, "plot_variance_components")
    _check_probs([prob])
    params = [
        p
        for p in _hyperparameters(model)
        if p.kind == "sd" or (correlations and p.kind == "corr") or (residual and p.kind == "sigma")
    ]
    estimates, note = _reml_estimates(model, reml)
    fig, panels, owned = _facets(len(params), col_wrap, panel_size, False, axes, sharex=False)
    for panel, param in zip(panels, params):
        draws = param.draws
        grid = _grid_for(draws, param.bounds, extra=estimates.get(param.name))
        density = _density(draws, grid, *param.bounds)
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
        Patch(color=COLORS["posterior"], alpha=0.3, label=f"{_pct(prob)} credible interval"),
        Line2D([], [], color=COLORS["posterior"], linewidth=1.2, label="posterior median"),
    ]
    if estimates:
        handles.append(
            Line2D([], [], color=COLORS["frequentist"], linestyle="--", linewidth=1.4, label="REML estimate")
        )
    _finish(
        fig, owned, title="Variance components: " + model.design.formula.text, legend=handles, note=note, ax=panels[0]
    )
    return fig


@dataclass(frozen=True, eq=False)
class _Param:
    """A scalar hyperparameter.

    ``kind`` is ``"fixed"``, ``"sd"``, ``"corr"`` or ``"sigma"``; ``draws`` its flattened posterior
    draws; ``bounds`` its support (None for unbounded); ``key`` where its prior lives
    (``("sd", block, term)``, ``("corr", block)``, ...); ``aliases`` other names users may type.
    """

    name: str
    title: str
    kind: str
    draws: np.ndarray
    bounds: tuple
    key: tuple = ()
    aliases: frozenset = frozenset()


def _hyperparameters(model: Any) -> list[_Param]:
    """Fixed effects, SDs, correlations and sigma, in summary order (fixed effects first)."""
    design, posterior = model.design, model.posterior
    beta = _stack(posterior, "beta")
    params = [
        _Param(t, f"fixed effect: {t}", "fixed", beta[:, j], (None, None), ("fixed", t))
        for j, t in enumerate(design.fixed_terms)
    ]
    for block in design.blocks:
        names = var_names(block)
        sd = _stack(posterior, names["sd"])
        for j, term in enumerate(block.terms):
            name = f"sd({term}|{block.name})"
            aliases = {f"{term}|{block.factor}", f"sd({term}|{block.factor})"}
            if term == INTERCEPT:
                aliases |= {f"1|{block.factor}", f"sd(1|{block.factor})", f"Intercept|{block.factor}"}
            params.append(
                _Param(
                    name,
                    f"SD of {term} | {block.name}",
                    "sd",
                    sd[:, j],
                    (0.0, None),
                    ("sd", block.name, term),
                    frozenset(aliases),
                )
            )
        if block.n_terms > 1:
            corr = _stack(posterior, names["corr"])
            for i in range(block.n_terms):
                for j in range(i):
                    a, b = block.terms[j], block.terms[i]
                    name = f"corr({a},{b}|{block.name})"
                    aliases = {f"corr({a}, {b}|{block.name})", f"corr({b},{a}|{block.name})"}
                    if block.n_terms == 2:
                        aliases.add(f"corr({block.name})")
                    params.append(
                        _Param(
                            name,
                            f"corr({a}, {b}) | {block.name}",
                            "corr",
                            corr[:, i, j],
                            (-1.0, 1.0),
                            ("corr", block.name),
                            frozenset(aliases),
                        )
                    )
    if "sigma" in posterior:
        params.append(
            _Param("sigma", "SD of residual (sigma)", "sigma", _stack(posterior, "sigma"), (0.0, None), ("sigma",))
        )
    return params


def _reml_estimates(model: Any, reml: Any) -> tuple[dict[str, float], str]:
    """REML point estimates keyed by hyperparameter name, and a note when they are unavailable."""
    if reml is False or reml is None:
        return {}, ""
    if reml is not True and not hasattr(reml, "ranef_var"):
        raise ValueError(f"reml must be True, False or a FrequentistResult, got {type(reml).__name__}")
    try:
        result = _reml_fit(model) if reml is True else reml
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


# ==================================================================================================
# 6. Posterior predictive check
# ==================================================================================================


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
    _check_fitted(model, "plot_ppc")
    if kind not in ("auto", "kde", "hist", "ecdf"):
        raise ValueError(f"kind must be 'auto', 'kde', 'hist' or 'ecdf', got {kind!r}")
    _check_positive_int(n_draws=n_draws)
    y = model.design.y
    if kind == "auto":
        kind = "hist" if _few_integer_values(y) else "kde"
    replicated = model.posterior_predictive(n_draws=n_draws, random_seed=seed)
    fig, ax, owned = _single_axes(ax, (6.4, 4.0))
    {"kde": _ppc_kde, "hist": _ppc_hist, "ecdf": _ppc_ecdf}[kind](ax, y, replicated)
    ax.set_xlabel(model.design.formula.response)
    ax.set_ylabel({"kde": "density", "hist": "proportion", "ecdf": "cumulative proportion"}[kind])
    ax.legend(fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.25)
    _finish(fig, owned, title=f"Posterior predictive check: {model.design.formula.text}", ax=ax)
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
    _replicated_curves(ax, [np.stack([grid, _density(r, grid)], axis=1) for r in replicated])
    ax.plot(
        grid,
        _density(replicated.ravel(), grid),
        color=COLORS["posterior"],
        linestyle="--",
        linewidth=1.4,
        label="posterior predictive mean",
    )
    ax.plot(grid, _density(y, grid), color=OKABE_ITO["black"], linewidth=2.0, label="observed")
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


# ==================================================================================================
# 7. Model comparison
# ==================================================================================================


def plot_compare(table: Any, *, ax: Axes | None = None) -> Figure:
    """Expected log predictive density (LOO) of several models, with standard errors.

    Each model is a row: its ``elpd_loo`` with +- 1 SE (black), and for every model but the best the
    difference to the best with the SE of that difference (grey, drawn as an offset from the best
    model's elpd), as in McElreath's and ArviZ's comparison plots. Higher is better.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`bayeslmm.comparison.compare` or :func:`bayeslmm.comparison.lrt`: one row per model
        (the index or a ``model`` column names it) with ``elpd_loo`` and its standard error
        (``se``, ``elpd_se`` or ``elpd_loo_se``); optional ``elpd_diff`` and ``dse``.
    ax : Axes, optional
        Draw into this Axes.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        ``table`` is not a DataFrame or has no elpd or SE column.
    """
    frame = _comparison_frame(table)
    criterion = frame.attrs["criterion"]
    fig, ax, owned = _single_axes(ax, (6.4, 1.4 + 0.55 * len(frame)))
    frame = frame.sort_values("elpd", ascending=False)
    y = np.arange(len(frame))[::-1].astype(float)
    best = frame["elpd"].iloc[0]
    ax.axvline(best, color=COLORS["reference"], linestyle="--", linewidth=1)
    ax.errorbar(
        frame["elpd"],
        y,
        xerr=frame["se"],
        fmt="o",
        color=OKABE_ITO["black"],
        capsize=3,
        markersize=6,
        label=f"{criterion} \u00b1 SE",
    )
    if "diff" in frame and "dse" in frame:
        rest = frame.iloc[1:]
        ax.errorbar(
            best - rest["diff"].abs(),
            y[1:] - 0.22,
            xerr=rest["dse"],
            fmt="^",
            color=COLORS["reference"],
            capsize=3,
            markersize=5,
            label="difference to best \u00b1 SE",
        )
    ax.set_yticks(y, [str(name) for name in frame.index], fontsize=9)
    ax.set_ylim(y.min() - 0.6, y.max() + 0.6)
    ax.set_xlabel(f"{criterion} (expected log predictive density), higher is better")
    ax.grid(axis="x", alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    _finish(fig, owned, title="Model comparison", ax=ax)
    return fig


_ELPD_COLUMNS = ("elpd_loo", "elpd_kfold", "elpd")
_SE_COLUMNS = ("SE", "se", "elpd_se", "elpd_loo_se")
_DIFF_COLUMNS = ("elpd_diff", "d_elpd")
_DSE_COLUMNS = ("SE_diff", "dse", "elpd_diff_se")


def _comparison_frame(table: Any) -> pd.DataFrame:
    """Normalise a comparison table to columns ``elpd``, ``se``, and ``diff``, ``dse`` when present."""
    if not isinstance(table, pd.DataFrame):
        raise ValueError(
            f"plot_compare needs the table returned by bayeslmm.comparison.compare or lrt, got {type(table).__name__}"
        )
    frame = pd.DataFrame(table)
    if "model" in frame.columns:
        frame = frame.set_index("model")
    elpd = next((c for c in _ELPD_COLUMNS if c in frame.columns), None)
    se = next((c for c in _SE_COLUMNS if c in frame.columns), None)
    if elpd is None or se is None:
        raise ValueError(
            f"the comparison table needs an elpd column (one of {list(_ELPD_COLUMNS)}) and its standard "
            f"error (one of {list(_SE_COLUMNS)}); its columns are {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise ValueError("the comparison table has no rows")
    out = pd.DataFrame({"elpd": frame[elpd].astype(float), "se": frame[se].astype(float)}, index=frame.index)
    out.attrs["criterion"] = elpd
    diff = next((c for c in _DIFF_COLUMNS if c in frame.columns), None)
    dse = next((c for c in _DSE_COLUMNS if c in frame.columns), None)
    if diff is not None and dse is not None:
        out["diff"], out["dse"] = frame[diff].astype(float), frame[dse].astype(float)
    return out


# ==================================================================================================
# 8. Prior against posterior
# ==================================================================================================


def plot_prior_posterior(
    model: Any,
    params: str | Sequence[str] | None = None,
    *,
    n_prior_draws: int = 10000,
    col_wrap: int = 3,
    panel_size: tuple[float, float] = (3.0, 2.2),
    axes: Sequence[Axes] | None = None,
    seed: int = 0,
) -> Figure:
    """Prior and posterior density of each hyperparameter on one axis, so the prior's influence shows.

    Each panel also gives the posterior contraction ``1 - var(posterior) / var(prior)``: near 1 the
    data dominate; near 0 the posterior is mostly the prior.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    params : str or sequence of str, optional
        Parameter names: a fixed term (``"Days"``, ``"(Intercept)"``), ``"sigma"``, a group SD
        (``"sd(Days|Subject)"``, also ``"Days|Subject"`` as in the ``priors=`` keys) or a correlation
        (``"corr((Intercept),Days|Subject)"``, or ``"corr(Subject)"`` for a two-term block). All by
        default.
    n_prior_draws : int
        Prior draws per parameter.
    col_wrap : int
        Panels per row.
    panel_size : (float, float)
        Inches per panel.
    axes : sequence of Axes, optional
        Draw into these (one per parameter).
    seed : int
        Seed of the prior draws.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError, DataError
        Unfitted model; a parameter the model does not have.

    Notes
    -----
    The prior of the intercept is placed on the centred scale (the intercept at the predictor means);
    the prior drawn here is the implied prior of the reported, uncentred intercept.
    """
    _check_fitted(model, "plot_prior_posterior")
    _check_positive_int(n_prior_draws=n_prior_draws)
    catalog = _hyperparameters(model)
    chosen = _resolve_params(catalog, params)
    prior_draws = _prior_draws(model, chosen, n_prior_draws, seed)
    fig, panels, owned = _facets(len(chosen), col_wrap, panel_size, False, axes, sharex=False)
    for panel, param in zip(panels, chosen):
        exact = _lkj_marginal(model, param) if param.kind == "corr" else None
        _prior_posterior_panel(panel, param, prior_draws[param.name], _prior_text(model, param), exact)
    handles = [
        Patch(color=COLORS["prior"], alpha=0.45, label="prior"),
        Patch(color=COLORS["posterior"], alpha=0.45, label="posterior"),
    ]
    _finish(fig, owned, title="Prior and posterior: " + model.design.formula.text, legend=handles, ax=panels[0])
    return fig


def _resolve_params(catalog: list[_Param], params) -> list[_Param]:
    if params is None:
        return catalog
    requested = [params] if isinstance(params, str) else list(params)
    lookup = {}
    for param in catalog:
        for key in (param.name, *param.aliases):
            lookup[_normalise(key)] = param
    chosen = []
    for name in requested:
        if not isinstance(name, str) or _normalise(name) not in lookup:
            raise DataError(f"{name!r} is not a parameter of this model; parameters are {[p.name for p in catalog]}")
        chosen.append(lookup[_normalise(name)])
    return list(dict.fromkeys(chosen))


def _normalise(name: str) -> str:
    return name.replace(" ", "")


def _prior_draws(model: Any, params: list[_Param], n: int, seed: int) -> dict[str, np.ndarray]:
    """Prior draws of each parameter from the model's resolved priors.

    Common distributions are drawn with NumPy/SciPy; any other goes through one :func:`pymc.draw` call.
    """
    priors = model._priors
    design = model.design
    rng = np.random.default_rng(seed)
    fixed_terms = list(design.fixed_terms)
    need_fixed = any(p.kind == "fixed" for p in params)
    wanted: dict[Any, Any] = {}
    if need_fixed:
        wanted.update({("fixed", term): priors.fixed[term] for term in fixed_terms})
    for param in params:
        if param.kind == "sd":
            _, block, term = param.key
            wanted[param.name] = priors.group_sd[block][term]
        elif param.kind == "sigma" and priors.sigma is not None:
            wanted[param.name] = priors.sigma
    drawn = _draw_priors(wanted, n, rng, seed)
    out: dict[str, np.ndarray] = {}
    if need_fixed:
        fixed = np.stack([drawn[("fixed", t)] for t in fixed_terms], axis=1)
        if INTERCEPT in fixed_terms and len(fixed_terms) > 1:
            # The intercept's prior is on centred predictors; the reported intercept is shifted back.
            means = design.X.mean(axis=0)
            j = fixed_terms.index(INTERCEPT)
            means[j] = 0.0
            fixed[:, j] -= fixed @ means
        for j, term in enumerate(fixed_terms):
            out[term] = fixed[:, j]
    for param in params:
        if param.kind in ("sd", "sigma") and param.name in drawn:
            out[param.name] = drawn[param.name]
        elif param.kind == "corr":
            block = next(b for b in design.blocks if b.name == param.key[1])
            shape = priors.eta[block.name] - 1 + block.n_terms / 2
            # Marginal of one correlation under LKJ(eta) in k dimensions: Beta(shape, shape) on (-1, 1).
            out[param.name] = 2 * rng.beta(shape, shape, n) - 1
    return out


def _draw_priors(wanted: dict, n: int, rng: np.random.Generator, seed: int) -> dict:
    """``n`` draws of each prior: SciPy for the common distributions, one PyMC call for the rest."""
    drawn, slow = {}, {}
    for key, prior in wanted.items():
        values = _scipy_draws(prior, n, rng)
        if values is None:
            slow[key] = prior
        else:
            drawn[key] = values
    if slow:
        import pymc as pm

        values = pm.draw([prior.dist(shape=n) for prior in slow.values()], random_seed=seed)
        values = [values] if len(slow) == 1 else values
        drawn.update({key: np.asarray(v, dtype=float) for key, v in zip(slow, values)})
    return drawn


def _scipy_draws(prior: Any, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """Draws of a prior in PyMC's parametrisation, or None when it is not one of the common ones."""
    from scipy import stats

    p = dict(prior.params)
    makers = {
        ("Normal", ("mu", "sigma")): lambda: stats.norm(p.get("mu", 0.0), p.get("sigma", 1.0)),
        ("StudentT", ("mu", "nu", "sigma")): lambda: stats.t(p["nu"], p.get("mu", 0.0), p.get("sigma", 1.0)),
        ("HalfNormal", ("sigma",)): lambda: stats.halfnorm(scale=p.get("sigma", 1.0)),
        ("HalfCauchy", ("beta",)): lambda: stats.halfcauchy(scale=p["beta"]),
        ("Cauchy", ("alpha", "beta")): lambda: stats.cauchy(p["alpha"], p["beta"]),
        ("Exponential", ("lam",)): lambda: stats.expon(scale=1.0 / p["lam"]),
        ("Gamma", ("alpha", "beta")): lambda: stats.gamma(p["alpha"], scale=1.0 / p["beta"]),
        ("LogNormal", ("mu", "sigma")): lambda: stats.lognorm(p.get("sigma", 1.0), scale=np.exp(p.get("mu", 0.0))),
    }
    if prior.distribution == "HalfStudentT" and set(p) <= {"nu", "sigma"} and "nu" in p:
        return np.abs(stats.t(p["nu"], 0.0, p.get("sigma", 1.0)).rvs(n, random_state=rng))
    for (name, keys), make in makers.items():
        if prior.distribution == name and set(p) <= set(keys) and all(np.ndim(v) == 0 for v in p.values()):
            try:
                return np.asarray(make().rvs(n, random_state=rng), dtype=float)
            except KeyError:
                return None
    return None


def _prior_text(model: Any, param: _Param) -> str:
    """The prior as the user would write it, e.g. ``Normal(mu=0, sigma=49.06)``."""
    priors = model._priors
    if param.kind == "fixed":
        text = repr(priors.fixed[param.name])
        centred = param.name == INTERCEPT and len(model.design.fixed_terms) > 1
        return f"{text} (centred)" if centred else text
    if param.kind == "sd":
        _, block, term = param.key
        return repr(priors.group_sd[block][term])
    if param.kind == "corr":
        return f"LKJ(eta={priors.eta[param.key[1]]:g})"
    return repr(priors.sigma)


def _prior_posterior_panel(ax: Axes, param: _Param, prior: np.ndarray, prior_text: str, exact=None) -> None:
    posterior = param.draws
    lo, hi = np.quantile(posterior, [0.002, 0.998])
    p_lo, p_hi = np.quantile(prior, [0.025, 0.975])
    lo, hi = min(lo, p_lo), max(hi, p_hi)
    if param.bounds[0] is not None:
        lo = max(lo, param.bounds[0])
    if param.bounds[1] is not None:
        hi = min(hi, param.bounds[1])
    pad = 0.03 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad if param.bounds[0] is None else lo, hi + pad if param.bounds[1] is None else hi, 400)
    top = 0.0
    for draws, color, density_of in ((prior, COLORS["prior"], exact), (posterior, COLORS["posterior"], None)):
        density = density_of(grid) if density_of is not None else _density(draws, grid, *param.bounds)
        ax.fill_between(grid, 0, density, color=color, alpha=0.45, linewidth=0)
        ax.plot(grid, density, color=color, linewidth=1.1)
        top = max(top, float(np.max(density)))
    contraction = 1 - np.var(posterior) / np.var(prior) if np.var(prior) > 0 else np.nan
    ax.text(
        0.99,
        0.98,
        f"prior {prior_text}\ncontraction {contraction:.2f}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=6.5,
        color="#444444",
    )
    ax.set_title(param.title, fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(0, 1.3 * top if top > 0 else 1.0)
    ax.set_xlim(grid[0], grid[-1])
    ax.tick_params(labelsize=8)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def _lkj_marginal(model: Any, param: _Param):
    """Exact prior density of one correlation under LKJ(eta): a Beta(a, a) on (-1, 1), a = eta - 1 + k/2."""
    from scipy import stats

    block = next(b for b in model.design.blocks if b.name == param.key[1])
    shape = model._priors.eta[block.name] - 1 + block.n_terms / 2
    return lambda grid: stats.beta.pdf((grid + 1) / 2, shape, shape) / 2


# ==================================================================================================
# Shared helpers
# ==================================================================================================


def _check_fitted(model: Any, what: str) -> None:
    from bayeslmm.lmer import Lmer

    if not isinstance(model, Lmer):
        raise TypeError(f"{what} needs a bayeslmm Lmer (or Lm) model, got {type(model).__name__}")
    if model.idata is None:
        raise NotFittedError(f"{what} needs a fitted model: call model.fit() first")


def _resolve_factor(design: Design, group: str | None) -> str:
    factors = list(design.factors)
    if not factors:
        raise DataError(f"the formula {design.formula.text!r} has no grouping factor, so there are no groups to plot")
    if group is None:
        return factors[0]
    if group not in factors:
        raise DataError(f"{group!r} is not a grouping factor of this model; its grouping factors are {factors}")
    return group


def _group_terms(design: Design, factor: str) -> list[str]:
    return list(dict.fromkeys(term for block in design.blocks_of(factor) for term in block.terms))


_INTERCEPT_ALIASES = {"1", "Intercept", "intercept", INTERCEPT}


def _resolve_terms(terms: str | Sequence[str], available: Sequence[str], what: str) -> list[str]:
    requested = [terms] if isinstance(terms, str) else list(terms)
    if not requested:
        raise ValueError(f"no terms given; {what} are {list(available)}")
    chosen = []
    for term in requested:
        name = INTERCEPT if term in _INTERCEPT_ALIASES and INTERCEPT in available else term
        if name not in available:
            raise DataError(f"unknown term {term!r}; {what} are {list(available)}")
        chosen.append(name)
    return list(dict.fromkeys(chosen))


def _group_draws(design: Design, posterior, factor: str, terms: Sequence[str], total: bool) -> np.ndarray:
    """Flattened draws of the group effects of ``terms``, shape (S, G, len(terms)); plus beta if total."""
    beta = _stack(posterior, "beta") if total else None
    columns = []
    for term in terms:
        block, j = _find_term(design, factor, term)
        draws = _stack(posterior, var_names(block)["ranef"])[:, :, j]
        if total and term in design.fixed_terms:
            draws = draws + beta[:, [design.fixed_terms.index(term)]]
        columns.append(draws)
    return np.stack(columns, axis=-1)


def _find_term(design: Design, factor: str, term: str) -> tuple[RandomBlock, int]:
    for block in design.blocks_of(factor):
        if term in block.terms:
            return block, block.terms.index(term)
    raise DataError(f"term {term!r} has no group effect on {factor!r}")


def _fixed_means(design: Design, posterior, terms: Sequence[str]) -> np.ndarray:
    """Posterior means of the fixed effects of ``terms`` (0 for a term without a fixed effect)."""
    beta = _stack(posterior, "beta").mean(axis=0)
    return np.array([beta[design.fixed_terms.index(t)] if t in design.fixed_terms else 0.0 for t in terms])


def _stack(posterior, name: str) -> np.ndarray:
    """Draws of a posterior variable with chains and draws flattened: shape (chain * draw, ...)."""
    values = np.asarray(posterior[name].transpose("chain", "draw", ...).values)
    return values.reshape(-1, *values.shape[2:])


def _thin(total: int, max_draws: int) -> np.ndarray:
    return np.unique(np.linspace(0, total - 1, min(total, max_draws)).astype(int))


def _density(
    samples: np.ndarray, grid: np.ndarray, lower: float | None = None, upper: float | None = None
) -> np.ndarray:
    """Gaussian kernel density on an even grid, by binning and convolution (linear in the sample size).

    Bounded supports are handled by reflecting the samples at ``lower`` and ``upper``.
    """
    x = np.asarray(samples, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        return np.zeros_like(grid)
    dx = grid[1] - grid[0]
    spread = x.std(ddof=1)
    iqr = np.subtract(*np.percentile(x, [75, 25])) / 1.349
    bandwidth = 0.9 * (min(spread, iqr) if iqr > 0 else spread) * x.size**-0.2
    bandwidth = max(bandwidth, dx / 2)
    edges = np.append(grid - dx / 2, grid[-1] + dx / 2)
    counts = np.histogram(x, bins=edges)[0].astype(float)
    for bound in (lower, upper):
        if bound is not None:
            counts += np.histogram(2 * bound - x, bins=edges)[0]
    half = int(min(np.ceil(4 * bandwidth / dx), len(grid)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / bandwidth) ** 2)
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="full")[half : half + len(grid)]
    density = smooth / (x.size * dx)
    if lower is not None:
        density[grid < lower] = 0.0
    if upper is not None:
        density[grid > upper] = 0.0
    return density


def _grid_for(draws: np.ndarray, bounds, extra: float | None = None, n: int = 300) -> np.ndarray:
    lo, hi = np.quantile(draws, [0.001, 0.999])
    if extra is not None and np.isfinite(extra):
        lo, hi = min(lo, extra), max(hi, extra)
    pad = 0.08 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    return np.linspace(lo, hi, n)


def _check_probs(probs: Sequence[float]) -> None:
    values = list(probs) if not isinstance(probs, int | float) else [probs]
    if not values or not all(isinstance(p, int | float) and 0 < p < 1 for p in values):
        raise ValueError(f"probabilities must be numbers between 0 and 1, got {probs!r}")


def _check_positive_int(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _pct(prob: float) -> str:
    return f"{100 * prob:g}%"


def _prob_label(probs: Sequence[float]) -> str:
    return "/".join(_pct(p) for p in sorted(probs))


def _facet_title(factor: str, level: Any) -> str:
    text = f"{factor} {level}"
    return text if len(text) <= 18 else _short(level)


def _short(value: Any, width: int = 18) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _single_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes, bool]:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise ValueError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax, True


def _facets(
    n: int,
    col_wrap: int,
    panel_size: tuple[float, float],
    sharey: bool,
    axes: Sequence[Axes] | None,
    sharex: bool = True,
) -> tuple[Figure, list[Axes], bool]:
    """``n`` panels wrapped in rows of ``col_wrap`` (unused cells removed), or the caller's axes."""
    if axes is not None:
        flat = list(np.ravel(np.asarray(axes, dtype=object)))
        if len(flat) < n or not all(isinstance(a, Axes) for a in flat):
            raise ValueError(f"axes must hold at least {n} matplotlib Axes (one per panel), got {len(flat)}")
        return flat[0].figure, flat[:n], False
    ncols = min(col_wrap, n)
    nrows = int(np.ceil(n / ncols))
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.9),
        sharex=sharex,
        sharey=sharey,
        squeeze=False,
        layout="constrained",
    )
    cells = list(grid.ravel())
    for extra in cells[n:]:
        extra.remove()
    panels = cells[:n]
    if sharex:
        # Removed cells leave the panels above them without x tick labels; show them again.
        for index, panel in enumerate(panels):
            if index + ncols >= n:
                panel.xaxis.set_tick_params(labelbottom=True)
    return fig, panels, True


def _wrap(text: str, fig: Figure) -> str:
    """Wrap a title to the figure's width (about nine 11-point characters per inch)."""
    return "\n".join(textwrap.wrap(text, max(int(fig.get_figwidth() * 9), 30)))


def _label_outer(panels: list[Axes], ncols: int, xlabel: str, ylabel: str, owned: bool) -> None:
    """Axis labels on the bottom panel of each column and the first panel of each row (all if not owned)."""
    n = len(panels)
    for index, panel in enumerate(panels):
        if not owned or index + ncols >= n:
            panel.set_xlabel(xlabel, fontsize=9)
        if not owned or index % ncols == 0:
            panel.set_ylabel(ylabel, fontsize=9)


def _finish(
    fig: Figure,
    owned: bool,
    title: str = "",
    legend: list | None = None,
    note: str = "",
    ax: Axes | None = None,
) -> None:
    """Title, legend on top and a note underneath.

    On a figure this module created, the legend goes above the panels with the title as its heading
    and the note under everything. On the caller's axes (``owned=False``) the figure is left alone:
    the legend goes into ``ax`` and the note into its lower-left corner.
    """
    if not owned:
        if ax is not None and legend:
            ax.legend(handles=legend, fontsize=7, framealpha=0.9)
        if ax is not None and note:
            ax.text(
                0.01,
                0.01,
                "\n".join(textwrap.wrap(note, 70)),
                transform=ax.transAxes,
                fontsize=_NOTE_SIZE - 1,
                color="#444444",
                va="bottom",
                ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0},
            )
        return
    if legend:
        longest = max(len(handle.get_label()) for handle in legend)
        ncols = int(np.clip(fig.get_figwidth() // (0.075 * longest + 0.7), 1, len(legend)))
        fig.legend(
            handles=legend,
            loc="outside upper center",
            ncols=ncols,
            fontsize=8,
            frameon=False,
            title=_wrap(title, fig) or None,
            title_fontproperties={"size": 11},
        )
    elif title:
        fig.suptitle(_wrap(title, fig), fontsize=11)
    if note:
        # A handle-less legend holds the note: the layout engine reserves room for it under the panels.
        wrapped = "\n".join(textwrap.wrap(note, int(fig.get_figwidth() * 14)))
        box = fig.legend(
            handles=[],
            loc="outside lower left",
            frameon=False,
            title=wrapped,
            alignment="left",
            title_fontproperties={"size": _NOTE_SIZE},
        )
        box.get_title().set_color("#444444")
        box.set_gid("bayeslmm-note")
