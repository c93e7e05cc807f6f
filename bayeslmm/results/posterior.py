"""The model evaluated at posterior draws: linear predictor, pointwise log-likelihood, replicated data.

Everything goes through :meth:`bayeslmm.spec.design.Design.linear_predictor`, in NumPy and in chunks of
draws (nothing is compiled, and memory stays bounded for large data).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayeslmm.engines.posterior_names import var_names
from bayeslmm.results.summaries import pearson_residuals, stack_draws
from bayeslmm.spec.design import Design

__all__ = [
    "linear_predictor",
    "posterior_mean_fit",
    "posterior_mean_response",
    "posterior_mean_pearson",
    "pointwise_log_likelihood",
    "posterior_predictive",
    "aux_draws",
    "thinned",
]

_CHUNK = 500


def thinned(total: int, n_draws: int | None) -> np.ndarray:
    """Positions of ``n_draws`` evenly spaced draws among ``total`` (all when None or larger)."""
    if n_draws is None or n_draws >= total:
        return np.arange(total)
    step = max(total // n_draws, 1)
    return np.arange(0, step * n_draws, step)


def linear_predictor(design: Design, posterior: xr.Dataset, draws: slice | np.ndarray | None = None) -> np.ndarray:
    """``X beta + Z b + offset`` for posterior draws.

    Parameters
    ----------
    design : Design
        The rows to evaluate (the fitted ones, or new rows from :meth:`Design.evaluate`).
    posterior : xarray.Dataset
    draws : slice or ndarray of int, optional
        Which of the flattened (chain x draw) draws to use; all by default.

    Returns
    -------
    ndarray, shape (draws, n)
    """
    select = slice(None) if draws is None else draws
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    beta = stack_draws(posterior, "beta").reshape(total, len(design.fixed_terms))[select]
    effects = []
    for block in design.blocks:
        ranef = stack_draws(posterior, var_names(block)["ranef"])
        effects.append(ranef.reshape(-1, block.n_levels, block.n_terms)[select])
    return design.linear_predictor(beta, effects if design.blocks else None)


def posterior_mean_fit(design: Design, posterior: xr.Dataset) -> np.ndarray:
    """Posterior mean of the linear predictor, shape (n,): exact by linearity from posterior means."""
    beta = stack_draws(posterior, "beta").mean(axis=(0, 1))
    effects = [stack_draws(posterior, var_names(block)["ranef"]).mean(axis=(0, 1)) for block in design.blocks]
    return design.linear_predictor(beta, effects if design.blocks else None)


def posterior_mean_response(design: Design, posterior: xr.Dataset, family, chunk: int = _CHUNK) -> np.ndarray:
    """Posterior mean of the expected response ``g^{-1}(eta)``, shape (n,); identity links need no draws."""
    if family.link.name == "identity":
        return posterior_mean_fit(design, posterior)
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    mean = np.zeros(design.n_obs)
    for start in range(0, total, chunk):
        part = slice(start, min(start + chunk, total))
        mean += family.inverse_link(linear_predictor(design, posterior, part)).sum(axis=0)
    return mean / total


def posterior_mean_pearson(design: Design, posterior: xr.Dataset, family, chunk: int = _CHUNK) -> np.ndarray:
    """Posterior mean of the Pearson residuals ``(y - E y) / sd(y)``, shape (n,), as brms's ``residuals(type = "pearson")``.

    Every draw's residuals use its own means and family parameters; their mean over draws is returned.
    """
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    aux = aux_draws(posterior, family)
    mean = np.zeros(design.n_obs)
    for start in range(0, total, chunk):
        part = slice(start, min(start + chunk, total))
        mu = family.inverse_link(linear_predictor(design, posterior, part))
        mean += pearson_residuals(design, family, mu, {k: v[part] for k, v in aux.items()}).sum(axis=0)
    return mean / total


def aux_draws(posterior: xr.Dataset, family) -> dict[str, np.ndarray]:
    """Flattened draws (chain x draw,) of the family's auxiliary parameters."""
    return {name: stack_draws(posterior, name).reshape(-1) for name in family.aux}


def pointwise_log_likelihood(design: Design, posterior: xr.Dataset, family, chunk: int = _CHUNK) -> np.ndarray:
    """Log-likelihood of every observation under every draw, in NumPy (no compilation).

    Parameters
    ----------
    family : Family
    chunk : int
        Draws per batch, which bounds the memory of the intermediate linear predictor.

    Returns
    -------
    ndarray, shape (chain, draw, n)
    """
    chains, draws = posterior.sizes["chain"], posterior.sizes["draw"]
    total = chains * draws
    aux = aux_draws(posterior, family)
    values = np.empty((total, design.n_obs))
    for start in range(0, total, chunk):
        part = slice(start, min(start + chunk, total))
        mu = family.inverse_link(linear_predictor(design, posterior, part))
        values[part] = family.log_likelihood(design.y, mu, {k: v[part] for k, v in aux.items()}, trials=design.trials)
    return values.reshape(chains, draws, design.n_obs)


def posterior_predictive(
    design: Design, posterior: xr.Dataset, family, n_draws: int | None = None, random_seed: int | None = None
) -> np.ndarray:
    """Replicated data sets from the posterior predictive distribution.

    Parameters
    ----------
    family : Family
    n_draws : int, optional
        How many posterior draws to use (evenly thinned); all by default.

    Returns
    -------
    ndarray, shape (n_draws, n)
    """
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    chosen = thinned(total, n_draws)
    mu = family.inverse_link(linear_predictor(design, posterior, chosen))
    aux = {name: values[chosen] for name, values in aux_draws(posterior, family).items()}
    return family.random(mu, aux, np.random.default_rng(random_seed), trials=design.trials)
