"""Model: the PyMC hierarchical model of an lme4 formula.

For every random-effects block ``(expr | g)`` with ``k`` columns the model has, as lme4 estimates,
a full ``k x k`` covariance across the levels of ``g``, parametrised as standard deviations ``sd_<block>``
and a Cholesky factor of the correlation matrix ``corr_chol_<block>`` (LKJ prior). The group effects are
non-centred: ``ranef = z @ (diag(sd) @ corr_chol).T`` with ``z ~ Normal(0, 1)``, which avoids the funnel
that makes centred hierarchical models diverge when a variance is small.

Fixed-effect predictors are centred inside the model when there is an intercept (as brms and Bambi do):
the sampler sees an intercept that is nearly uncorrelated with the slopes, and ``beta`` reports the
intercept on the original scale.

Posterior variables (``b`` is a block name such as ``Subject``):

==================  =============================  ==================================================
name                dims                           meaning
==================  =============================  ==================================================
``beta``            (fixed_term,)                  fixed effects
``sigma``           ()                             residual SD (gaussian)
``sd_b``            (b__term,)                     SDs of the block's group effects
``corr_b``          (b__term, b__term_)            correlation matrix (blocks with k >= 2)
``ranef_b``         (b__level, b__term)            group deviations from the fixed effects
==================  =============================  ==================================================
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from bayeslmm.design import INTERCEPT, Design, RandomBlock
from bayeslmm.families import Family
from bayeslmm.priors import ModelPriors, Prior

__all__ = ["build_model", "var_names", "prior_variable"]


def var_names(block: RandomBlock) -> dict[str, str]:
    """Posterior variable and dimension names of one block."""
    b = block.name
    return {
        "sd": f"sd_{b}",
        "corr": f"corr_{b}",
        "corr_chol": f"corr_chol_{b}",
        "z": f"z_{b}",
        "ranef": f"ranef_{b}",
        "level": f"{b}__level",
        "term": f"{b}__term",
        "term_": f"{b}__term_",
    }


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
        aux = {"sigma": prior_variable("sigma", [priors.sigma], dims=None)} if priors.sigma is not None else {}
        if weighted:
            weight = pm.Data("loglik_weight", np.ones(design.n_obs), dims="obs")
            pm.Potential("weighted_loglik", (weight * family.pointwise_logp(eta, aux, design.y)).sum())
        else:
            family.add_likelihood(eta, aux, design.y)
    return model


def _fixed_part(design: Design, priors: ModelPriors):
    """Free fixed effects on centred predictors; ``beta`` on the original scale as a Deterministic."""
    X = design.X
    prior_list = [priors.fixed[term] for term in design.fixed_terms]
    if INTERCEPT not in design.fixed_terms or X.shape[1] == 1:
        beta = prior_variable("beta", prior_list, dims="fixed_term")
        return pt.dot(X, beta)
    intercept = design.fixed_terms.index(INTERCEPT)
    means = X.mean(axis=0)
    means[intercept] = 0.0
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
