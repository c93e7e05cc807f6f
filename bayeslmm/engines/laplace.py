"""Frequentist generalized linear mixed models: lme4's ``glmer`` (Laplace and adaptive Gauss-Hermite).

The model is ``eta = X beta + Z Lambda_theta u + offset`` with spherical ``u ~ N(0, I)`` and a binomial,
Poisson or negative binomial response given ``eta`` (Bates, Maechler, Bolker & Walker 2015, J. Stat.
Softw. 67(1); lme4's ``glmer``; Kristensen et al. 2016, J. Stat. Softw. 70(5), for TMB).

Conditional modes by PIRLS
--------------------------
For given ``theta`` and ``beta`` the conditional mode ``u_hat`` maximises
``log p(y | eta(u)) - ||u||^2 / 2``. Penalised iteratively reweighted least squares finds it: each step
solves the penalised weighted least-squares problem of :mod:`bayeslmm.engines.pwls` with the GLM
weights ``w = (dm / deta)^2 / Var(y)`` and working residuals ``(y - m) / (dm / deta)`` of the current
``eta`` (:func:`~bayeslmm.engines.least_squares.glm_working`; ``m`` is the mean of ``y``, trials x
probability for binomial), halving the step while the penalised deviance ``-2 log p(y | eta) + ||u||^2``
increases. The largest random-effects block is eliminated level by level and the others go through a
dense Schur complement, as in the REML engine.

The deviance
------------
The Laplace approximation of ``-2 log L(theta, beta)`` is

    -2 log p(y | eta(u_hat)) + ||u_hat||^2 + log |L|^2,     L L' = Lambda' Z' W Z Lambda + I.

``log p`` is the full density (binomial coefficients included), so ``-deviance / 2`` is lme4's ``logLik``.
For the binomial and the Poisson this engine evaluates it exactly as lme4 1.1 does, which is what
reproduces lme4's estimates to 4-5 significant digits: every evaluation runs PIRLS from one stored
linear predictor (lme4's ``lp0``: the fit of stage 1), stops when the penalised deviance changes by less
than ``tolPwrss = 1e-7`` (relative), and takes ``L`` from the last PIRLS step, i.e. with the GLM (Fisher)
weights of the linear predictor before the last update. The exact Laplace approximation (``L`` at the
mode) differs from lme4's by about 1e-5 in the deviance, which moves the cbpp estimates in the fourth
digit and their standard errors by 1%. The negative binomial's reference is glmmTMB (glmer.nb can stop
short of the maximum, see below): there PIRLS converges (to 1e-10, warm-started) and ``L`` holds the
observed information ``mu k (k + y) / (k + mu)^2`` at the mode, the exact Laplace approximation that
TMB computes (the log link is not the negative binomial's canonical link, so the Fisher weights differ).

With ``nAGQ > 1`` and a single scalar random effect ``(1 | g)`` the groups' integrals are independent
one-dimensional integrals, each computed by adaptive Gauss-Hermite quadrature with ``nAGQ`` nodes
``u_g = u_hat_g + x_k / L_g`` around its mode (``L_g`` its entry of ``L``; nodes and weights of
``numpy.polynomial.hermite_e``), as lme4's ``glmerAGQ``; ``nAGQ = 1`` is the Laplace approximation.
lme4 prints the log-likelihood of such fits without the saturated model's; here it is always the full
one.

Optimisation
------------
As ``glmer``, in two stages, both with scipy's COBYQA (Powell's successor of the BOBYQA lme4 uses),
the diagonal elements of ``theta`` bounded below by 0:

1. ``theta`` alone, with ``beta`` and ``u`` found together by PIRLS (lme4's ``nAGQ = 0``), from ``theta``
   = identity factors (and, for lme4's PIRLS, its ``lp0`` from R's ``mustart``);
2. ``theta`` and ``beta`` together on the Laplace (or quadrature) deviance, ``beta`` measured in units of
   its stage-1 standard errors so that one trust region fits every coefficient.

lme4's deviance jumps where PIRLS takes one more step before its tolerance is met. A trust-region method
crawls along such jumps, so each stage minimises the smooth branch with the number of PIRLS steps fixed
to lme4's at the current point (equal to lme4's deviance around it), and moves to the branch of the
optimum until lme4 takes the same number of steps there.

For the negative binomial, ``log(dispersion)`` joins stage 2: the joint maximum of the Laplace
likelihood, glmmTMB's ``nbinom2`` fit; it starts from the dispersion of the negative binomial GLM.
``glmer.nb`` instead alternates glmer fits at a fixed dispersion with one-dimensional updates of the
dispersion and can stop short of that maximum (on grouseticks lme4 1.1-31 reports a log-likelihood 0.2
below glmmTMB's, with the dispersion 2.052 instead of 2.045).

Standard errors and convergence
-------------------------------
The covariance of ``beta`` is twice the inverse of the Hessian of the deviance in ``(theta, beta[, log
dispersion])``, its ``beta`` block, as lme4 (``use.hessian = TRUE``) and glmmTMB. It is computed on the
smooth branch of the optimum by central differences (:mod:`bayeslmm.engines.numerical`) with steps of
0.04 stage-1 standard errors for ``beta`` and 0.4% for ``theta`` and ``log(dispersion)``: truncation
error and rounding noise both stay near 1e-5 (relative) on the reference models, where lme4's own steps
(1e-4) let rounding noise show (its VerbAgg intercept SE, 0.40590, is 0.40573 with steps of 1e-3 or
1e-2 in lme4 itself). Where the Hessian is not positive definite, the
covariance falls back to ``(RX' RX)^-1`` at the conditional modes (lme4's ``use.hessian = FALSE``) and
``vcov_method`` says so. Convergence is checked on the gradient scaled by the Cholesky factor of the
same Hessian (lme4's tolerance 2e-3).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import linalg

from bayeslmm.engines.least_squares import glm, glm_working
from bayeslmm.engines.numerical import gradient_and_hessian, scaled_gradient
from bayeslmm.engines.pwls import (
    GRADIENT_TOLERANCE,
    SINGULAR_TOLERANCE,
    Factor,
    PenalizedLeastSquares,
    check_full_rank,
    snap_to_bounds,
)
from bayeslmm.errors import ConvergenceWarning, DataError, UnsupportedSyntaxError
from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family

if TYPE_CHECKING:
    from scipy.optimize import OptimizeResult

__all__ = ["GlmmFit", "fit_laplace", "LAPLACE_FAMILIES", "SINGULAR_TOLERANCE"]

#: Families this engine fits.
LAPLACE_FAMILIES = ("binomial", "poisson", "negbinomial")
# COBYQA's trust radii. Stage 1 starts from theta = 1; stage 2 from stage 1's estimates, which are close
# (beta in its standard errors); a later round on another branch of lme4's deviance is closer still.
# The final radius gives theta and beta (in standard errors) to about 1e-5.
_STAGE_ONE_RADIUS, _STAGE_TWO_RADIUS, _REFINE_RADIUS = 0.5, 0.1, 0.01
_FINAL_TRUST_RADIUS = 1e-5
# lme4's PIRLS stops when the penalised deviance changes by less than this, relative (tolPwrss).
_TOL_PWRSS = 1e-7
# The exact PIRLS (negative binomial) stops when no effect or coefficient moves more than this.
_PIRLS_TOLERANCE = 1e-10
_PIRLS_MAX_ITERATIONS = 100
_MAX_HALVINGS = 10
# Rounds of optimisation on lme4's deviance, one smooth branch each (see _minimize_by_branch).
_MAX_BRANCHES = 3
_EPS = np.finfo(float).eps
# The Hessian's steps (one level of central differences): this fraction of a coefficient's stage-1
# standard error, of |theta| (at least 0.1) and of 1 on log(dispersion). Truncation error grows with the
# step and rounding noise shrinks with it; with these steps the reference models' SEs agree with lme4's
# and glmmTMB's to 1e-4 (relative) or better (0.1 standard errors gave 5e-4 on cbpp's slope model).
_BETA_STEP, _THETA_STEP, _AUX_STEP = 0.04, 4e-3, 4e-3


@dataclass(frozen=True)
class GlmmFit:
    """The estimates of a GLMM fit, as arrays; :mod:`bayeslmm.results.frequentist` makes the tables.

    Attributes
    ----------
    theta : ndarray, shape (m,)
        Relative covariance factors in lme4's layout (:class:`~bayeslmm.spec.random_effects.RandomEffects`);
        with no residual scale, ``T_b T_b'`` is the covariance of block ``b``'s group effects.
    beta : ndarray, shape (p,)
    aux : dict of str to float
        The family's auxiliary parameters (the negative binomial's ``dispersion``); empty otherwise.
    vcov : ndarray, shape (p, p)
        Covariance of ``beta``.
    vcov_method : str
        How ``vcov`` was obtained.
    ranef : list of ndarray
        Conditional modes per block, shape (G, k), formula order.
    eta : ndarray, shape (n,)
        Linear predictor at the conditional modes (offset included).
    deviance : float
        ``-2 logLik`` at the optimum (full log-likelihood, Laplace or quadrature).
    nAGQ : int
        1 for the Laplace approximation, more for adaptive Gauss-Hermite quadrature.
    converged : bool
    singular : bool
        Some ``T_b`` has a diagonal element below :data:`SINGULAR_TOLERANCE` (lme4's isSingular).
    message : str
    n_evaluations : int
        Deviance evaluations of both optimisation stages.
    seconds : float
    """

    theta: np.ndarray
    beta: np.ndarray
    aux: dict
    vcov: np.ndarray
    vcov_method: str
    ranef: list
    eta: np.ndarray
    deviance: float
    nAGQ: int
    converged: bool
    singular: bool
    message: str
    n_evaluations: int
    seconds: float


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def fit_laplace(design: Design, family: Family, nAGQ: int = 1) -> GlmmFit:
    """Fit a GLMM by maximum likelihood, as ``lme4::glmer`` (and glmmTMB for the negative binomial).

    Parameters
    ----------
    design : Design
        Needs at least one random-effects block; the response as ``family`` encoded it.
    family : Family
        Binomial (logit, probit, cloglog), Poisson or negative binomial (log link).
    nAGQ : int, default 1
        1: Laplace approximation. 2 or more: adaptive Gauss-Hermite quadrature with this many nodes,
        for a model with a single scalar random effect ``(1 | g)`` (as lme4). 0: lme4's fast fit, the
        fixed effects estimated inside PIRLS and only ``theta`` optimised (stage 1 below, not for the
        negative binomial).

    Returns
    -------
    GlmmFit

    Raises
    ------
    UnsupportedSyntaxError
        A family this engine does not fit, or ``nAGQ > 1`` with another random-effects structure.
    DataError
        No random effects, a rank-deficient fixed-effects matrix, or a bad ``nAGQ``.

    Warns
    -----
    ConvergenceWarning
        An optimisation stage failed, or the scaled gradient exceeds lme4's tolerance.
    """
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    _validate(design, family, nAGQ)
    # every dense matrix is small: one BLAS thread (see bayeslmm.engines.reml)
    with threadpool_limits(limits=1, user_api="blas"):
        model = _LaplaceDeviance(design, family, nAGQ)
        stage1 = _stage_one(model)
        if nAGQ == 0:  # lme4's nAGQ = 0: stage 1 is the fit
            return _stage_one_fit(model, stage1, started)
        theta, beta, log_aux, result, n_stage2 = _stage_two(model, stage1)
        parameters = np.concatenate([theta, beta, log_aux])
        # lme4's deviance jumps where PIRLS takes one more step; differentiate the smooth branch of the optimum
        model.fixed_iterations = model.pirls(theta, beta, model.aux(log_aux)).iterations
        gradient, hess = gradient_and_hessian(model.objective, parameters, levels=1, steps=model.steps(parameters))
        model.fixed_iterations = None
        deviance = model.deviance(theta, beta, model.aux(log_aux))
        mode = model.pirls(theta, beta, model.aux(log_aux))
        vcov, vcov_method = _beta_covariance(model, hess, theta, mode)
    free = _free(model, parameters, gradient)
    scaled = scaled_gradient(gradient[free], hess[np.ix_(free, free)])
    converged = bool(stage1.success and result.success and scaled < GRADIENT_TOLERANCE)
    message = str(result.message)
    if not converged:
        message = f"scaled gradient {scaled:.3g} ({message})"
        warnings.warn(
            f"optimizer did not converge: {message}; the random-effects structure may be too complex "
            "for the data, a predictor may separate the outcomes, or predictors may need rescaling",
            ConvergenceWarning,
            stacklevel=3,
        )
    _warn_if_separated(design, family, mode.terms.mu)
    return GlmmFit(
        theta=theta,
        beta=beta,
        aux=model.aux(log_aux),
        vcov=vcov,
        vcov_method=vcov_method,
        ranef=model.pls.effects(theta, mode.u),
        eta=mode.terms.eta,
        deviance=float(deviance),
        nAGQ=nAGQ,
        converged=converged,
        singular=bool(np.any(theta[model.diagonal] < SINGULAR_TOLERANCE)),
        message=message,
        n_evaluations=stage1.nfev + n_stage2,
        seconds=time.perf_counter() - started,
    )


def _stage_one_fit(model: "_LaplaceDeviance", stage1: "_StageOne", started: float) -> GlmmFit:
    """The fit of lme4's ``nAGQ = 0``: ``theta`` optimised with ``beta`` and ``u`` at their joint mode.

    The deviance is stage 1's objective at its optimum (the Laplace approximation with ``beta`` and ``u``
    at their joint mode), as lme4 reports it; the covariance of ``beta`` is ``(RX'RX)^-1`` at the
    conditional modes, as lme4 (there is no Hessian to use).
    """
    theta, beta = stage1.theta, stage1.beta
    aux = model.aux(np.zeros(0))
    mode = model.pirls(theta, beta, aux)
    vcov = _rx_covariance(model, theta, mode)
    message = "nAGQ = 0: theta optimised with the fixed effects in PIRLS" + ("" if stage1.success else " (optimizer failed)")
    if not stage1.success:
        warnings.warn(f"optimizer did not converge: {message}", ConvergenceWarning, stacklevel=4)
    _warn_if_separated(model.design, model.family, mode.terms.mu)
    return GlmmFit(
        theta=theta, beta=beta, aux=aux, vcov=vcov, vcov_method="(RX'RX)^-1 at the conditional modes (nAGQ = 0)",
        ranef=model.pls.effects(theta, mode.u), eta=mode.terms.eta, deviance=stage1.deviance,
        nAGQ=0, converged=bool(stage1.success), singular=bool(np.any(theta[model.diagonal] < SINGULAR_TOLERANCE)),
        message=message, n_evaluations=stage1.nfev, seconds=time.perf_counter() - started,
    )


def _warn_if_separated(design: Design, family: Family, mu: np.ndarray) -> None:
    """Warn, as R's glm, when fitted means sit at the edge of their range (0 or 1 to machine precision).

    A predictor (or a group) then separates the outcomes: its coefficient runs off to infinity and
    neither it nor its standard error means anything.
    """
    edge = mu <= 1e3 * _EPS
    if family.name == "binomial":
        edge |= mu >= 1.0 - 1e3 * _EPS
    if edge.any():
        rows = ", ".join(map(repr, design.data.index[np.flatnonzero(edge)[:5]]))
        more = f" and {int(edge.sum()) - 5} more" if edge.sum() > 5 else ""
        warnings.warn(
            f"fitted {'probabilities' if family.name == 'binomial' else 'means'} numerically 0 or 1 occurred "
            f"(rows {rows}{more}): some predictor or group separates the outcomes, and its coefficient and "
            "standard error are not meaningful; look at the response by predictor, or drop that level",
            ConvergenceWarning,
            stacklevel=4,
        )


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _validate(design: Design, family: Family, nAGQ: int) -> None:
    """Raise for what the Laplace engine cannot fit, before any work."""
    if family.name not in LAPLACE_FAMILIES:
        raise UnsupportedSyntaxError(
            f"the Laplace engine fits {', '.join(LAPLACE_FAMILIES)} models; family {family.name!r} is "
            "fitted by REML/ML (bayeslmm.engines.reml)"
        )
    if not design.blocks:
        raise DataError(
            f"formula {design.formula.text!r} has no random-effects term such as '(1 | group)'; "
            "a generalized linear mixed model needs one"
        )
    if isinstance(nAGQ, bool) or not isinstance(nAGQ, int | np.integer) or nAGQ < 0:
        raise DataError(
            f"nAGQ must be a non-negative integer (0: fixed effects in PIRLS, lme4's fast fit; 1: Laplace "
            f"approximation; 2 or more: adaptive Gauss-Hermite quadrature), got {nAGQ!r}"
        )
    if nAGQ == 0 and family.name == "negbinomial":
        raise UnsupportedSyntaxError(
            "nAGQ = 0 leaves the negative binomial's dispersion at its starting value (the dispersion is "
            "estimated with the Laplace deviance); use nAGQ=1"
        )
    if nAGQ > 1 and (len(design.blocks) != 1 or design.blocks[0].n_terms != 1):
        raise UnsupportedSyntaxError(
            f"nAGQ = {nAGQ} (adaptive Gauss-Hermite quadrature) needs a single scalar random effect such "
            "as '(1 | group)', as in lme4; this model has "
            + ", ".join(f"({block.expr} | {block.factor})" for block in design.blocks)
            + ". Use nAGQ=1 (the Laplace approximation)"
        )
    n, p = design.X.shape
    if p == 0:
        raise DataError("the fixed part has no columns; write '1 + ...' to keep at least an intercept")
    if n <= p:
        raise DataError(f"{n} observations cannot estimate {p} fixed effects plus variances")
    check_full_rank(design)


# --------------------------------------------------------------------------------------------------
# The conditional distribution and the deviance
# --------------------------------------------------------------------------------------------------


@dataclass
class _Terms:
    """The response at one linear predictor: what PIRLS and the deviance need."""

    eta: np.ndarray  # (n,) linear predictor, offset included
    mu: np.ndarray  # (n,) mean on the family's scale (a probability for binomial)
    weights: np.ndarray  # (n,) GLM (Fisher) weights
    residual: np.ndarray  # (n,) working residuals (y - m) / (dm / deta)
    log_lik: np.ndarray  # (n,) log p(y_i | eta_i)


@dataclass
class _Mode:
    """The result of PIRLS at one (theta, beta, aux)."""

    beta: np.ndarray  # (p,) the given beta, or the joint mode's
    u: np.ndarray  # (q,) spherical effects, the engine's internal order
    terms: _Terms  # the response at the mode
    factor: Factor  # the L of the deviance
    penalized: float  # -2 log p(y | eta) + ||u||^2
    unscaled: np.ndarray | None  # (RX'RX)^-1 of the last step (joint modes only)
    iterations: int  # PIRLS steps taken


class _PirlsFailure(RuntimeError):
    """PIRLS did not converge (lme4: "pwrssUpdate did not converge in 30 iterations")."""


class _LaplaceDeviance:
    """The Laplace (or quadrature) deviance of a GLMM as a function of theta, beta and the dispersion.

    Two variants of PIRLS (see the module docstring): lme4's for the binomial and Poisson (every
    evaluation starts from one stored linear predictor, stops when the penalised deviance changes by
    less than ``tolPwrss`` relative, and takes ``L`` from the last step's weights), and the exact mode
    for the negative binomial (warm starts, converged to 1e-10, ``L`` at the mode with the observed
    information).

    Parameters
    ----------
    design : Design
    family : Family
    nAGQ : int
    """

    def __init__(self, design: Design, family: Family, nAGQ: int):
        self.design = design
        self.family = family
        self.nAGQ = nAGQ
        self.X = design.X
        self.no_columns = np.zeros((design.n_obs, 0))
        self.y = design.y
        self.trials = design.trials
        self.offset = design.offset_or_zero
        self.pls = PenalizedLeastSquares(design.random)
        self.diagonal = design.random.diagonal_mask()
        self.n_theta = len(self.diagonal)
        self.p = design.X.shape[1]
        self.has_dispersion = "dispersion" in family.aux
        self.lme4 = family.name in ("binomial", "poisson")
        self.u = np.zeros(self.pls.q)  # warm start of the exact variant
        self.start_eta: np.ndarray | None = None  # where lme4's PIRLS starts (its lp0)
        # lme4's PIRLS with this many steps instead of its tolerance: a smooth function for derivatives
        self.fixed_iterations: int | None = None
        # 2 x the saturated log-likelihood: lme4's tolerance is relative to the deviance-residual form
        self.saturated = 2.0 * float(np.sum(family.log_likelihood(self.y, self._saturated_mean(), {}, trials=self.trials))) if self.lme4 else 0.0
        self.beta_scale = np.ones(self.p)  # stage-1 standard errors, set by _stage_one
        self.log_dispersion_start = 0.0
        if nAGQ > 1:
            self.nodes, weights = np.polynomial.hermite_e.hermegauss(nAGQ)
            self.log_node_weights = np.log(weights / np.sqrt(2.0 * np.pi)) + 0.5 * self.nodes**2

    def _saturated_mean(self) -> np.ndarray:
        return self.y if self.trials is None else self.y / self.trials

    # -- the response --------------------------------------------------------------------------

    def aux(self, log_aux: np.ndarray) -> dict:
        """The family's auxiliary parameters from their logs (the optimiser's scale)."""
        return {"dispersion": float(np.exp(log_aux[0]))} if self.has_dispersion else {}

    def terms(self, eta: np.ndarray, aux: dict) -> _Terms:
        """Mean, GLM weights, working residuals and log-likelihood at ``eta``."""
        working = glm_working(self.family, eta, self.y, self.trials, aux)
        return _Terms(eta, working.mu, working.weights, working.residual, working.log_lik)

    def mode_weights(self, terms: _Terms, aux: dict) -> np.ndarray:
        """Weights of ``L`` at an exact mode: the observed information ``-d^2 log p / d eta^2``.

        For the negative binomial (log link) ``mu k (k + y) / (k + mu)^2``; the GLM weights of the
        canonical links are the observed information already.
        """
        if not self.has_dispersion:
            return terms.weights
        size = aux["dispersion"]
        return terms.mu * size * (size + self.y) / (size + terms.mu) ** 2

    def initial_eta(self) -> np.ndarray:
        """lme4's starting linear predictor: the link of R's ``mustart`` (``(y + 0.5) / (n + 1)`` or ``y + 0.1``)."""
        if self.trials is not None:
            return self.family.link((self.y + 0.5) / (self.trials + 1.0))
        return self.family.link(self.y + 0.1)

    # -- PIRLS ----------------------------------------------------------------------------------

    def pirls(self, theta: np.ndarray, beta: np.ndarray, aux: dict, joint: bool = False) -> _Mode:
        """The conditional mode of ``u`` (and of ``beta`` too with ``joint``, lme4's ``nAGQ = 0``).

        Raises
        ------
        _PirlsFailure
            No convergence.
        numpy.linalg.LinAlgError
            A factorisation failed.
        """
        p = self.p if joint else 0
        fixed = self.X @ beta + self.offset
        if self.lme4:
            point = np.concatenate([beta[:p], np.zeros(self.pls.q)])
            terms, value = self.terms(self.start_eta, aux), np.inf
        else:
            point = np.concatenate([beta[:p], self.u])
            terms, value = self._evaluate(theta, point, fixed, joint, aux)
        for iteration in range(1, _PIRLS_MAX_ITERATIONS + 1):
            working = terms.eta - (self.offset if joint else fixed) + terms.residual
            cp = self.pls.crossproducts(self.X if joint else self.no_columns, working, terms.weights)
            if joint:
                solution = self.pls.solve(theta, cp)
                new, factor = np.concatenate([solution.beta, self.pls.spherical(solution)]), solution.factor
            else:
                solution, factor = None, self.pls.factorize(theta, cp)
                new = self.pls.backward(factor, self.pls.forward(factor, cp)[:, 0])
            new_terms, new_value = self._evaluate(theta, new, fixed, joint, aux)
            for _ in range(_MAX_HALVINGS):
                if new_value <= value or not np.isfinite(value):
                    break
                new = 0.5 * (point + new)
                new_terms, new_value = self._evaluate(theta, new, fixed, joint, aux)
            if self.lme4 and self.fixed_iterations is not None:
                done = iteration == self.fixed_iterations
            elif self.lme4:
                done = abs(value - new_value) < _TOL_PWRSS * abs(new_value + self.saturated)
            else:
                done = new_value >= value or float(np.max(np.abs(new - point), initial=0.0)) < _PIRLS_TOLERANCE
                if new_value > value:  # no decrease along the Newton direction: at the mode already
                    new, new_terms, new_value = point, terms, value
            point, terms, value = new, new_terms, new_value
            if done:
                break
        else:
            raise _PirlsFailure(f"PIRLS did not converge in {_PIRLS_MAX_ITERATIONS} iterations")
        beta, u = (point[:p], point[p:]) if joint else (beta, point)
        if not self.lme4:
            self.u = u
            cp = self.pls.crossproducts(self.no_columns, np.zeros(len(self.y)), self.mode_weights(terms, aux))
            factor = self.pls.factorize(theta, cp)
        unscaled = None if solution is None else self.pls.unscaled_covbeta(solution)
        return _Mode(beta, u, terms, factor, value, unscaled, iteration)

    def _evaluate(self, theta, point, fixed, joint: bool, aux: dict) -> tuple[_Terms, float]:
        """The response and the penalised deviance ``-2 log p + ||u||^2`` at ``point`` ((beta,) u)."""
        p = self.p if joint else 0
        if joint:
            fixed = self.X @ point[:p] + self.offset
        u = point[p:]
        terms = self.terms(fixed + self.design.random.predictor(self.pls.effects(theta, u)), aux)
        return terms, float(-2.0 * terms.log_lik.sum() + u @ u)

    # -- deviances ------------------------------------------------------------------------------

    def deviance(self, theta: np.ndarray, beta: np.ndarray, aux: dict) -> float:
        """``-2 log L``: Laplace approximation (nAGQ = 1) or adaptive Gauss-Hermite quadrature; inf on failure."""
        try:
            mode = self.pirls(theta, beta, aux)
        except (_PirlsFailure, np.linalg.LinAlgError, linalg.LinAlgError, ValueError):
            self.u = np.zeros(self.pls.q)
            return np.inf
        if self.nAGQ <= 1:  # nAGQ = 0 reports the Laplace deviance too, as lme4
            return float(mode.penalized + mode.factor.log_det)
        return self._quadrature(theta, mode, aux)

    def _quadrature(self, theta: np.ndarray, mode: _Mode, aux: dict) -> float:
        """Adaptive Gauss-Hermite deviance of a single scalar random effect (see the module docstring)."""
        from scipy.special import logsumexp

        block = self.design.blocks[0]
        groups, G = block.group_index, block.n_levels
        root = 1.0 / mode.factor.L1inv[:, 0, 0]  # L_g, shape (G,)
        u_hat = mode.u
        at_mode = np.bincount(groups, weights=-2.0 * mode.terms.log_lik, minlength=G) + u_hat**2
        slope = theta[0] * block.Z[:, 0] / root[groups]  # d eta / d x for each row, shape (n,)
        log_terms = np.empty((G, self.nAGQ))
        for k, x in enumerate(self.nodes):
            terms = self.terms(mode.terms.eta + slope * x, aux)
            at_node = np.bincount(groups, weights=-2.0 * terms.log_lik, minlength=G) + (u_hat + x / root) ** 2
            log_terms[:, k] = self.log_node_weights[k] - 0.5 * (at_node - at_mode)
        return float(np.sum(at_mode + 2.0 * np.log(root) - 2.0 * logsumexp(log_terms, axis=1)))

    # -- the optimiser's parameters ----------------------------------------------------------------

    def split(self, parameters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(theta, beta, log_aux)`` from the natural parameter vector."""
        m, p = self.n_theta, self.p
        return parameters[:m], parameters[m : m + p], parameters[m + p :]

    def objective(self, parameters: np.ndarray) -> float:
        """The deviance of ``(theta, beta, log dispersion)``."""
        theta, beta, log_aux = self.split(parameters)
        return self.deviance(theta, beta, self.aux(log_aux))

    def steps(self, parameters: np.ndarray) -> np.ndarray:
        """Base steps of the Hessian for ``(theta, beta, log dispersion)``."""
        theta, _, log_aux = self.split(parameters)
        return np.concatenate(
            [_THETA_STEP * np.maximum(np.abs(theta), 0.1), _BETA_STEP * self.beta_scale, np.full(len(log_aux), _AUX_STEP)]
        )


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------


@dataclass
class _StageOne:
    """Stage 1's estimates, its objective there (the deviance of lme4's ``nAGQ = 0`` fit), whether its
    optimiser succeeded, and its number of evaluations."""

    theta: np.ndarray
    beta: np.ndarray
    deviance: float
    success: bool
    nfev: int


def _stage_one(model: _LaplaceDeviance) -> _StageOne:
    """Optimise theta with beta and u at their joint mode (lme4's nAGQ = 0), from the GLM's beta."""
    design = model.design
    start = glm(design.X, design.y, model.family, design.trials, design.offset)
    if model.has_dispersion:
        model.log_dispersion_start = float(np.log(start.aux["dispersion"]))
    aux = model.aux(np.array([model.log_dispersion_start])[: int(model.has_dispersion)])
    theta0 = model.pls.random.theta_start()
    found = {"beta": np.nan_to_num(start.coef), "mode": None}
    if model.lme4:
        # lme4's lp0: one joint PIRLS at the starting theta from R's mustart
        model.start_eta = model.initial_eta()
        model.start_eta = model.pirls(theta0, found["beta"], aux, joint=True).terms.eta

    def objective(theta: np.ndarray) -> float:
        try:
            mode = model.pirls(theta, found["beta"], aux, joint=True)
        except (_PirlsFailure, np.linalg.LinAlgError, linalg.LinAlgError, ValueError):
            model.u = np.zeros(model.pls.q)
            return np.inf
        found["beta"], found["mode"] = mode.beta, mode
        return mode.penalized + mode.factor.log_det

    def steps_at(theta: np.ndarray) -> int | None:
        try:
            return model.pirls(theta, found["beta"], aux, joint=True).iterations
        except (_PirlsFailure, np.linalg.LinAlgError, linalg.LinAlgError, ValueError):
            return None

    result, n_evaluations = _minimize_by_branch(model, objective, theta0, model.diagonal, steps_at, _STAGE_ONE_RADIUS)
    theta = snap_to_bounds(result.x, model.diagonal)
    deviance = objective(theta)  # beta, u and (RX'RX)^-1 at the optimum itself, as lme4 re-evaluates
    mode = found["mode"]
    if mode is None or not np.all(np.isfinite(mode.beta)):
        raise DataError(
            "the model cannot be fitted: penalised iteratively reweighted least squares failed for every "
            "variance tried. A fixed effect may separate the outcomes completely (a level or a range of a "
            "predictor with only zeros, or only successes); look at the response by predictor"
        )
    if model.lme4:
        model.start_eta = mode.terms.eta  # lme4's lp0 of stage 2
    model.beta_scale = np.sqrt(np.maximum(np.diag(mode.unscaled), _EPS))
    return _StageOne(theta, mode.beta, float(deviance), bool(result.success), n_evaluations)


def _stage_two(model: _LaplaceDeviance, stage1: _StageOne):
    """Optimise (theta, beta[, log dispersion]) on the Laplace or quadrature deviance.

    ``beta`` enters the optimiser as ``(beta - beta_1) / se_1`` (stage-1 estimates and standard errors).

    Returns theta, beta, log_aux, the scipy result and the number of evaluations.
    """
    m = model.n_theta
    log_aux0 = np.array([model.log_dispersion_start])[: int(model.has_dispersion)]

    def natural(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:m], stage1.beta + model.beta_scale * x[m : m + model.p], x[m + model.p :]])

    start = np.concatenate([stage1.theta, np.zeros(model.p), log_aux0])
    bounded = np.concatenate([model.diagonal, np.zeros(len(start) - m, dtype=bool)])

    def steps_at(x: np.ndarray) -> int | None:
        theta, beta, log_aux = model.split(natural(x))
        try:
            return model.pirls(theta, beta, model.aux(log_aux)).iterations
        except (_PirlsFailure, np.linalg.LinAlgError, linalg.LinAlgError, ValueError):
            return None

    result, n_evaluations = _minimize_by_branch(
        model, lambda x: model.objective(natural(x)), start, bounded, steps_at, _STAGE_TWO_RADIUS
    )
    x = result.x.copy()
    x[:m] = snap_to_bounds(x[:m], model.diagonal)
    theta, beta, log_aux = model.split(natural(x))
    return theta, beta, log_aux, result, n_evaluations


