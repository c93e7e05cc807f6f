"""The full PyMC model of an lme4 formula, and NUTS on it (nutpie or PyMC).

For every random-effects block ``(expr | g)`` with ``k`` columns the model has, as lme4 estimates,
a full ``k x k`` covariance across the levels of ``g``, parametrised as standard deviations ``sd_<block>``
and a Cholesky factor of the correlation matrix ``corr_chol_<block>`` (LKJ prior). The group effects are
non-centred: ``ranef = z @ (diag(sd) @ corr_chol).T`` with ``z ~ Normal(0, 1)``, which avoids the funnel
that makes centred hierarchical models diverge when a variance is small.

Fixed-effect predictors are centred inside the model when there is an intercept (as brms and Bambi do):
the sampler sees an intercept that is nearly uncorrelated with the slopes, and ``beta`` reports the
intercept on the original scale.

The posterior variables are named as in :mod:`bayeslmm.engines.posterior_names`.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from bayeslmm.engines.posterior_names import dataset, var_names
from bayeslmm.engines.progress import Progress, nutpie_callback
from bayeslmm.engines.sampling import SamplerSettings
from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family
from bayeslmm.spec.priors import ModelPriors, Prior
from bayeslmm.spec.random_effects import RandomBlock

__all__ = ["build_model", "build_group_regressions", "prior_variable", "sample_pymc"]


def build_model(design: Design, priors: ModelPriors, family: Family, weighted: bool = False) -> pm.Model:
    """Build the PyMC model.

    Parameters
    ----------
    design : Design
    priors : ModelPriors
    family : Family
    weighted : bool
        Instead of an observed ``y``, add the potential ``sum_i w_i log p(y_i | ...)`` with weights
        ``w`` in the data container ``loglik_weight`` (all 1). Setting a weight to 0 holds a row out
        while its group keeps its level, so cross-validation refits one compiled model
        (``nutpie``'s ``with_data``) instead of compiling one per fold.

    Returns
    -------
    pymc.Model
        With the posterior variables described in this module's docstring, and ``y`` observed.
    """
    coords: dict[str, object] = {"fixed_term": list(design.fixed_terms), "obs": np.arange(design.n_obs)}
    for block in design.blocks:
        names = var_names(block)
        coords[names["level"]] = list(block.levels)
        coords[names["term"]] = list(block.terms)
        coords[names["term_"]] = list(block.terms)

    with pm.Model(coords=coords) as model:
        eta = _fixed_part(design, priors)
        for block in design.blocks:
            eta = eta + _block_part(block, priors)
        if design.offset is not None:
            eta = eta + design.offset
        aux = {name: prior_variable(name, [prior], dims=None) for name, prior in priors.aux.items()}
        if weighted:
            weight = pm.Data("loglik_weight", np.ones(design.n_obs), dims="obs")
            pointwise = pm.logp(family.pymc_likelihood(eta, aux, None, trials=design.trials), design.y)
            pm.Potential("weighted_loglik", (weight * pointwise).sum())
        else:
            family.pymc_likelihood(eta, aux, design.y, trials=design.trials)
    return model


def _fixed_part(design: Design, priors: ModelPriors):
    """Free fixed effects on centred predictors; ``beta`` on the original scale as a Deterministic."""
    X = design.X
    prior_list = [priors.fixed[term] for term in design.fixed_terms]
    if not prior_list:
        return pt.zeros(design.n_obs)
    means, intercept = design.fixed.centring()
    if intercept is None:
        beta = prior_variable("beta", prior_list, dims="fixed_term")
        return pt.dot(X, beta)
    beta_centered = prior_variable("beta_centered", prior_list, dims="fixed_term")
    shift = pt.dot(means, beta_centered)
    pm.Deterministic("beta", pt.set_subtensor(beta_centered[intercept], beta_centered[intercept] - shift), dims="fixed_term")
    return pt.dot(X - means, beta_centered)


def _block_part(block: RandomBlock, priors: ModelPriors):
    """Contribution ``sum_j Z[:, j] * ranef[g[i], j]`` of one block to the linear predictor."""
    names = var_names(block)
    sd = prior_variable(names["sd"], [priors.group_sd[block.name][t] for t in block.terms], dims=names["term"])
    z = pm.Normal(names["z"], 0.0, 1.0, dims=(names["level"], names["term"]))
    if block.n_terms > 1:
        corr_chol = pm.LKJCorr(names["corr_chol"], n=block.n_terms, eta=priors.eta[block.name])
        pm.Deterministic(names["corr"], corr_chol @ corr_chol.T, dims=(names["term"], names["term_"]))
        ranef = pt.dot(z, corr_chol.T) * sd
    else:
        ranef = z * sd
    ranef = pm.Deterministic(names["ranef"], ranef, dims=(names["level"], names["term"]))
    return (block.Z * ranef[block.group_index]).sum(axis=1)


def prior_variable(name: str, prior_list: list[Prior], dims):
    """One random variable with a (possibly vector) prior.

    Elements that share a distribution share one vector variable with stacked parameters; when the
    user mixes distributions, each element gets its own scalar variable ``name[i]`` and they are
    stacked, so any prior can be set on any single coefficient.
    """
    if dims is None:
        (prior,) = prior_list
        return getattr(pm, prior.distribution)(name, **prior.params)
    families = {(p.distribution, tuple(sorted(p.params))) for p in prior_list}
    if len(families) == 1:
        distribution, keys = families.pop()
        params = {key: np.array([p.params[key] for p in prior_list], dtype=float) for key in keys}
        return getattr(pm, distribution)(name, **params, dims=dims)
    elements = [getattr(pm, p.distribution)(f"{name}[{i}]", **p.params) for i, p in enumerate(prior_list)]
    return pm.Deterministic(name, pt.stack(elements), dims=dims)


def default_nuts_sampler() -> str:
    """``"nutpie"`` when importable, else ``"pymc"``."""
    import importlib.util

    return "nutpie" if importlib.util.find_spec("nutpie") else "pymc"


def sample_pymc(
    model: pm.Model,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    keep: list[str],
    progressbar: bool = False,
    **options,
) -> tuple[xr.DataTree, SamplerSettings]:
    """Sample the full PyMC ``model`` with NUTS: nutpie (default) or PyMC's own (``nuts_sampler="pymc"``).

    Progress is shown by bayeslmm's own bar (:mod:`bayeslmm.engines.progress`); neither sampler prints.

    Parameters
    ----------
    model : pymc.Model
        With an observed variable ``y`` (or a weighted log-likelihood potential).
    draws, tune, chains : int
        Kept draws, tuning steps and chains.
    random_seed : int or None
        The same seed gives the same draws.
    keep : list of str
        Posterior variables to keep; internal ones (non-centred ``z``, centred ``beta``) are dropped.
    progressbar : bool
    **options
        ``nuts_sampler``, ``target_accept``, ``maxdepth``, ``cores``.

    Returns
    -------
    idata : xarray.DataTree
        With ``posterior`` (only ``keep``), ``sample_stats`` and ``observed_data`` groups.
    settings : SamplerSettings
    """
    options = dict(options)
    nuts_sampler = options.pop("nuts_sampler", default_nuts_sampler())
    options.pop("method", None)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # PyTensor's advice about BLAS concerns its C backend; nutpie compiles with numba instead
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        with Progress(chains * (draws + tune), f"Sampling {chains} chains", "draws", enabled=progressbar) as bar:
            if nuts_sampler == "nutpie":
                idata = _sample_nutpie(model, draws, tune, chains, random_seed, keep, bar if progressbar else None, options)
            else:
                idata = _sample_pymc_nuts(model, draws, tune, chains, random_seed, bar if progressbar else None, options)
    seconds = time.perf_counter() - start
    observed = model.rvs_to_values[model["y"]].data if "y" in model.named_vars else np.zeros(0)
    tree = xr.DataTree.from_dict(
        {
            "posterior": idata["posterior"].to_dataset()[keep],
            "sample_stats": idata["sample_stats"].to_dataset(),
            "observed_data": dataset({"y": (("obs",), np.asarray(observed, dtype=float))}),
        }
    )
    settings = SamplerSettings(
        sampler=nuts_sampler, draws=draws, tune=tune, chains=chains, random_seed=random_seed, seconds=seconds
    )
    return tree, settings


def _sample_nutpie(model, draws, tune, chains, random_seed, keep, bar, options) -> xr.DataTree:
    """nutpie on the model compiled by PyMC (numba backend), without nutpie's own progress display."""
    import nutpie

    compiled = nutpie.compile_pymc_model(model, var_names=keep)
    return nutpie.sample(
        compiled, draws=draws, tune=tune, chains=chains, seed=random_seed, save_warmup=False, progress_bar=False,
        progress_callback=nutpie_callback(bar) if bar is not None else None, **options,
    )


def _sample_pymc_nuts(model, draws, tune, chains, random_seed, bar, options) -> xr.DataTree:
    """PyMC's own NUTS, with its progress bar and log lines replaced by bayeslmm's bar."""
    import logging

    if "maxdepth" in options:
        options["max_treedepth"] = options.pop("maxdepth")
    counted = [0]

    def callback(trace, draw) -> None:
        counted[0] += 1
        bar.update(counted[0])

    logger = logging.getLogger("pymc")
    level = logger.level
    logger.setLevel(logging.WARNING)  # "NUTS: [beta_centered, ...]" names internal variables
    try:
        return pm.sample(
            model=model, draws=draws, tune=tune, chains=chains, random_seed=random_seed, progressbar=False,
            compute_convergence_checks=False, callback=callback if bar is not None else None, **options,
        )
    finally:
        logger.setLevel(level)


def build_group_regressions(
    design: Design, codes: np.ndarray, levels: pd.Index, priors: list[ModelPriors], family: Family
) -> pm.Model:
    """One PyMC model holding G independent regressions (``Lm2`` with non-Normal priors).

    Variables: ``beta`` (group, fixed_term) on the original scale, ``sigma`` (group,). Predictors are
    centred within each group (:meth:`~bayeslmm.spec.random_effects.FixedEffects.centring` of the
    group's rows), so each group's intercept prior is at that group's means.
    """
    terms = list(design.fixed_terms)
    X, G = design.X, len(levels)
    coords = {"group": list(levels), "fixed_term": terms, "obs": np.arange(design.n_obs)}
    grid = [[group_priors.fixed[term] for term in terms] for group_priors in priors]
    with pm.Model(coords=coords) as model:
        centrings = [design.fixed.subset(codes == g).centring() for g in range(G)]
        intercept = centrings[0][1]
        if intercept is not None:
            means = np.stack([means for means, _ in centrings])
            centred = _matrix_rv("beta_centered", grid, dims=("group", "fixed_term"))
            shift = (means * centred).sum(axis=1)
            pm.Deterministic(
                "beta",
                pt.set_subtensor(centred[:, intercept], centred[:, intercept] - shift),
                dims=("group", "fixed_term"),
            )
            eta = ((X - means[codes]) * centred[codes]).sum(axis=1)
        else:
            beta = _matrix_rv("beta", grid, dims=("group", "fixed_term"), name_as_deterministic=True)
            eta = (X * beta[codes]).sum(axis=1)
        sigma = prior_variable("sigma", [group_priors.sigma for group_priors in priors], dims="group")
        family.pymc_likelihood(eta, {"sigma": sigma[codes]}, design.y)
    return model


def _matrix_rv(name: str, grid: list[list[Prior]], dims: tuple[str, str], name_as_deterministic: bool = False):
    """A (G, p) variable from a G x p grid of priors: one variable when they share a distribution,
    else one vector per column (``name[term]``) stacked."""
    families = {(prior.distribution, tuple(sorted(prior.params))) for row in grid for prior in row}
    if len(families) == 1:
        distribution, keys = families.pop()
        params = {key: np.array([[prior.params[key] for prior in row] for row in grid], dtype=float) for key in keys}
        return getattr(pm, distribution)(name, **params, dims=dims)
    terms = pm.modelcontext(None).coords[dims[1]]
    columns = [prior_variable(f"{name}[{term}]", [row[j] for row in grid], dims[0]) for j, term in enumerate(terms)]
    stacked = pt.stack(columns, axis=1)
    return pm.Deterministic(name, stacked, dims=dims) if name_as_deterministic else stacked
