"""Frequentist linear mixed models: lme4's profiled (RE)ML deviance in numpy/scipy.

The algorithm follows Bates, Maechler, Bolker & Walker (2015), "Fitting linear mixed-effects models
using lme4", J. Stat. Softw. 67(1), section 3. The random effects are ``b = Lambda_theta u`` with
spherical ``u ~ N(0, sigma^2 I)``; ``Lambda_theta`` is block diagonal with one lower-triangular
``k x k`` factor ``T_b`` per random-effects block, repeated for each level of its grouping factor.
``theta`` holds the lower triangles of the ``T_b`` (column-major, as lme4), and its diagonal elements
are bounded below by 0. For a given ``theta`` the penalised least-squares problem is solved through
the sparse Cholesky factor ``L_theta`` of ``Lambda' Z' Z Lambda + I``; ``beta`` and ``sigma`` are
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
import scipy.sparse as sp
from scipy import linalg

from bayeslmm.engines.numerical import central_gradient, hessian, jacobian
from bayeslmm.errors import ConvergenceWarning, DataError
from bayeslmm.spec.design import Design
from bayeslmm.spec.random_effects import RandomEffects

__all__ = ["RemlFit", "fit_reml", "contrast_t_test", "contrast_f_test", "satterthwaite_df", "SINGULAR_TOLERANCE"]

# Gradient step of the convergence check, relative to max(1, |theta_i|): large enough that rounding
# noise in the deviance (~1e-12 relative) stays far below the truncation error of the difference.
_GRADIENT_STEP = 1e-4
# lme4's tolerance on the scaled gradient (checkConv's check.conv.grad).
_GRADIENT_TOLERANCE = 2e-3
# COBYQA stops when its trust region is this small: theta to about 1e-7.
_FINAL_TRUST_RADIUS = 1e-7
# Eigenvalues of the varpar Hessian below this are treated as zero, as lmerTest does.
_EIGEN_TOLERANCE = 1e-8
# W (the off-diagonal part of L) is multiplied as a dense matrix above this fill ratio.
_DENSE_FILL = 0.15
#: lme4's isSingular tolerance: a diagonal element of some T_b below this is a boundary (singular) fit.
SINGULAR_TOLERANCE = 1e-4


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
        ranef = model.random_effects(state)
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
    _check_full_rank(design)
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


def _check_full_rank(design: Design) -> None:
    """Raise DataError naming the fixed-effect columns that are linear combinations of others."""
    _, r, pivot = linalg.qr(design.X, mode="economic", pivoting=True)
    diagonal = np.abs(np.diag(r))
    tolerance = diagonal[0] * max(design.X.shape) * np.finfo(float).eps * 10 if diagonal.size else 0.0
    rank = int(np.sum(diagonal > tolerance))
    if rank < design.X.shape[1]:
        dropped = [design.fixed_terms[i] for i in sorted(pivot[rank:])]
        raise DataError(
            f"the fixed-effects matrix is rank deficient (rank {rank} of {design.X.shape[1]}): "
            f"{', '.join(map(repr, dropped))} are linear combinations of the other columns; "
            "remove them from the formula (lme4 would drop them silently)"
        )


# --------------------------------------------------------------------------------------------------
# theta layout and the profiled deviance
# --------------------------------------------------------------------------------------------------


@dataclass
class _Factor:
    """The Cholesky factor ``L = [[L1, 0], [W', LS]]`` of ``Lambda' Z' Z Lambda + I`` at one theta.

    ``L1`` is block diagonal (largest random-effects block; ``L1inv`` holds its inverse blocks), ``W``
    is ``L1^-1 A12`` and ``LS`` the Cholesky factor of the Schur complement of the other blocks.
    """

    T1: np.ndarray  # (k1, k1)
    L1inv: np.ndarray  # (G1, k1, k1)
    P: np.ndarray  # (G1, k1, k1): L1inv @ T1', maps Z1'(.) to L1^-1 Lambda1'Z1'(.)
    lam2: sp.csr_array | None  # (q2, q2)
    W: np.ndarray | sp.csr_array | None  # (q1, q2)
    LS: np.ndarray | None  # (q2, q2), lower
    log_det: float  # log |L|^2


@dataclass
class _State:
    """Penalised least-squares solution at one theta (beta profiled out)."""

    factor: _Factor
    x: np.ndarray  # (q, p + 1): L^-1 Lambda' Z' [X y], internal order; [:, :p] is R_ZX, [:, p] c_u
    RX: np.ndarray  # (p, p) upper: RX'RX = X'X - R_ZX'R_ZX
    beta: np.ndarray  # (p,)
    pwrss: float  # penalised weighted residual sum of squares
    log_det_RX: float  # log |RX|^2


class _ProfiledDeviance:
    """Cross-products of the design and the profiled (RE)ML deviance as a function of theta.

    Parameters
    ----------
    design : Design
    """

    def __init__(self, design: Design):
        X, y = design.X, design.y
        self.n, self.p = X.shape
        self.blocks = design.blocks
        self.fixed_terms = design.fixed_terms
        self.random: RandomEffects = design.random
        sizes = [block.n_levels * block.n_terms for block in design.blocks]
        # The largest block goes first: its part of L is block diagonal, and the dense Schur
        # complement only covers the rest.
        self.big = int(np.argmax(sizes))
        self.others = [i for i in range(len(self.blocks)) if i != self.big]
        big = self.blocks[self.big]
        self.G1, self.k1 = big.n_levels, big.n_terms
        self.q1, self.q2 = sizes[self.big], sum(sizes[i] for i in self.others)
        XY = np.column_stack([X, y])
        Z1 = big.sparse()
        self.M1 = big.crossprod_per_level()
        self.ZtXY1 = np.asarray(Z1.T @ XY).reshape(self.G1, self.k1, self.p + 1)
        self.XtX = X.T @ X
        self.Xty = X.T @ y
        self.yty = float(y @ y)
        if self.others:
            Z2 = self.random.sparse(self.others)
            self.C12 = sp.csr_array(Z1.T @ Z2)
            self.M22 = (Z2.T @ Z2).toarray()
            self.ZtXY2 = np.asarray(Z2.T @ XY)
            self._build_lambda2_pattern()
            self.offsets2 = np.concatenate([[0], np.cumsum([sizes[i] for i in self.others])])

    # -- Lambda for the non-largest blocks -----------------------------------------------------

    def _build_lambda2_pattern(self) -> None:
        """Sparsity pattern of ``Lambda_2`` and, per stored entry, its index in theta (lme4's Lind)."""
        rows, cols, where = [], [], []
        offset = 0
        for block_index in self.others:
            block = self.blocks[block_index]
            k, G = block.n_terms, block.n_levels
            pair_rows, pair_cols = block.lower_pairs()
            levels = np.arange(G) * k + offset
            for position, (i, j) in enumerate(zip(pair_rows, pair_cols)):
                rows.append(levels + i)
                cols.append(levels + j)
                where.append(np.full(G, self.random.theta_offsets[block_index] + position))
            offset += G * k
        rows, cols, where = map(np.concatenate, (rows, cols, where))
        # Tag each entry with its position to recover the CSR storage order.
        tags = np.arange(1, len(rows) + 1, dtype=float)
        tagged = sp.csr_array((tags, (rows, cols)), shape=(self.q2, self.q2))
        order = tagged.data.astype(np.int64) - 1
        self._lam2_indices, self._lam2_indptr = tagged.indices, tagged.indptr
        self._lam2_theta = where[order]
        # Diagonal when every stored entry is on the diagonal; the CSR data are then in row order.
        self._lam2_is_diagonal = bool(np.all(rows == cols))

    def _lambda2(self, theta: np.ndarray) -> sp.csr_array:
        return sp.csr_array(
            (theta[self._lam2_theta], self._lam2_indices, self._lam2_indptr), shape=(self.q2, self.q2)
        )

    # -- factorisation and solution ------------------------------------------------------------

    def factorize(self, theta: np.ndarray) -> _Factor:
        """Cholesky factor of ``Lambda' Z' Z Lambda + I`` at ``theta``."""
        T1 = self.random.relative_factor(theta, self.big)
        A11 = T1.T @ self.M1 @ T1 + np.eye(self.k1)
        L1 = np.linalg.cholesky(A11)
        L1inv = np.linalg.inv(L1)
        log_det = 2.0 * float(np.sum(np.log(np.diagonal(L1, axis1=1, axis2=2))))
        P = L1inv @ T1.T
        if not self.others:
            return _Factor(T1, L1inv, P, None, None, None, log_det)
        lam2 = self._lambda2(theta)
        if self._lam2_is_diagonal:
            # Only single-term blocks besides the largest: Lambda_2 is diagonal, so scale instead of
            # two sparse-times-dense products (the difference matters when q2 is in the thousands).
            scale = theta[self._lam2_theta]
            A22 = self.M22 * np.outer(scale, scale)
        else:
            A22 = lam2.T @ np.asarray(lam2.T @ self.M22).T
        A22[np.diag_indices_from(A22)] += 1.0
        block_P = sp.bsr_array(
            (P, np.arange(self.G1), np.arange(self.G1 + 1)), shape=(self.q1, self.q1)
        )
        W = sp.csr_array(block_P @ (self.C12 @ lam2))
        if W.nnz > _DENSE_FILL * self.q1 * self.q2:
            W = W.toarray()
            S = A22 - W.T @ W
        else:
            S = A22 - (W.T @ W).toarray()
        LS = linalg.cholesky(S, lower=True, check_finite=False)
        log_det += 2.0 * float(np.sum(np.log(np.diag(LS))))
        return _Factor(T1, L1inv, P, lam2, W, LS, log_det)

    def solve(self, theta: np.ndarray) -> _State:
        """Solve the penalised least-squares problem at ``theta``, profiling out beta."""
        factor = self.factorize(theta)
        x1 = (factor.P @ self.ZtXY1).reshape(self.q1, self.p + 1)
        parts = [x1]
        if self.others:
            rhs = np.asarray(factor.lam2.T @ self.ZtXY2) - np.asarray(factor.W.T @ x1)
            parts.append(linalg.solve_triangular(factor.LS, rhs, lower=True, check_finite=False))
        x = np.vstack(parts)
        RZX, cu = x[:, : self.p], x[:, self.p]
        RX = linalg.cholesky(self.XtX - RZX.T @ RZX, lower=False, check_finite=False)
        c_beta = linalg.solve_triangular(RX, self.Xty - RZX.T @ cu, trans="T", check_finite=False)
        beta = linalg.solve_triangular(RX, c_beta, check_finite=False)
        # Penalised RSS ||y - X beta - Z b||^2 + ||u||^2 from the cross-products.
        pwrss = self.yty - float(cu @ cu) - float(c_beta @ c_beta)
        log_det_RX = 2.0 * float(np.sum(np.log(np.abs(np.diag(RX)))))
        return _State(factor, x, RX, beta, pwrss, log_det_RX)

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

    def unscaled_covbeta(self, state: _State) -> np.ndarray:
        """``(RX' RX)^-1``, shape (p, p): ``cov(beta_hat) / sigma^2``."""
        RXinv = linalg.solve_triangular(state.RX, np.eye(self.p), check_finite=False)
        return RXinv @ RXinv.T

    def random_effects(self, state: _State) -> list[np.ndarray]:
        """Conditional modes ``b = Lambda u``, one array of shape (G, k) per block in formula order."""
        factor = state.factor
        r = state.x[:, self.p] - state.x[:, : self.p] @ state.beta  # L' u = c_u - R_ZX beta
        r1 = r[: self.q1]
        out: list[np.ndarray | None] = [None] * len(self.blocks)
        if self.others:
            u2 = linalg.solve_triangular(factor.LS, r[self.q1 :], lower=True, trans="T", check_finite=False)
            r1 = r1 - np.asarray(factor.W @ u2)
            b2 = np.asarray(factor.lam2 @ u2)
            for position, block_index in enumerate(self.others):
                chunk = b2[self.offsets2[position] : self.offsets2[position + 1]]
                out[block_index] = chunk.reshape(self.blocks[block_index].n_levels, -1)
        u1 = np.einsum("gji,gj->gi", factor.L1inv, r1.reshape(self.G1, self.k1))
        out[self.big] = u1 @ factor.T1.T
        return out


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
    theta = _snap_to_bounds(result.x, diagonal)
    scaled = _scaled_gradient(objective, theta, diagonal)
    converged = bool(result.success and scaled < _GRADIENT_TOLERANCE)
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
    try:
        return float(np.max(np.abs(linalg.solve_triangular(np.linalg.cholesky(hess), g, lower=True))))
    except np.linalg.LinAlgError:
        return float(np.max(np.abs(g)))


def _snap_to_bounds(theta: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """Clip diagonal elements into [0, inf) and set those within 1e-10 of the bound to 0."""
    theta = np.array(theta, dtype=float)
    theta[diagonal] = np.where(theta[diagonal] < 1e-10, 0.0, theta[diagonal])
    return theta


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
