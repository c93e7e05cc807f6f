"""Exact NUTS for generalized linear mixed models (binomial, Poisson, negative binomial), compiled once.

It also takes gaussian models that the collapsed sampler of :mod:`bayeslmm.engines.collapsed` cannot
(Student-t or Cauchy fixed-effect priors, an offset, too many group effects outside the largest block):
they would otherwise go to the full PyMC model, whose non-centred parametrization diverges and
understates posterior SDs when a grouping factor has few levels.

What is sampled
---------------
The joint posterior of the fixed effects ``beta``, every group effect ``b``, the variance parameters
(log SDs and Stan's unconstrained correlation parameters of each block) and, for the negative
binomial, the log dispersion (for the gaussian, the log residual SD): nothing is integrated out or
approximated. The log density and its gradient are one numba function
(:mod:`bayeslmm.engines.glmm.kernels`) compiled once and cached on disk for every model, handed to nutpie as a C callback, as the collapsed Gaussian sampler does: no
per-model compilation and no Python in the sampling loop. Priors are exactly those of
:class:`~bayeslmm.spec.priors.ModelPriors` (fixed-effect priors on the centred scale, the SD priors,
LKJ(eta) for correlated blocks, the family's dispersion prior), so the posterior is that of the PyMC
model of :mod:`bayeslmm.engines.pymc_model`.

Why it is fast and robust: a parametrization informed by the Laplace approximation
---------------------------------------------------------------------------------
A hierarchical posterior sampled in the effects themselves (centred) has a funnel where an SD is
small; sampled as standard-normal multiples of the SD (non-centred, as the PyMC model and Bambi do),
it has the opposite funnel where a group's data are informative. Both cost NUTS small steps, long
trajectories and divergences. Here every variable is instead written relative to its approximate
conditional posterior, at every value of the variance parameters:

* Reference point (:func:`~bayeslmm.engines.glmm.packing.laplace_reference`): the joint mode of the
  fixed and group effects by penalized IRLS, at variance parameters refined by a few Laplace-EM steps.
  There the likelihood of level ``g`` of a block is approximately Gaussian in ``b_g``, with information
  ``H_g`` and pseudo-data ``c_g``; ``A_g`` couples it to the fixed effects, ``C_g`` to the blocks taken
  before it. Blocks are taken from the fewest to the most effects, each conditioned on the fixed effects
  and the earlier blocks and marginalized over the later ones (Schur complements of the Laplace
  precision), so the largest block is its exact per-level conditional.
* Group effects: with ``F = diag(sd) L`` the block's covariance factor (which changes at every step),

      P_g = I + F' H_g F = R_g R_g',
      u_g = P_g^{-1} F' (c_g - A_g (beta - beta_hat) - C_g (b_earlier - b_hat)) + R_g^{-T} z_g,
      b_g = F u_g.

  Weakly informed levels (``F' H F`` small) are non-centred, strongly informed ones centred, everything
  between gets the right mixture; for a Gaussian likelihood ``z_g`` would be exactly standard normal
  and independent of the variance parameters.
* Fixed effects: ``beta = beta_hat + S^{-1} lam delta + Lb^{-T} w`` with ``S = Lb Lb'`` their Laplace
  marginal precision given the current variance parameters (exact at the reference, ``lam <= 1`` keeps
  it positive definite for all of them). With few groups the intercept's posterior widens with the SD;
  a fixed whitening leaves that funnel in place.
* SDs: ``log sd``, or ``sd = a softplus(x)`` for priors with light upper tails (half-normal,
  exponential, gamma, Weibull), whose log density in ``log sd`` falls doubly exponentially.

The map is a smooth bijection with an exact Jacobian (``-sum log diag R_g - sum log diag Lb`` plus the
SD transforms), so the draws are of the exact posterior whatever the reference point; only how well the
map fits depends on it. The tests check the log density against the joint posterior written
independently plus the log-Jacobian, and the gradient against finite differences.

The gradient needs no automatic differentiation: one column-wise pass over the rows (linear predictor,
the likelihood's derivative in it, scattered to ``beta`` and ``b``), then per level a reverse pass for
``z``, ``beta`` and the earlier blocks' effects, and forward passes for the block's few variance
parameters (derivatives of small Cholesky factors). One evaluation costs ``O(n (p + sum k_j))`` for the
rows plus ``O(sum_j G_j k_j (k_j^2 + p^2))`` for the levels; blocks whose levels would dominate that
(about one level per row) keep their part of the fixed effects' map at the reference.

Measured (``docs/glmm-engine.md``, ``BENCHMARKS.md``): 0 divergences at default settings on cbpp,
VerbAgg and near-singular cases; posterior quantiles agree with Bambi's, the PyMC model's and an
independent random-walk Metropolis sampler's within 4 Monte Carlo standard errors; simulation-based
calibration is uniform.
"""

