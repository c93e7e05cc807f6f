"""Frequentist linear mixed models: lme4's profiled (RE)ML deviance in numpy/scipy.

The algorithm follows Bates, Maechler, Bolker & Walker (2015), "Fitting linear mixed-effects models
using lme4", J. Stat. Softw. 67(1), section 3. The random effects are ``b = Lambda_theta u`` with
spherical ``u ~ N(0, sigma^2 I)``; ``Lambda_theta`` is block diagonal with one lower-triangular
``k x k`` factor ``T_b`` per random-effects block, repeated for each level of its grouping factor.
``theta`` holds the lower triangles of the ``T_b`` (column-major, as lme4), and its diagonal elements
are bounded below by 0. For a given ``theta`` the penalised least-squares problem is solved through
the sparse Cholesky factor ``L_theta`` of ``Lambda' Z' Z Lambda + I``
(:mod:`bayeslmm.engines.pwls`, shared with the Laplace engine of GLMMs); ``beta`` and ``sigma`` are
profiled out, so the optimiser only searches over ``theta``.

Cost per deviance evaluation
----------------------------
Every quantity the deviance needs is a cross-product (``Z'Z``, ``Z'X``, ``Z'y``, ``X'X``, ``X'y``,
``y'y``), computed once, so an evaluation does not touch the ``n`` rows. ``L_theta`` is not computed
with a general sparse Cholesky (scipy has none); instead the random effects are ordered with the
largest block first. That block's part of ``Lambda' Z' Z Lambda + I`` is block diagonal (one
``k x k`` block per level, because each row belongs to one level), so its Cholesky factor is a batch of
tiny factorisations; the remaining blocks go through a dense Schur complement of size
``q - q_largest``. With crossed factors of 1000 and 50 levels, an evaluation factors a 50 x 50 matrix.
The cost grows as ``(q - q_largest)^3``: two crossed factors with thousands of levels each are slow
(InstEval, 73,421 rows and 2,972 + 1,128 + 14 levels, takes about 8 s on two cores).

Optimiser
---------
scipy's COBYQA (Powell's derivative-free trust-region method, successor of the BOBYQA lme4 uses),
from ``theta`` = identity factors, with the diagonal elements bounded below by 0. Convergence is then
checked as lme4 does, on the gradient scaled by the Cholesky factor of the Hessian (tolerance 2e-3).
The fit runs with one BLAS thread (threadpoolctl, a dependency of pymc): all dense matrices are small,
and numpy's and scipy's separate OpenBLAS thread pools otherwise compete on few cores.

Satterthwaite degrees of freedom
--------------------------------
As lmerTest: the variance parameters are ``varpar = (theta, sigma)``; their asymptotic covariance is
``A = 2 H^+`` with ``H`` the Hessian of the (RE)ML deviance in ``varpar`` (``H^+`` the pseudo-inverse
over positive eigenvalues), and ``df = 2 (l' C l)^2 / (g' A g)`` with ``C = cov(beta_hat)`` and ``g``
the gradient of ``l' C l`` in ``varpar``. :func:`fit_reml` applies it to every unit vector ``l`` (one df
per coefficient); :func:`contrast_t_test` to any linear combination ``l' beta`` (lmerTest's
``contest1D``), and :func:`contrast_f_test` to several at once, ``L beta = 0`` (lmerTest's
``contestMD``: the F statistic's denominator df combines the df of the ``q`` independent t statistics
along the eigenvectors of ``L C L'``). All three read the same two arrays kept in :class:`RemlFit`:
``A`` (``vcov_varpar``) and the Jacobian of ``C`` in ``varpar`` (``vcov_jacobian``), computed once per
fit. Derivatives are central differences with Richardson extrapolation (numDeriv's method). Where the
denominator is not positive (a degenerate Hessian), the df fall back to the residual degrees of freedom
``n - p`` and ``df_method`` says so.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from bayeslmm.engines.numerical import central_gradient, hessian, jacobian, scaled_gradient
from bayeslmm.engines.pwls import (
    GRADIENT_TOLERANCE,
    SINGULAR_TOLERANCE,
    Factor,
    PenalizedLeastSquares,
    Solution,
    check_full_rank,
    snap_to_bounds,
)
from bayeslmm.errors import ConvergenceWarning, DataError
from bayeslmm.spec.design import Design
from bayeslmm.spec.random_effects import RandomEffects

__all__ = ["RemlFit", "fit_reml", "contrast_t_test", "contrast_f_test", "satterthwaite_df", "SINGULAR_TOLERANCE"]

# Gradient step of the convergence check, relative to max(1, |theta_i|): large enough that rounding
# noise in the deviance (~1e-12 relative) stays far below the truncation error of the difference.
_GRADIENT_STEP = 1e-4
# COBYQA stops when its trust region is this small: theta to about 1e-7.
_FINAL_TRUST_RADIUS = 1e-7
# Eigenvalues of the varpar Hessian below this are treated as zero, as lmerTest does.
_EIGEN_TOLERANCE = 1e-8


@dataclass(frozen=True)
class RemlFit:
    """The estimates of a (RE)ML fit, as arrays; :mod:`bayeslmm.results.frequentist` makes the tables.

    Attributes
    ----------
    REML : bool
    theta : ndarray, shape (m,)
        Relative covariance factors in lme4's layout (:class:`~bayeslmm.spec.random_effects.RandomEffects`).
    beta : ndarray, shape (p,)
    sigma : float
    vcov : ndarray, shape (p, p)
        Covariance of ``beta``.
    df : ndarray, shape (p,)
        Satterthwaite degrees of freedom.
    df_method : str
    ranef : list of ndarray
        Conditional modes per block, shape (G, k).
    deviance : float
        The minimised criterion, ``-2 logLik`` (the REML criterion when REML).
    converged : bool
    singular : bool
        Some ``T_b`` has a diagonal element below :data:`SINGULAR_TOLERANCE` (lme4's isSingular).
    message : str
    n_evaluations : int
    seconds : float
    vcov_varpar : ndarray, shape (m + 1, m + 1)
        Asymptotic covariance of ``varpar = (theta, sigma)``: twice the pseudo-inverse of the (RE)ML
        deviance's Hessian in ``varpar`` (lmerTest's ``vcov_varpar``).
    vcov_jacobian : ndarray, shape (p, p, m + 1)
        Derivative of ``vcov`` in each element of ``varpar`` (lmerTest's ``Jac_list``).
    n_obs : int
        Number of observations (the residual df ``n - p`` is the fallback of the Satterthwaite df).
    """

    REML: bool
    theta: np.ndarray
    beta: np.ndarray
    sigma: float
    vcov: np.ndarray
    df: np.ndarray
    df_method: str
    ranef: list
    deviance: float
    converged: bool
    singular: bool
    message: str
    n_evaluations: int
    seconds: float
    vcov_varpar: np.ndarray
    vcov_jacobian: np.ndarray
    n_obs: int


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def fit_reml(design: Design, REML: bool = True) -> RemlFit:
    """Fit a gaussian linear mixed model by (RE)ML, as ``lme4::lmer`` with lmerTest's df.

    Parameters
    ----------
    design : Design
        Needs at least one random-effects block.
    REML : bool, default True
        Optimise the REML criterion (lme4's default) instead of the likelihood.

    Returns
    -------
    RemlFit

    Raises
    ------
    DataError
        No random effects, a rank-deficient fixed-effects matrix, too few observations for the fixed
        or random effects, or a response the fixed effects reproduce exactly.
    """
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    _validate(design, REML)
    # Every dense matrix here is small. numpy and scipy each bundle an OpenBLAS with its own thread
    # pool; alternating calls between them make the idle pool spin against the busy one, which made
    # an evaluation 5-10x slower on two cores. One BLAS thread is also the fastest for these sizes.
    with threadpool_limits(limits=1, user_api="blas"):
        model = _ProfiledDeviance(design)
        theta, converged, message, n_evaluations = _optimize_theta(model, REML)
        state = model.solve(theta)
        sigma = float(np.sqrt(state.pwrss / model.residual_dof(REML)))
        deviance = float(model.deviance(theta, REML))
        unscaled = model.unscaled_covbeta(state)
        vcov_varpar, vcov_jacobian = _varpar_derivatives(model, theta, sigma, REML, unscaled)
        vcov = sigma**2 * unscaled
        df, bad = satterthwaite_df(np.eye(model.p), vcov, vcov_jacobian, vcov_varpar, model.n)
        df_method = _df_method(bad, [term for term, flag in zip(model.fixed_terms, bad) if flag], model.n - model.p)
        ranef = model.random_effects(theta, state)
    diagonal = design.random.diagonal_mask()
    return RemlFit(
        REML=REML,
        theta=theta,
        beta=state.beta.copy(),
        sigma=sigma,
        vcov=vcov,
        df=df,
        df_method=df_method,
        ranef=ranef,
        deviance=deviance,
        converged=converged,
        singular=bool(np.any(theta[diagonal] < SINGULAR_TOLERANCE)),
        message=message,
        n_evaluations=n_evaluations,
        seconds=time.perf_counter() - started,
        vcov_varpar=vcov_varpar,
        vcov_jacobian=vcov_jacobian,
        n_obs=model.n,
    )


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _validate(design: Design, REML: bool) -> None:
    """Raise DataError for inputs the profiled deviance cannot handle."""
    if not design.blocks:
        raise DataError(
            f"formula {design.formula.text!r} has no random-effects term such as '(1 | group)'; "
            "a linear mixed model needs one (for a fixed-effects-only model use ordinary least "
            "squares, e.g. statsmodels.formula.api.ols)"
        )
    n, p = design.X.shape
    if p == 0:
        raise DataError("the fixed part has no columns; write '1 + ...' to keep at least an intercept")
    if n <= p:
        raise DataError(f"{n} observations cannot estimate {p} fixed effects plus variances")
    check_full_rank(design)
    q = sum(block.n_levels * block.n_terms for block in design.blocks)
    if n <= q:
        # lme4 stops when n <= rank(Z) (check.nobs.vs.nRE); q bounds rank(Z), so this is the same
        # test whenever Z has full column rank.
        raise DataError(
            f"{n} observations for {q} random effects: the random effects and the residual cannot be "
            "told apart; simplify the random-effects terms (fewer slopes, or '||')"
        )
    beta, *_ = np.linalg.lstsq(design.X, design.y, rcond=None)
    residual = design.y - design.X @ beta
    if np.dot(residual, residual) <= 1e-20 * max(np.dot(design.y, design.y), 1e-300):
        raise DataError(
            f"the fixed effects reproduce the response {design.formula.response!r} exactly "
            "(zero residual variance); there is nothing left for a mixed model to estimate"
        )
    if REML and n - p < 1:
        raise DataError("REML needs more observations than fixed effects")


# --------------------------------------------------------------------------------------------------
# The profiled deviance
# --------------------------------------------------------------------------------------------------


class _ProfiledDeviance:
    """Cross-products of the design and the profiled (RE)ML deviance as a function of theta.

    The cross-products are computed once (unit weights); every evaluation solves the penalised least
    squares problem of :class:`~bayeslmm.engines.pwls.PenalizedLeastSquares` at one theta.

    Parameters
    ----------
    design : Design
    """

    def __init__(self, design: Design):
        self.n, self.p = design.X.shape
        self.blocks = design.blocks
        self.fixed_terms = design.fixed_terms
        self.random: RandomEffects = design.random
        self.pls = PenalizedLeastSquares(design.random)
        self.cp = self.pls.crossproducts(design.X, design.y)

    def factorize(self, theta: np.ndarray) -> Factor:
        """Cholesky factor of ``Lambda' Z' Z Lambda + I`` at ``theta``."""
        return self.pls.factorize(theta, self.cp)

    def solve(self, theta: np.ndarray) -> Solution:
        """Solve the penalised least-squares problem at ``theta``, profiling out beta."""
        return self.pls.solve(theta, self.cp)

    def residual_dof(self, REML: bool) -> int:
        return self.n - self.p if REML else self.n

    def deviance(self, theta: np.ndarray, REML: bool) -> float:
        """Profiled deviance: ML ``-2 log L`` or the REML criterion, at ``theta``."""
        try:
            state = self.solve(theta)
        except (np.linalg.LinAlgError, linalg.LinAlgError):
            return np.inf
        if not state.pwrss > 0:
            return np.inf
        dof = self.residual_dof(REML)
        value = state.factor.log_det + dof * (1.0 + np.log(2.0 * np.pi * state.pwrss / dof))
        return float(value + state.log_det_RX) if REML else float(value)

    def deviance_varpar(self, theta: np.ndarray, sigma: float, REML: bool) -> float:
        """Deviance with sigma given rather than profiled (lmerTest's ``devfun_vp``)."""
        state = self.solve(theta)
        sigma2 = sigma * sigma
        value = state.factor.log_det + state.pwrss / sigma2 + self.n * np.log(2.0 * np.pi * sigma2)
        if REML:
            value += state.log_det_RX - self.p * np.log(2.0 * np.pi * sigma2)
        return float(value)

    def unscaled_covbeta(self, state: Solution) -> np.ndarray:
        """``(RX' RX)^-1``, shape (p, p): ``cov(beta_hat) / sigma^2``."""
        return self.pls.unscaled_covbeta(state)

    def random_effects(self, theta: np.ndarray, state: Solution) -> list[np.ndarray]:
        """Conditional modes ``b = Lambda u`` at ``theta``, one array of shape (G, k) per block in formula order."""
        return self.pls.effects(theta, self.pls.spherical(state))


# --------------------------------------------------------------------------------------------------
# Optimisation and numerical derivatives
# --------------------------------------------------------------------------------------------------


def _optimize_theta(model: _ProfiledDeviance, REML: bool) -> tuple[np.ndarray, bool, str, int]:
    """Minimise the profiled deviance over theta from lme4's start, within lme4's bounds.

    COBYQA is Powell's derivative-free trust-region successor of BOBYQA, the optimiser lme4 uses.
    A gradient method does not fit this problem: the deviance depends on a diagonal element of
    ``T_b`` whose column has no other entries only through its square, so the gradient there is
    exactly zero at the bound and L-BFGS-B can stay at that saddle. COBYQA's quadratic model sees
    the curvature and leaves it.

    Returns
    -------
    theta : ndarray, shape (m,)
    converged : bool
    message : str
    n_evaluations : int
    """
    from scipy import optimize  # 0.1 s to import: only when a model is fitted

    calls = [0]

    def objective(theta: np.ndarray) -> float:
        calls[0] += 1
        return model.deviance(theta, REML)

    diagonal = model.random.diagonal_mask()
    lower = np.where(diagonal, 0.0, -np.inf)
    result = optimize.minimize(
        objective,
        model.random.theta_start(),
        method="COBYQA",
        bounds=optimize.Bounds(lower, np.full(len(lower), np.inf)),
        options={"final_tr_radius": _FINAL_TRUST_RADIUS, "maxfev": max(2000, 500 * len(lower))},
    )
    n_evaluations = calls[0]
    theta = snap_to_bounds(result.x, diagonal)
    scaled = _scaled_gradient(objective, theta, diagonal)
    converged = bool(result.success and scaled < GRADIENT_TOLERANCE)
    if not converged:
        warnings.warn(
            f"optimizer did not converge: scaled gradient {scaled:.3g} ({result.message}); "
            "the random-effects structure may be too complex for the data",
            ConvergenceWarning,
            stacklevel=3,
        )
    return theta, converged, str(result.message), n_evaluations


def _scaled_gradient(f, theta: np.ndarray, diagonal: np.ndarray) -> float:
    """lme4's convergence check: the largest element of ``R^-T g`` on the free parameters.

    ``g`` is the central-difference gradient, ``R'R`` the Hessian; ``|R^-T g|^2 / 2`` is the decrease a
    Newton step would still promise. Parameters at their bound with the gradient pushing into the
    bound are left out. Falls back to ``max |g|`` where the Hessian is not positive definite.
    """
    steps = _GRADIENT_STEP * np.maximum(1.0, np.abs(theta))
    gradient = central_gradient(f, theta, steps)
    free = ~(diagonal & (theta <= 0.0) & (gradient >= 0.0))
    if not free.any():
        return 0.0
    g = gradient[free]

    def restricted(values: np.ndarray) -> float:
        full = theta.copy()
        full[free] = values
        return f(full)

    hess = hessian(restricted, theta[free], levels=1)
    return scaled_gradient(g, hess)


def _varpar_derivatives(
    model: _ProfiledDeviance, theta: np.ndarray, sigma: float, REML: bool, unscaled: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The two ingredients of every Satterthwaite df, as lmerTest computes them.

    Parameters
    ----------
    model : _ProfiledDeviance
    theta : ndarray, shape (m,)
    sigma : float
    REML : bool
    unscaled : ndarray, shape (p, p)
        ``(RX'RX)^-1`` at theta.

    Returns
    -------
    vcov_varpar : ndarray, shape (m + 1, m + 1)
        ``2 H^+``, ``H`` the Hessian of the deviance in ``varpar = (theta, sigma)`` (pseudo-inverse over
        eigenvalues above 1e-8).
    vcov_jacobian : ndarray, shape (p, p, m + 1)
        Derivative of ``cov(beta_hat) = sigma^2 (RX'RX)^-1`` in each element of ``varpar``.
    """
    varpar = np.append(theta, sigma)
    hess = hessian(lambda v: model.deviance_varpar(v[:-1], v[-1], REML), varpar)
    values, vectors = np.linalg.eigh(hess)
    positive = values > _EIGEN_TOLERANCE
    cov_varpar = 2.0 * (vectors[:, positive] / values[positive]) @ vectors[:, positive].T
    jac_theta = jacobian(lambda t: model.unscaled_covbeta(model.solve(t)), theta) * sigma**2
    jac = np.concatenate([jac_theta, (2.0 * sigma * unscaled)[..., None]], axis=-1)
    return cov_varpar, jac


def satterthwaite_df(
    L: np.ndarray, vcov: np.ndarray, vcov_jacobian: np.ndarray, vcov_varpar: np.ndarray, n_obs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Satterthwaite degrees of freedom of the linear combinations ``L beta``, one per row (lmerTest).

    ``df = 2 (l' C l)^2 / (g' A g)`` with ``g_a = l' (dC / d varpar_a) l``.

    Parameters
    ----------
    L : ndarray, shape (r, p)
        One linear combination of the fixed effects per row.
    vcov : ndarray, shape (p, p)
        ``C``, the covariance of ``beta_hat``.
    vcov_jacobian : ndarray, shape (p, p, m + 1)
    vcov_varpar : ndarray, shape (m + 1, m + 1)
        ``A``.
    n_obs : int
        For the fallback ``n - p`` where ``g' A g`` is not positive.

    Returns
    -------
    df : ndarray, shape (r,)
    fallback : ndarray of bool, shape (r,)
        Rows whose df fell back to ``n - p``.
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    variance = np.einsum("ri,ij,rj->r", L, vcov, L)
    gradients = np.einsum("ri,ija,rj->ra", L, vcov_jacobian, L)  # (r, m + 1)
    denominator = np.einsum("ra,ab,rb->r", gradients, vcov_varpar, gradients)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * variance**2 / denominator
    bad = ~(np.isfinite(df) & (denominator > 0))
    df[bad] = float(n_obs - vcov.shape[0])
    return df, bad


def _df_method(bad: np.ndarray, names: list[str], residual: int) -> str:
    if not np.any(bad):
        return "Satterthwaite"
    return f"Satterthwaite (residual df n - p = {residual:g} for {', '.join(names)})"


def contrast_t_test(fit: RemlFit, l: np.ndarray, rhs: float = 0.0) -> dict[str, float]:
    """t test of one linear combination ``l' beta = rhs`` with Satterthwaite df (lmerTest's ``contest1D``).

    Parameters
    ----------
    fit : RemlFit
    l : ndarray, shape (p,)
    rhs : float

    Returns
    -------
    dict
        ``Estimate`` (``l' beta``), ``SE``, ``DF``, ``T-stat`` (``(l' beta - rhs) / SE``) and ``P-val``
        (two-sided).
    """
    from scipy import stats

    l = np.asarray(l, dtype=float).reshape(-1)
    _check_contrast(fit, l[None, :])
    estimate = float(l @ fit.beta)
    df, _ = satterthwaite_df(l[None, :], fit.vcov, fit.vcov_jacobian, fit.vcov_varpar, fit.n_obs)
    se = float(np.sqrt(l @ fit.vcov @ l))
    t_stat = (estimate - rhs) / se
    return {"Estimate": estimate, "SE": se, "DF": float(df[0]), "T-stat": t_stat,
            "P-val": float(2.0 * stats.t.sf(abs(t_stat), df[0]))}


def contrast_f_test(fit: RemlFit, L: np.ndarray) -> dict[str, float]:
    """F test of ``L beta = 0`` with Satterthwaite denominator df (lmerTest's ``contestMD``).

    ``L C L'`` is decomposed into eigenvalues ``d_m`` and eigenvectors ``P``; its rank ``q`` (eigenvalues
    above ``sqrt(eps) d_1``) is the numerator df. The rotated contrasts ``P' L beta`` are independent,
    each with a t statistic ``t_m`` and Satterthwaite df ``nu_m``; ``F = sum t_m^2 / q``, and its
    denominator df is ``2 E / (E - q)`` with ``E = sum nu_m / (nu_m - 2)`` (2 when some ``nu_m <= 2``; the
    common value when all ``nu_m`` are equal; ``nu_1`` when ``q = 1``). The sums of squares are lmerTest's:
    ``MS = F sigma^2``, ``SS = q MS``.

    Parameters
    ----------
    fit : RemlFit
    L : ndarray, shape (r, p)

    Returns
    -------
    dict
        ``SS``, ``MS``, ``NumDF``, ``DenomDF``, ``F-stat``, ``P-val``.
    """
    from scipy import stats

    L = np.atleast_2d(np.asarray(L, dtype=float))
    _check_contrast(fit, L)
    values, vectors = np.linalg.eigh(L @ fit.vcov @ L.T)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    keep = values > max(np.sqrt(np.finfo(float).eps) * values[0], 0.0)
    q = int(np.sum(keep))
    rotated = vectors[:, keep].T @ L  # (q, p)
    t2 = (rotated @ fit.beta) ** 2 / values[keep]
    F = float(np.sum(t2) / q)
    nu, _ = satterthwaite_df(rotated, fit.vcov, fit.vcov_jacobian, fit.vcov_varpar, fit.n_obs)
    den_df = _f_denominator_df(nu)
    mean_sq = F * fit.sigma**2
    return {"SS": mean_sq * q, "MS": mean_sq, "NumDF": q, "DenomDF": den_df, "F-stat": F,
            "P-val": float(stats.f.sf(F, q, den_df))}


def _f_denominator_df(nu: np.ndarray, tolerance: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: the denominator df of an F statistic from the df of its t statistics."""
    nu = np.asarray(nu, dtype=float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tolerance):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - nu.size)


def _check_contrast(fit: RemlFit, L: np.ndarray) -> None:
    if L.shape[1] != len(fit.beta) or not np.all(np.isfinite(L)):
        raise ValueError(
            f"a contrast needs {len(fit.beta)} finite weights, one per fixed effect; got shape {L.shape}"
        )
