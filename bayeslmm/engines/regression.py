"""Exact Bayesian linear regression: the engine of ``Lm`` (complete pooling) and ``Lm2`` (no pooling).

With Normal priors on the coefficients, ``beta_j ~ N(m_j, s_j^2)``, and any prior on the residual SD
``sigma``, the coefficients integrate out of a linear regression exactly:

    y | sigma ~ N(X m, sigma^2 I + X D X'),    D = diag(s^2).

With the SVD ``X D^{1/2} = U S V'`` (computed once) this marginal likelihood is a closed form in
``sigma`` for every value at once, so the posterior of ``t = log sigma`` is one-dimensional and cheap:

1. evaluate it on a grid of 4,097 points covering all but a negligible (< 1e-12) part of its mass;
2. propose independent draws from the piecewise log-linear interpolation ``q`` of that density (a
   mixture of exponential segments, sampled exactly) and accept each with the Metropolis-Hastings
   ratio ``min(1, p(t') q(t) / (p(t) q(t')))``: the draws follow the exact posterior, and with a grid
   this fine nearly every proposal is accepted, so the draws are nearly independent;
3. draw the coefficients from their exact Gaussian conditional given each ``sigma``:
   ``gamma = D^{-1/2}(beta - m) ~ N(V diag(S / (sigma^2 + S^2)) U' r, V diag(sigma^2 / (sigma^2 + S^2)) V')``.

Nothing is compiled; a fit of sleepstudy takes milliseconds. Predictors are centred within the
regression when there is an intercept (as the mixed models do), so the intercept's prior is at the
predictors' means.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.engines.posterior_names import dataset
from bayeslmm.engines.progress import Progress
from bayeslmm.engines.sampling import SamplerSettings, posterior_tree
from bayeslmm.spec.design import Design
from bayeslmm.spec.priors import ModelPriors
from bayeslmm.spec.random_effects import FixedEffects

__all__ = ["supports", "RegressionDraws", "sample_regression", "sample_tree"]

_GRID = 4097
_TAIL = 1e-12


def supports(priors: ModelPriors) -> bool:
    """Whether :func:`sample_regression` applies: Normal priors on every coefficient, a usable sigma prior."""
    if any(prior.normal_moments() is None for prior in priors.fixed.values()):
        return False
    sigma = priors.aux.get("sigma")
    return sigma is not None and (sigma.distribution == "HalfFlat" or sigma.scipy() is not None)


@dataclass(frozen=True)
class RegressionDraws:
    """Posterior draws of one regression.

    Attributes
    ----------
    beta : ndarray, shape (chains, draws, p)
        Coefficients on the original scale of ``X``.
    sigma : ndarray, shape (chains, draws)
    accepted : ndarray of bool, shape (chains, draws)
        Whether each step accepted its proposal (the acceptance rate is reported in sample_stats).
    """

    beta: np.ndarray
    sigma: np.ndarray
    accepted: np.ndarray


def sample_regression(
    fixed: FixedEffects, y: np.ndarray, priors: ModelPriors, *, draws: int, chains: int, rng: np.random.Generator
) -> RegressionDraws:
    """Exact posterior draws of a Gaussian linear regression (see the module docstring).

    Parameters
    ----------
    fixed : FixedEffects
        ``X`` (n, p) and its terms; centred by :meth:`FixedEffects.centring`, as every sampler does.
    y : ndarray, shape (n,)
    priors : ModelPriors
        ``fixed`` (Normal, one per term, the intercept's on the centred scale) and ``aux["sigma"]``.
    draws, chains : int
    rng : numpy.random.Generator
    """
    X, terms = fixed.X, fixed.terms
    n, p = X.shape
    means, _ = fixed.centring()
    Xc = X - means
    moments = [priors.fixed[t].normal_moments() for t in terms]
    m = np.array([mu for mu, _ in moments], dtype=float)
    s = np.array([sd for _, sd in moments], dtype=float)
    r = y - Xc @ m
    U, S, Vt = np.linalg.svd(Xc * s, full_matrices=False) if p else (np.zeros((n, 0)), np.zeros(0), np.zeros((0, 0)))
    c = U.T @ r
    rr = float(r @ r)
    log_density = _log_sigma_density(n, S, c, rr, priors.aux["sigma"])

    grid, values = _grid(log_density, y)
    total = chains * draws
    proposals = _draw_piecewise(grid, values, total + chains, rng)
    log_q = _log_piecewise(grid, values, proposals)
    log_p = log_density(proposals)
    log_w = log_p - log_q
    u = np.log(rng.uniform(size=total + chains))
    t = np.empty((chains, draws))
    accepted = np.zeros((chains, draws), dtype=bool)
    for chain in range(chains):
        offset = chain * (draws + 1)
        current = offset  # each chain starts at its own first proposal, an exact draw from q
        for step in range(draws):
            i = offset + 1 + step
            if u[i] < log_w[i] - log_w[current]:
                current = i
                accepted[chain, step] = True
            t[chain, step] = proposals[current]
    sigma = np.exp(t)

    # coefficients from their Gaussian conditional, in the whitened coordinates gamma = (beta - m) / s
    V = Vt.T
    s2 = sigma.reshape(-1, 1) ** 2
    S_full = np.concatenate([S, np.zeros(p - len(S))]) if p else S
    V_full = _complete_basis(V, p)
    proj = np.concatenate([c, np.zeros(p - len(c))]) if p else c
    mean_coords = (S_full / (s2 + S_full**2)) * proj
    sd_coords = np.sqrt(s2 / (s2 + S_full**2))
    z = rng.standard_normal((total, p))
    gamma = (mean_coords + sd_coords * z) @ V_full.T
    beta = fixed.uncentre(m + gamma * s)
    return RegressionDraws(beta=beta.reshape(chains, draws, p), sigma=sigma, accepted=accepted)


def _complete_basis(V: np.ndarray, p: int) -> np.ndarray:
    """``V`` (p, r) extended by an orthonormal basis of its complement to (p, p)."""
    if V.shape[1] == p:
        return V
    q, _ = np.linalg.qr(np.column_stack([V, np.eye(p)]))
    return np.column_stack([V, q[:, V.shape[1] : p]])


def _log_sigma_density(n: int, S: np.ndarray, c: np.ndarray, rr: float, prior):
    """log p(t | y) up to a constant, ``t = log sigma``: marginal likelihood, prior and Jacobian."""
    frozen = None if prior.distribution == "HalfFlat" else prior.scipy()
    S2 = S**2
    k = len(S)

    def log_density(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        s2 = np.exp(2 * t)[..., None]
        logdet = (n - k) * 2 * t + np.sum(np.log(s2 + S2), axis=-1)
        quad = rr / s2[..., 0] - np.sum(c**2 * S2 / (s2 * (s2 + S2)), axis=-1)
        loglik = -0.5 * (logdet + quad)
        log_prior = 0.0 if frozen is None else frozen.logpdf(np.exp(t))
        return loglik + log_prior + t

    return log_density


def _grid(log_density, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A grid over ``log sigma`` holding all but a negligible part of the posterior mass, and log p on it."""
    spread = float(np.std(y)) or 1.0
    lo, hi = math.log(spread) - 12.0, math.log(spread) + 6.0
    for _ in range(30):
        coarse = np.linspace(lo, hi, 513)
        values = log_density(coarse)
        top = np.nanmax(values)
        keep = np.flatnonzero(values > top + math.log(_TAIL))
        if keep.size == 0:
            break
        widen = False
        if keep[0] == 0:
            lo -= 0.5 * (hi - lo)
            widen = True
        if keep[-1] == len(coarse) - 1:
            hi += 0.5 * (hi - lo)
            widen = True
        if not widen:
            step = coarse[1] - coarse[0]
            lo, hi = coarse[max(keep[0] - 1, 0)] - step, coarse[min(keep[-1] + 1, len(coarse) - 1)] + step
            break
    grid = np.linspace(lo, hi, _GRID)
    return grid, log_density(grid)


def _segments(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: intercept ``a``, slope ``b`` of the log-linear interpolation, and log mass."""
    top = np.max(values)
    v = values - top
    h = np.diff(grid)
    b = np.diff(v) / h
    a = v[:-1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        small = np.abs(b * h) < 1e-8
        mass = np.where(small, np.exp(a) * h, np.exp(a) * np.expm1(b * h) / np.where(small, 1.0, b))
    return a, b, np.log(np.maximum(mass, 1e-300))


def _draw_piecewise(grid: np.ndarray, values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Exact draws from the normalised piecewise log-linear interpolation of ``values`` on ``grid``."""
    a, b, log_mass = _segments(grid, values)
    weights = np.exp(log_mass - np.max(log_mass))
    cell = rng.choice(len(weights), size=size, p=weights / weights.sum())
    h = np.diff(grid)[cell]
    slope = b[cell]
    u = rng.uniform(size=size)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        flat = np.abs(slope * h) < 1e-8
        offset = np.where(flat, u * h, np.log1p(u * np.expm1(slope * h)) / np.where(flat, 1.0, slope))
    return grid[cell] + np.clip(offset, 0.0, h)


def _log_piecewise(grid: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Log density of the normalised interpolation at ``t`` (up to the same constant for all ``t``)."""
    a, b, log_mass = _segments(grid, values)
    total = np.log(np.sum(np.exp(log_mass - np.max(log_mass)))) + np.max(log_mass)
    cell = np.clip(np.searchsorted(grid, t, side="right") - 1, 0, len(a) - 1)
    return a[cell] + b[cell] * (t - grid[cell]) - total


def sample_tree(
    design: Design,
    priors: list,
    codes: np.ndarray,
    levels: pd.Index | None,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    progressbar: bool = False,
) -> tuple[xr.DataTree, SamplerSettings]:
    """Posterior of one regression (``levels`` None) or of one regression per group, by the exact engine.

    Parameters
    ----------
    design : Design
        All rows (without random effects).
    priors : list of ModelPriors
        One per group (one for a single regression).
    codes : ndarray of int, shape (n,)
        Group of each row.
    levels : pandas.Index, optional
        The groups; None for a single regression (``beta`` has dims (fixed_term,), else (group, fixed_term)).
    progressbar : bool
        Show bayeslmm's progress bar (regressions done).

    Returns
    -------
    idata : xarray.DataTree
        ``posterior`` (``beta``, ``sigma``), ``sample_stats`` (``diverging`` all False, ``accepted`` and
        the mean ``acceptance_rate`` of the independence steps), ``observed_data``.
    settings : SamplerSettings
    """
    start = time.perf_counter()
    rng = np.random.default_rng(random_seed)
    groups = 1 if levels is None else len(levels)
    fits = []
    with Progress(groups, f"Exact posterior, {chains} chains", "regressions", enabled=progressbar) as bar:
        for g in range(groups):
            rows = codes == g
            fits.append(sample_regression(design.fixed.subset(rows), design.y[rows], priors[g], draws=draws, chains=chains, rng=rng))
            bar.update(g + 1)
    coords = {"chain": np.arange(chains), "draw": np.arange(draws), "fixed_term": list(design.fixed_terms)}
    if levels is None:
        posterior = dataset(
            {"beta": (("chain", "draw", "fixed_term"), fits[0].beta), "sigma": (("chain", "draw"), fits[0].sigma)},
            coords,
        )
    else:
        coords["group"] = list(levels)
        posterior = dataset(
            {
                "beta": (("chain", "draw", "group", "fixed_term"), np.stack([f.beta for f in fits], axis=2)),
                "sigma": (("chain", "draw", "group"), np.stack([f.sigma for f in fits], axis=2)),
            },
            coords,
        )
    accepted = np.mean([f.accepted for f in fits], axis=0)
    stats = dataset(
        {
            "diverging": (("chain", "draw"), np.zeros((chains, draws), dtype=bool)),
            "acceptance_rate": (("chain", "draw"), accepted),
        },
        {"chain": np.arange(chains), "draw": np.arange(draws)},
        {"inference_library": "bayeslmm", "sampler": "exact Gaussian regression"},
    )
    tree = posterior_tree(posterior, stats, design.y)
    rate = float(accepted.mean()) if accepted.size else 1.0
    settings = SamplerSettings(
        sampler=f"exact regression (independence MH on sigma, {rate:.1%} accepted)",
        draws=draws, tune=0, chains=chains, random_seed=random_seed, seconds=time.perf_counter() - start,
    )
    return tree, settings
