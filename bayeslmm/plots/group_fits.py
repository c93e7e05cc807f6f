"""Group fits: one facet per group with its data, posterior mean and nested credible bands."""

from __future__ import annotations

import dataclasses

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bayeslmm.engines import least_squares
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.errors import DataError
from bayeslmm.plots.common import (
    check_fitted,
    check_positive_int,
    check_probs,
    find_term,
    flat_draws,
    no_pooling_fits,
)
from bayeslmm.plots.style import (
    COLORS,
    DEFAULT_PROBS,
    band_alphas,
    facet_title,
    finish_figure,
    interval_widths,
    label_outer,
    make_facets,
    nested_patches,
    point_alpha,
    prob_label,
    shorten,
)
from bayeslmm.results.posterior import linear_predictor, thinned
from bayeslmm.spec.design import Design


def plot_group_fits(
    model: Any,
    x: str | None = None,
    group: str | None = None,
    *,
    groups: Sequence[Any] | None = None,
    max_groups: int = 24,
    col_wrap: int = 6,
    probs: Sequence[float] = DEFAULT_PROBS,
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
    check_fitted(model, "plot_group_fits")
    design = model.design
    factor = design.random.resolve_factor(group)
    x = _resolve_x(design, x)
    check_probs(probs)
    check_positive_int(max_groups=max_groups, col_wrap=col_wrap, n_grid=n_grid, max_draws=max_draws)

    posterior = model.posterior
    shown, note = _select_groups(design, posterior, factor, groups, max_groups)
    grid = _prediction_grid(design, x, n_grid)
    bands = _group_expected_response(model, posterior, factor, shown, grid, probs, max_draws)
    overlays = _pooling_overlays(model, factor, shown, grid, no_pooling, complete_pooling)

    fig, panels, owned = make_facets(len(shown), col_wrap, panel_size, sharey, axes)
    rng = np.random.default_rng(seed)
    data_x, codes = design.data[x], design.blocks_of(factor)[0].group_index
    levels = design.factors[factor]
    jitter = _jitter_widths(design.y, data_x, grid.categorical)
    n_thinned = 0
    for panel, (position, g) in zip(panels, enumerate(shown)):
        rows = np.flatnonzero(codes == g)
        if len(rows) > max_points:
            rows, n_thinned = np.sort(rng.choice(rows, max_points, replace=False)), n_thinned + 1
        draw = _draw_group_categorical if grid.categorical else _draw_group_numeric
        y_rows = design.y[rows] + (rng.uniform(-jitter[1], jitter[1], len(rows)) if jitter[1] else 0.0)
        draw(panel, grid, data_x.iloc[rows], y_rows, bands, position, overlays, rng, jitter[0])
        panel.set_title(facet_title(factor, levels[g]), fontsize=9, pad=3)
        panel.tick_params(labelsize=8)
    notes = [note] if note else []
    if n_thinned:
        notes.append(f"{n_thinned} facet(s) show a random {max_points} of their points.")
    if "no_pooling" in overlays and np.isnan(overlays["no_pooling"]).all(axis=1).any():
        missing = int(np.isnan(overlays["no_pooling"]).all(axis=1).sum())
        notes.append(f"{missing} facet(s) have no no-pooling line: the group's own data cannot identify it.")
    if jitter[1]:
        notes.append("Points are jittered: the response takes few distinct values.")
    if grid.held:
        notes.append("Other predictors held at " + ", ".join(f"{k} = {v}" for k, v in grid.held.items()) + ".")
    handles = _group_fit_handles(probs, grid.categorical, overlays)
    label_outer(panels, min(col_wrap, len(panels)), x, design.formula.response, owned)
    finish_figure(
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

    ``X`` has the fixed-effects columns, ``Z[block_name]`` each random block's columns, ``held``
    the values other predictors are held at (for the note), and ``design`` the grid as a Design (no
    group assigned: every level is unseen).
    """

    x: str
    values: np.ndarray
    categorical: bool
    X: np.ndarray
    Z: dict
    held: dict
    design: Design


def _resolve_x(design: Design, x: str | None) -> str:
    predictors = design.predictor_columns()
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
    for column in design.predictor_columns():
        if column == x:
            continue
        typical = _typical(data[column])
        held[column] = f"{typical:.3g}" if isinstance(typical, float) else str(typical)
        frame[column] = _like(data[column], [typical] * len(values))
    new = design.evaluate(frame)
    Z = {block.name: block.Z for block in new.blocks}
    return _Grid(x, values, categorical, new.X, Z, held, new)


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
                f"e.g. {[shorten(v) for v in levels[:5]]}"
            )
        return np.array([lookup[str(g)] for g in groups]), ""
    if len(levels) <= max_groups:
        return np.arange(len(levels)), ""
    block = design.blocks_of(factor)[0]
    estimate = flat_draws(posterior, var_names(block)["ranef"])[..., 0].mean(axis=0)
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
    m = len(grid.values)
    # the grid repeated for each shown group, its rows given to that group (other factors: population level)
    rows = grid.design.subset(np.tile(np.arange(m), len(shown)))
    codes = np.repeat(shown, m)
    blocks = tuple(
        dataclasses.replace(block, group_index=codes) if block.factor == factor else block for block in rows.blocks
    )
    rows = dataclasses.replace(rows, random=dataclasses.replace(rows.random, blocks=blocks))
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    eta = linear_predictor(rows, posterior, thinned(total, max_draws)).reshape(-1, len(shown), m)
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
    for prob, alpha in zip(sorted(_band_probs(bands), reverse=True), band_alphas(len(_band_probs(bands)))):
        lower, upper = bands[prob][0, position], bands[prob][1, position]
        ax.fill_between(grid.values, lower, upper, color=color, alpha=alpha, linewidth=0)
    x = np.asarray(x, dtype=float) + (rng.uniform(-x_jitter, x_jitter, len(x)) if x_jitter else 0.0)
    ax.scatter(x, y, s=9, color=COLORS["data"], alpha=point_alpha(len(y)), linewidths=0, zorder=3)
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
        alpha=point_alpha(len(y)),
        linewidths=0,
        zorder=3,
    )
    positions = np.arange(len(grid.values))
    for prob, width in zip(sorted(_band_probs(bands), reverse=True), interval_widths(len(_band_probs(bands)))):
        lower, upper = bands[prob][0, position], bands[prob][1, position]
        ax.vlines(positions + 0.18, lower, upper, color=color, linewidth=width, zorder=4)
    ax.scatter(
        positions + 0.18, bands["mean"][position], s=22, color=color, edgecolors="white", linewidths=0.6, zorder=5
    )
    for key, marker, shift in (("no_pooling", "D", 0.31), ("complete_pooling", "s", 0.42)):
        if key in overlays:
            ax.scatter(positions + shift, overlays[key][position], s=16, marker=marker, color=COLORS[key], zorder=5)
    ax.set_xticks(positions, [shorten(v) for v in grid.values])
    ax.set_xlim(-0.45, len(positions) - 0.4)


def _band_probs(bands: dict) -> list[float]:
    return [key for key in bands if key != "mean"]


def _group_fit_handles(probs: Sequence[float], categorical: bool, overlays: dict) -> list:
    color = COLORS["posterior"]
    handles = [Line2D([], [], marker="o", linestyle="", color=COLORS["data"], markersize=4, label="data")]
    if categorical:
        handles.append(
            Line2D(
                [], [], marker="o", color=color, linewidth=2.5, label=f"posterior mean, {prob_label(probs)} intervals"
            )
        )
    else:
        handles.append(Line2D([], [], color=color, linewidth=1.6, label="posterior mean"))
        handles += nested_patches(probs)
    if "no_pooling" in overlays:
        style = {"marker": "D", "linestyle": ""} if categorical else {"linestyle": "--"}
        handles.append(Line2D([], [], color=COLORS["no_pooling"], label="no pooling (OLS per group)", **style))
    if "complete_pooling" in overlays:
        style = {"marker": "s", "linestyle": ""} if categorical else {"linestyle": ":"}
        handles.append(Line2D([], [], color=COLORS["complete_pooling"], label="complete pooling (one OLS)", **style))
    return handles


def _pooling_overlays(model, factor, shown, grid, no_pooling: bool, complete_pooling: bool) -> dict[str, np.ndarray]:
    """Lines (or level values) of the no-pooling and complete-pooling fits, shape (G shown, m)."""
    out: dict[str, np.ndarray] = {}
    if complete_pooling:
        coef = least_squares.complete_pooling(model.design).to_numpy()[None, :]
        out["complete_pooling"] = np.broadcast_to(_predict(grid.X, coef), (len(shown), len(grid.values)))
    if no_pooling:
        table = no_pooling_fits(model, factor)
        columns = _grid_columns(model.design, factor, grid, list(table.columns))
        out["no_pooling"] = _predict(columns, table.to_numpy()[shown])
    return out


def _grid_columns(design: Design, factor: str, grid: _Grid, terms: list[str]) -> np.ndarray:
    """Model-matrix columns of ``terms`` along the grid: fixed columns, else the factor's block columns."""
    columns = []
    for term in terms:
        if term in design.fixed_terms:
            columns.append(grid.X[:, design.fixed_terms.index(term)])
        else:
            block, j = find_term(design, factor, term)
            columns.append(grid.Z[block.name][:, j])
    return np.column_stack(columns)


def _predict(X: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """``coefs @ X.T`` for (G, p) coefficients, NaN only where a row uses an unidentified coefficient."""
    missing = np.isnan(coefs).astype(float) @ (X != 0).T.astype(float) > 0
    values = np.nan_to_num(coefs) @ X.T
    values[missing] = np.nan
    return values
