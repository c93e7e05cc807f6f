"""
For a Gaussian model the fixed effects (Normal priors) and the group effects are jointly Gaussian given
the variance parameters, so they can be integrated out of the likelihood exactly. Write
``gamma = (beta_c - m, b)`` for the deviations of the centred fixed effects from their prior mean ``m``
and the group effects, ``U = [Xc, Z]``, ``r = y - Xc m`` and ``D`` the prior covariance of ``gamma``
(the fixed prior variances, and ``Sigma_j (x) I_G`` for every block ``j``). Then

    y | theta ~ N(Xc m, sigma^2 I + U D U'),

and with ``M = D^{-1} + U'U / sigma^2`` (Woodbury / matrix determinant lemma)

    log p(y | theta) = -1/2 [n log 2 pi + n log sigma^2 + log|D| + log|M| + r'r / sigma^2 - c' M^{-1} c],
    c = U'r / sigma^2.

``U'U``, ``U'r`` and ``r'r`` are computed once, so one evaluation costs nothing that grows with ``n``.
``M`` is sparse: the block with most columns (``e``, e.g. the subjects) is block diagonal, so it is
eliminated group by group and only the Schur complement over the rest (fixed effects and the other
blocks: ``R`` columns) is a dense Cholesky. The gradient follows from the EM identities
``d/dP_j = -(T_j + Q_j - G_j Sigma_j)/2`` (``T_j``: sum of the diagonal blocks of ``M^{-1}``, ``Q_j``:
sum of ``mu_g mu_g'``), so no automatic differentiation is needed.

NUTS (nutpie) then samples only ``theta`` = (log sigma, the SDs' parameters, Stan's unconstrained
correlation Cholesky parameters), with the same priors as :mod:`bayeslmm.engines.pymc_model` and the
Jacobians of those transforms. An SD is ``exp(x)``, or ``scale * softplus(x)`` when its prior's upper
tail is light (half-normal, exponential, gamma, Weibull: the GLMM engine's transform): where a grouping
factor has few levels the SD's posterior is close to its prior, whose log density in ``log sd`` falls
doubly exponentially, and NUTS diverged there (1-8 times per fit on a 3-level factor; 0 now). For each kept draw, ``gamma`` is drawn from its exact conditional ``N(M^{-1} c, M^{-1})``.
The log density is a numba function compiled once (``cache=True``) for every model, handed to nutpie
as a C callback: no per-model compilation and no Python in the sampling loop. nutpie's raw Arrow trace
is read directly into the ``sample_stats`` Dataset (its ArviZ conversion cost as much as the sampling).

When the dense part is large (``R > MAX_NUTS``, e.g. InstEval's 1,144 lecturer and department effects),
a gradient costs several dense R x R inversions, so NUTS is replaced by :func:`sample_imh`: an
independence Metropolis-Hastings sampler whose proposal is a split Student-t around the posterior mode
(the Laplace approximation from finite differences of the log density, with a scale on either side of
the mode along each axis), with every proposal's effects
drawn from their exact conditional by the same Cholesky factor that gives its density. It needs one
density per draw, evaluated in parallel threads, and reports ``diverging`` (always False),
``acceptance_rate`` and the Pareto k of its importance weights.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import xarray as xr

from bayeslmm.engines.collapsed.imh import IMH_MIN_ACCEPTANCE, find_mode, sample_imh
from bayeslmm.engines.collapsed.packing import (
    Packed,
    pack,
    posterior_from_theta,
    prior_code,
    unpack_theta,
)
from bayeslmm.engines.native import callbacks
from bayeslmm.engines.nutpie_bridge import CallbackDensity, sample_nuts
from bayeslmm.engines.sampling import SamplerSettings, posterior_tree
from bayeslmm.errors import ConvergenceWarning
from bayeslmm.spec.design import Design
from bayeslmm.spec.priors import ModelPriors

__all__ = [
    "supports",
    "sample_marginal",
    "dense_size",
    "MAX_DENSE",
    "MAX_NUTS",
    "pack",
    "Packed",
    "posterior_from_theta",
    "unpack_theta",
    "find_mode",
    "sample_imh",
]

#: Largest dense Schur complement (fixed effects plus all but the largest block's columns) handled here.
#: One log density costs a dense Cholesky of that size (about R^3 / 3 flops; 20-40 ms at R = 1144).
MAX_DENSE = 2048
#: NUTS's target acceptance rate unless the user sets one. A singular fit (a slope SD at 0 that leaves
#: the correlation free, as Simpson's data with ``(x | participant)``) diverged once or more in half of
#: the seeds at nutpie's 0.8, in none of 8 at 0.9, in a time within run-to-run noise.
TARGET_ACCEPT = 0.9
#: Up to this size the variance parameters are sampled by NUTS (nutpie), which needs gradients (about
#: 3 R^3 flops each); above it by the gradient-free independence Metropolis sampler :func:`sample_imh`.
MAX_NUTS = 64


def supports(design: Design, priors: ModelPriors, family) -> bool:
    """Whether :func:`sample_marginal` can fit this model exactly.

    True for a Gaussian family without offset, Normal priors on every fixed effect, SD priors of the
    kinds the kernel knows (every positive distribution but the InverseGamma in its (mu, sigma) form),
    at least one random block, and a dense remainder of at most :data:`MAX_DENSE` columns.
    """
    if getattr(family, "name", None) != "gaussian" or priors.sigma is None or not design.blocks:
        return False
    if design.offset is not None:
        return False
    if any(priors.fixed[t].normal_moments() is None for t in design.fixed_terms):
        return False
    positive = [priors.sigma] + [p for block in priors.group_sd.values() for p in block.values()]
    if any(prior_code(p) is None for p in positive):
        return False
    return dense_size(design) <= MAX_DENSE


def dense_size(design: Design) -> int:
    """R: fixed effects plus the group effects of every block but the largest (eliminated) one."""
    sizes = [b.n_effects for b in design.blocks]
    return design.X.shape[1] + sum(sizes) - max(sizes)


def sample_marginal(
    design: Design,
    priors: ModelPriors,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    keep: list[str] | None = None,
    progressbar: bool = False,
    **options: Any,
) -> tuple[xr.DataTree, SamplerSettings]:
    """Sample a Gaussian mixed model with its fixed and group effects integrated out.

    Parameters
    ----------
    design : Design
    priors : ModelPriors
        Must satisfy :func:`supports`.
    draws, tune, chains : int
    random_seed : int or None
        The same seed gives the same draws.
    keep : list of str, optional
        Posterior variables to keep (default: all of ``beta``, ``sigma``, ``sd_*``, ``corr_*``, ``ranef_*``).
    progressbar : bool
    **options
        NUTS settings (``target_accept``, ``maxdepth``, ``cores``); ``nuts_sampler`` is ignored.
        ``method``: ``"auto"`` (default: NUTS when the dense part has at most :data:`MAX_NUTS` columns,
        else the independence Metropolis sampler :func:`sample_imh`), ``"nuts"`` or ``"imh"``. The
        independence sampler uses only ``cores`` (threads, default all CPUs) and runs at most
        ``IMH_MAX_TUNE`` tuning steps per chain.

    Returns
    -------
    idata : xarray.DataTree
        ``posterior`` with the variables and dims of the general model, ``sample_stats`` (with
        ``diverging`` (chain, draw)) and ``observed_data`` (``y`` on ``obs``).
    settings : SamplerSettings
        ``sampler="nutpie, marginal"`` or ``"independence MH, marginal"``.
    """
    options = dict(options)
    options.pop("nuts_sampler", None)
    method = options.pop("method", "auto")
    if method not in ("auto", "nuts", "imh"):
        raise ValueError(f"method must be 'auto', 'nuts' or 'imh', got {method!r}")
    if method == "auto":
        method = "nuts" if dense_size(design) <= MAX_NUTS else "imh"
    start = time.perf_counter()
    packed = pack(design, priors)
    if method == "imh":
        cores = int(options.get("cores") or os.cpu_count() or 1)
        theta, gamma, stats = sample_imh(
            packed, draws=draws, tune=tune, chains=chains, random_seed=random_seed, cores=cores, progressbar=progressbar
        )
        if stats.attrs["mean_acceptance"] < IMH_MIN_ACCEPTANCE:
            warnings.warn(
                f"the independence sampler accepted only {stats.attrs['mean_acceptance']:.0%} of its proposals "
                f"(Pareto k of the weights {stats.attrs['pareto_k']:.2f}): the Laplace proposal fits the "
                "posterior poorly and the chains stick; check R-hat and ESS, or use method='nuts'",
                ConvergenceWarning,
                stacklevel=2,
            )
        posterior = posterior_from_theta(packed, design, theta, np.random.default_rng(random_seed), gamma=gamma)
        del gamma
        sampler = "independence MH, marginal"
    else:
        theta, stats = sample_nuts(
            density(packed), draws=draws, tune=tune, chains=chains, random_seed=random_seed, progressbar=progressbar,
            **({"target_accept": TARGET_ACCEPT} | options),
        )
        posterior = posterior_from_theta(packed, design, theta, np.random.default_rng(random_seed))
        sampler = "nutpie, marginal"
    tree = posterior_tree(posterior, stats, design.y, keep)
    settings = SamplerSettings(
        sampler=sampler, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
        seconds=time.perf_counter() - start,
    )
    return tree, settings


def density(packed: Packed) -> CallbackDensity:
    """The collapsed log density of ``packed`` as nutpie callbacks."""
    return CallbackDensity.over_arrays(packed.n_dim, callbacks("collapsed"), packed.arrays, packed.init)