def _minimize_by_branch(
    model: _LaplaceDeviance, objective, start: np.ndarray, bounded: np.ndarray, steps_at, radius: float
):
    """Minimise lme4's deviance one smooth branch at a time.

    lme4's PIRLS stops on a tolerance, so its deviance jumps where PIRLS takes one more step; a trust
    region method crawls along such jumps. Each round fixes the number of PIRLS steps to the one lme4
    takes at the current point (a smooth function, equal to lme4's deviance around that point) and
    minimises it; the search ends when lme4 takes the same number of steps at the optimum (at most
    ``_MAX_BRANCHES`` rounds). The exact PIRLS of the negative binomial is smooth: one round.

    Returns
    -------
    result : scipy.optimize.OptimizeResult
        Of the last round.
    n_evaluations : int
        Of every round.
    """
    if not model.lme4:
        result = _minimize(objective, start, bounded, radius)
        return result, int(result.nfev)
    x, branch, n_evaluations = start, None, 0
    for _ in range(_MAX_BRANCHES):
        model.fixed_iterations = None
        steps = steps_at(x)
        if branch is not None and steps == branch:
            break
        branch = model.fixed_iterations = steps
        # a later round starts at the optimum of a nearby branch: a small trust region suffices
        result = _minimize(objective, x, bounded, radius if n_evaluations == 0 else _REFINE_RADIUS)
        x, n_evaluations = result.x, n_evaluations + int(result.nfev)
    model.fixed_iterations = None
    return result, n_evaluations