from __future__ import annotations

import time
from typing import Any

import xarray as xr

from bayeslmm.engines.collapsed.packing import prior_code
from bayeslmm.engines.glmm.packing import (
    Packed,
    family_code,
    fixed_prior_code,
    laplace_reference,
    pack,
    posterior_from_draws,
)
from bayeslmm.engines.native import callbacks
from bayeslmm.engines.nutpie_bridge import CallbackDensity, sample_nuts
from bayeslmm.engines.sampling import SamplerSettings, posterior_tree
from bayeslmm.spec.design import Design
from bayeslmm.spec.priors import ModelPriors

__all__ = ["supports", "sample_glmm", "pack", "Packed", "laplace_reference", "posterior_from_draws", "density", "SAMPLER_LABEL"]

#: How fits by this engine are labelled (``SamplerSettings.sampler``).
SAMPLER_LABEL = "nutpie, Laplace-informed parametrization"


def supports(design: Design, priors: ModelPriors, family) -> bool:
    """Whether :func:`sample_glmm` can fit this model.

    True for the binomial (logit, probit, cloglog), Poisson and negative binomial (log link) and
    gaussian (identity link) families with at least one random block, Normal, Student-t or Cauchy
    priors on the fixed effects, and SD, dispersion and sigma priors of the kinds the kernel knows
    (every positive distribution but the InverseGamma in its (mu, sigma) form). Gaussian models go
    here only when the collapsed sampler cannot take them (see :meth:`bayeslmm.Lmer.fit`).
    """
    if family_code(family) is None or not design.blocks:
        return False
    if any(fixed_prior_code(priors.fixed[t]) is None for t in design.fixed_terms):
        return False
    positive = [p for block in priors.group_sd.values() for p in block.values()] + list(priors.aux.values())
    return all(prior_code(p) is not None for p in positive)


def density(packed: Packed) -> CallbackDensity:
    """The joint log density of ``packed`` as nutpie callbacks."""
    return CallbackDensity.over_arrays(packed.n_dim, callbacks("glmm"), packed.arrays, packed.init)


def sample_glmm(
    design: Design,
    priors: ModelPriors,
    family,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    keep: list[str] | None = None,
    progressbar: bool = False,
    **options: Any,
) -> tuple[xr.DataTree, SamplerSettings]:
    """Sample a GLMM's joint posterior with NUTS in the Laplace-informed parametrization.

    Parameters
    ----------
    design : Design
    priors : ModelPriors
    family : Family
        Must satisfy :func:`supports` with ``design`` and ``priors``.
    draws, tune, chains : int
    random_seed : int or None
        The same seed gives the same draws.
    keep : list of str, optional
        Posterior variables to keep (default: all).
    progressbar : bool
    **options
        NUTS settings: ``target_accept``, ``maxdepth``, ``cores``; ``nuts_sampler`` and ``method``
        are ignored.

    Returns
    -------
    idata : xarray.DataTree
        ``posterior`` with the variables and dims of the general model (``beta``, ``dispersion`` for
        the negative binomial or ``sigma`` for the gaussian, ``sd_*``, ``corr_*``, ``ranef_*``),
        ``sample_stats`` (nutpie's, with ``diverging``) and ``observed_data``.
    settings : SamplerSettings
    """
    options = dict(options)
    options.pop("nuts_sampler", None)
    options.pop("method", None)
    start = time.perf_counter()
    packed = pack(design, priors, family)
    xs, stats = sample_nuts(
        density(packed), draws=draws, tune=tune, chains=chains, random_seed=random_seed, progressbar=progressbar,
        **options,
    )
    tree = posterior_tree(posterior_from_draws(packed, design, family, xs), stats, design.y, keep)
    settings = SamplerSettings(
        sampler=SAMPLER_LABEL, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
        seconds=time.perf_counter() - start,
    )
    return tree, settings
