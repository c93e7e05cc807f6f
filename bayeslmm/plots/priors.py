"""Prior against posterior for any hyperparameter, with the posterior contraction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bayeslmm.errors import DataError
from bayeslmm.plots.common import (
    Param,
    check_fitted,
    check_positive_int,
    hyperparameters,
    kde_density,
)
from bayeslmm.plots.style import COLORS, finish_figure, make_facets
from bayeslmm.spec.random_effects import INTERCEPT


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
    check_fitted(model, "plot_prior_posterior")
    check_positive_int(n_prior_draws=n_prior_draws)
    catalog = hyperparameters(model)
    chosen = _resolve_params(catalog, params)
    prior_draws = _prior_draws(model, chosen, n_prior_draws, seed)
    fig, panels, owned = make_facets(len(chosen), col_wrap, panel_size, False, axes, sharex=False)
    for panel, param in zip(panels, chosen):
        exact = _lkj_marginal(model, param) if param.kind == "corr" else None
        _prior_posterior_panel(panel, param, prior_draws[param.name], _prior_text(model, param), exact)
    handles = [
        Patch(color=COLORS["prior"], alpha=0.45, label="prior"),
        Patch(color=COLORS["posterior"], alpha=0.45, label="posterior"),
    ]
    finish_figure(fig, owned, title="Prior and posterior: " + model.design.formula.text, legend=handles, ax=panels[0])
    return fig


def _resolve_params(catalog: list[Param], params) -> list[Param]:
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


def _prior_draws(model: Any, params: list[Param], n: int, seed: int) -> dict[str, np.ndarray]:
    """Prior draws of each parameter from the model's resolved priors (:meth:`bayeslmm.Prior.sample`)."""
    priors = model.model_priors
    design = model.design
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    if any(p.kind == "fixed" for p in params):
        # the intercept's prior is on centred predictors; the reported intercept is shifted back
        fixed = np.stack([priors.fixed[t].sample(n, rng) for t in design.fixed_terms], axis=1)
        fixed = design.fixed.uncentre(fixed)
        for j, term in enumerate(design.fixed_terms):
            out[term] = fixed[:, j]
    for param in params:
        if param.kind == "sd":
            _, block, term = param.key
            out[param.name] = priors.group_sd[block][term].sample(n, rng)
        elif param.kind == "sigma" and priors.sigma is not None:
            out[param.name] = priors.sigma.sample(n, rng)
        elif param.kind == "corr":
            block = next(b for b in design.blocks if b.name == param.key[1])
            shape = priors.eta[block.name] - 1 + block.n_terms / 2
            # marginal of one correlation under LKJ(eta) in k dimensions: Beta(shape, shape) on (-1, 1)
            out[param.name] = 2 * rng.beta(shape, shape, n) - 1
    return out


def _prior_text(model: Any, param: Param) -> str:
    """The prior as the user would write it, e.g. ``Normal(mu=0, sigma=49.06)``."""
    priors = model.model_priors
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


def _prior_posterior_panel(ax: Axes, param: Param, prior: np.ndarray, prior_text: str, exact=None) -> None:
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
        density = density_of(grid) if density_of is not None else kde_density(draws, grid, *param.bounds)
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


def _lkj_marginal(model: Any, param: Param):
    """Exact prior density of one correlation under LKJ(eta): a Beta(a, a) on (-1, 1), a = eta - 1 + k/2."""
    from scipy import stats

    block = next(b for b in model.design.blocks if b.name == param.key[1])
    shape = model.model_priors.eta[block.name] - 1 + block.n_terms / 2
    return lambda grid: stats.beta.pdf((grid + 1) / 2, shape, shape) / 2