def _minimize(objective, start: np.ndarray, bounded: np.ndarray, radius: float) -> "OptimizeResult":
    """COBYQA from ``start``, initial trust radius ``radius``, with the ``bounded`` coordinates kept >= 0."""
    from scipy import optimize  # 0.1 s to import: only when a model is fitted

    lower = np.where(bounded, 0.0, -np.inf)
    return optimize.minimize(
        objective,
        start,
        method="COBYQA",
        bounds=optimize.Bounds(lower, np.full(len(start), np.inf)),
        options={
            "initial_tr_radius": radius,
            "final_tr_radius": _FINAL_TRUST_RADIUS,
            "maxfev": max(2000, 500 * len(start)),
        },
    )


def _free(model: _LaplaceDeviance, parameters: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Parameters off their bound, or whose gradient points away from it (lme4's convergence check)."""
    free = np.ones(len(parameters), dtype=bool)
    theta = parameters[: model.n_theta]
    free[: model.n_theta] = ~(model.diagonal & (theta <= 0.0) & (gradient[: model.n_theta] >= 0.0))
    return free


def _beta_covariance(model: _LaplaceDeviance, hess: np.ndarray, theta: np.ndarray, mode: _Mode) -> tuple[np.ndarray, str]:
    """``2 H^-1``, its ``beta`` block; ``(RX'RX)^-1`` at the mode where the Hessian is not positive definite."""
    m, p = model.n_theta, model.p
    try:
        linalg.cholesky(hess, lower=True)
        return 2.0 * linalg.inv(hess)[m : m + p, m : m + p], "Hessian of the deviance"
    except (np.linalg.LinAlgError, linalg.LinAlgError):
        return _rx_covariance(model, theta, mode), "(RX'RX)^-1 at the conditional modes (the deviance's Hessian is not positive definite)"


def _rx_covariance(model: _LaplaceDeviance, theta: np.ndarray, mode: _Mode) -> np.ndarray:
    """``(RX'RX)^-1`` with the GLM weights at the conditional modes: lme4's ``use.hessian = FALSE``."""
    cp = model.pls.crossproducts(model.X, np.zeros(len(model.y)), mode.terms.weights)
    return model.pls.unscaled_covbeta(model.pls.solve(theta, cp))
