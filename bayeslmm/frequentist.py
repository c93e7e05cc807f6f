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
the gradient of ``l' C l`` in ``varpar``, for ``l`` each unit vector (one df per coefficient). Derivatives are central differences with Richardson
extrapolation (numDeriv's method). Where the denominator is not positive (a degenerate Hessian), the
coefficient falls back to the residual degrees of freedom ``n - p`` and ``df_method`` says so.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import linalg, optimize, stats
from threadpoolctl import threadpool_limits

from bayeslmm.design import Design, RandomBlock
from bayeslmm.errors import ConvergenceWarning, DataError

__all__ = ["FrequentistResult", "fit_frequentist"]

_COEF_COLUMNS = ["Estimate", "SE", "2.5_ci", "97.5_ci", "DF", "T-stat", "P-val"]
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


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class FrequentistResult:
    """A fitted linear mixed model, with lme4/pymer4 names.

    Let ``n`` be the number of observations, ``p`` the number of fixed effects and ``m`` the number of
    covariance parameters ``theta``.

    Attributes
    ----------
    coefs : pandas.DataFrame, shape (p, 7)
        Indexed by fixed term (``"(Intercept)"`` for the intercept), columns ``Estimate``, ``SE``,
        ``2.5_ci``, ``97.5_ci``, ``DF``, ``T-stat``, ``P-val``. ``DF`` is Satterthwaite's approximation
        (lmerTest); the interval is ``Estimate +- t(0.975, DF) SE`` and ``P-val`` is two-sided.
    ranef_var : pandas.DataFrame, shape (sum of k over blocks + 1, 3)
        Index named ``"group"``: the grouping factor of each (block, term) pair in block order, then
        ``"Residual"``. Columns ``Name`` (term; ``""`` for the residual), ``Var``, ``Std``.
    ranef_corr : pandas.DataFrame or None
        Index named ``"group"`` (factor), columns ``IV1``, ``IV2``, ``Corr``: one row per pair of terms
        within a block; ``None`` when every block has a single term.
    ranef : pandas.DataFrame or dict of str to pandas.DataFrame
        Conditional modes of the group deviations (lme4's ``ranef()``): one frame per grouping
        factor, shape (G, number of terms over that factor's blocks), indexed by the factor's levels.
        A dict ``{factor: frame}`` in formula order when there are several factors, else the frame.
    fixef : pandas.DataFrame or dict of str to pandas.DataFrame
        Per-group coefficients (lme4's ``coef()``): fixed estimate plus deviation. Same index and
        single-vs-dict rule as ``ranef``; columns are the random-only terms (fixed value 0, as lme4
        does) followed by every fixed term.
    logLike : float
        Log-likelihood at the optimum; the REML criterion's log-likelihood when ``REML`` (lme4's
        ``logLik``).
    AIC, BIC : float
        ``-2 logLike + 2 k`` and ``-2 logLike + log(n) k`` with ``k = p + m + 1``.
    REML : bool
        Whether the REML criterion was optimised.
    sigma : float
        Residual standard deviation.
    theta : ndarray, shape (m,)
        Relative covariance factors: per block in formula order, the lower triangle of ``T_b``
        column by column (``sigma T_b`` is the Cholesky factor of the block's covariance).
    beta : ndarray, shape (p,)
        Fixed-effect estimates.
    vcov : pandas.DataFrame, shape (p, p)
        Covariance of ``beta``, indexed by fixed term on both axes.
    fitted : ndarray, shape (n,)
        Conditional fitted values ``X beta + Z b``.
    residuals : ndarray, shape (n,)
        ``y - fitted``.
    converged : bool
        Whether the optimiser reported success and lme4's scaled-gradient check passes (2e-3); a
        :class:`~bayeslmm.errors.ConvergenceWarning` is issued otherwise.
    deviance : float
        The minimised criterion, ``-2 logLike`` (lme4's "REML criterion at convergence" when REML).
    n_obs : int
        Number of observations used.
    n_groups : dict of str to int
        Number of levels of each grouping factor, in formula order.
    formula : str
        The formula as written.
    df_method : str
        How ``DF`` was computed (``"Satterthwaite"``, or which coefficients fell back to ``n - p``).
    optimizer_message : str
        What the optimiser reported.
    n_evaluations : int
        Deviance evaluations used by the optimiser.
    fit_seconds : float
        Wall time of the fit, Satterthwaite included.
    design : Design
        The design the model was fitted to.
    """

    coefs: pd.DataFrame
    ranef_var: pd.DataFrame
    ranef_corr: pd.DataFrame | None
    ranef: pd.DataFrame | dict[str, pd.DataFrame]
    fixef: pd.DataFrame | dict[str, pd.DataFrame]
    logLike: float
    AIC: float
    BIC: float
    REML: bool
    sigma: float
    theta: np.ndarray
    beta: np.ndarray
    vcov: pd.DataFrame
    fitted: np.ndarray
    residuals: np.ndarray
    converged: bool
    deviance: float
    n_obs: int
    n_groups: dict[str, int]
    formula: str
    df_method: str
    optimizer_message: str
    n_evaluations: int
    fit_seconds: float
    design: Design = field(repr=False)

    def summary(self) -> str:
        """lme4-style summary: criterion, random effects, fixed effects with Satterthwaite tests.

        Returns
        -------
        str
        """
        lines = [self._title(), f"Formula: {self.formula}", ""]
        if self.REML:
            lines.append(f"REML criterion at convergence: {self.deviance:.4f}")
        else:
            lines.append(
                f"     AIC: {self.AIC:.4f}   BIC: {self.BIC:.4f}   logLik: {self.logLike:.4f}   "
                f"deviance: {self.deviance:.4f}   df.resid: {self._df_resid()}"
            )
        lines += ["", "Random effects:", self._random_table(with_variance=True), self._counts(), ""]
        lines.append(f"Fixed effects ({self.df_method} df):")
        lines.append(self._fixed_table())
        if not self.converged:
            lines += ["", f"Warning: optimizer did not converge ({self.optimizer_message})"]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The summary as preformatted HTML, for Jupyter."""
        from bayeslmm.report import text_html

        return text_html(self.summary())

    def __repr__(self) -> str:
        # The short form of lme4's print(): criterion, random-effect SDs and fixed estimates.
        criterion = "REML criterion" if self.REML else "logLik"
        value = self.deviance if self.REML else self.logLike
        fixed = pd.Series(self.beta, index=list(self.coefs.index)).to_string(float_format="{:.4f}".format)
        return "\n".join(
            [
                self._title(),
                f"Formula: {self.formula}",
                f"{criterion}: {value:.4f}",
                "Random effects:",
                self._random_table(with_variance=False),
                self._counts(),
                "Fixed Effects:",
                fixed,
            ]
        )

    __str__ = __repr__

    def _title(self) -> str:
        method = "REML" if self.REML else "maximum likelihood"
        return f"Linear mixed model fit by {method} (lme4 algorithm, bayeslmm.frequentist)"

    def _df_resid(self) -> int:
        return self.n_obs - len(self.beta) - len(self.theta) - 1

    def _counts(self) -> str:
        groups = ", ".join(f"{factor}, {count}" for factor, count in self.n_groups.items())
        return f"Number of obs: {self.n_obs}, groups: {groups}"

    def _random_table(self, with_variance: bool) -> str:
        """Groups / Name / (Variance) / Std.Dev. / Corr table, correlations in the lower triangle."""
        rows = []
        for block, names, covariance in _block_covariances(self):
            sd = np.sqrt(np.diag(covariance))
            for i, name in enumerate(names):
                corr = [covariance[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan for j in range(i)]
                rows.append(
                    [block.factor if i == 0 else "", name]
                    + ([f"{covariance[i, i]:.4f}"] if with_variance else [])
                    + [f"{sd[i]:.4f}", " ".join(f"{c:5.2f}" for c in corr)]
                )
        rows.append(
            ["Residual", ""]
            + ([f"{self.sigma**2:.4f}"] if with_variance else [])
            + [f"{self.sigma:.4f}", ""]
        )
        header = ["Groups", "Name"] + (["Variance"] if with_variance else []) + ["Std.Dev.", "Corr"]
        return _format_table(header, rows)

    def _fixed_table(self) -> str:
        table = pd.DataFrame(
            {
                "Estimate": self.coefs["Estimate"],
                "Std. Error": self.coefs["SE"],
                "df": self.coefs["DF"],
                "t value": self.coefs["T-stat"],
                "Pr(>|t|)": [f"{value:.3g}" for value in self.coefs["P-val"]],
            }
        )
        return table.to_string(float_format="{:.4f}".format)


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        " " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    )


def _block_covariances(result: FrequentistResult):
    """Yield (block, term names, k x k covariance ``sigma^2 T T'``) for each block in formula order."""
    layout = _ThetaLayout([block.n_terms for block in result.design.blocks])
    for index, block in enumerate(result.design.blocks):
        factor = layout.factor(result.theta, index)
        yield block, block.terms, result.sigma**2 * factor @ factor.T


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def fit_frequentist(design: Design, REML: bool = True) -> FrequentistResult:
    """Fit a gaussian linear mixed model by (RE)ML, as ``lme4::lmer`` with lmerTest's df.

    Parameters
    ----------
    design : Design
        From :func:`bayeslmm.design.build_design`; needs at least one random-effects block.
    REML : bool, default True
        Optimise the REML criterion (lme4's default) instead of the likelihood.

    Returns
    -------
    FrequentistResult

    Raises
    ------
    DataError
        No random effects, a rank-deficient fixed-effects matrix, too few observations for the fixed
        or random effects, or a response the fixed effects reproduce exactly.

    Examples
    --------
    >>> import pandas as pd
    >>> from bayeslmm.formula import parse_formula
    >>> from bayeslmm.design import build_design
    >>> data = pd.read_csv("sleepstudy.csv")  # doctest: +SKIP
    >>> design = build_design(parse_formula("Reaction ~ Days + (Days | Subject)"), data)  # doctest: +SKIP
    >>> fit_frequentist(design).coefs["Estimate"]  # doctest: +SKIP
    (Intercept)    251.405105
    Days            10.467286
    """
    started = time.perf_counter()
    _validate(design, REML)
    # Every dense matrix here is small. numpy and scipy each bundle an OpenBLAS with its own thread
    # pool; alternating calls between them make the idle pool spin against the busy one, which made
    # an evaluation 5-10x slower on two cores. One BLAS thread is also the fastest for these sizes.
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit(design, REML, started)


def _fit(design: Design, REML: bool, started: float) -> FrequentistResult:
    """Optimise theta, then assemble the result (see :func:`fit_frequentist`)."""
    model = _ProfiledDeviance(design)
    theta, converged, message, n_evaluations = _optimize_theta(model, REML)
    state = model.solve(theta)
    sigma = float(np.sqrt(state.pwrss / model.residual_dof(REML)))
    deviance = float(model.deviance(theta, REML))
    unscaled = model.unscaled_covbeta(state)
    df, df_method = _satterthwaite_df(model, theta, sigma, REML, unscaled)

    blocks_b = model.random_effects(state)
    fitted = design.X @ state.beta + sum(
        np.sum(block.Z * b[block.group_index], axis=1) for block, b in zip(design.blocks, blocks_b)
    )
    n_parameters = design.X.shape[1] + model.layout.n_theta + 1
    names = list(design.fixed_terms)
    log_like = -0.5 * deviance
    return FrequentistResult(
        coefs=_coef_table(design.fixed_terms, state.beta, sigma**2 * unscaled, df),
        ranef_var=_ranef_var(design.blocks, model.layout, theta, sigma),
        ranef_corr=_ranef_corr(design.blocks, model.layout, theta),
        ranef=_by_factor(design, _ranef_frames(design, blocks_b)),
        fixef=_by_factor(design, _coef_frames(design, state.beta, blocks_b)),
        logLike=log_like,
        AIC=-2.0 * log_like + 2.0 * n_parameters,
        BIC=-2.0 * log_like + np.log(model.n) * n_parameters,
        REML=REML,
        sigma=sigma,
        theta=theta,
        beta=state.beta.copy(),
        vcov=pd.DataFrame(sigma**2 * unscaled, index=names, columns=names),
        fitted=fitted,
        residuals=design.y - fitted,
        converged=converged,
        deviance=deviance,
        n_obs=model.n,
        n_groups={factor: len(levels) for factor, levels in design.factors.items()},
        formula=design.formula.text,
        df_method=df_method,
        optimizer_message=message,
        n_evaluations=n_evaluations,
        fit_seconds=time.perf_counter() - started,
        design=design,
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


class _ThetaLayout:
    """Map between ``theta`` and the lower-triangular factors ``T_b`` of each block.

    Parameters
    ----------
    sizes : sequence of int
        ``k`` of each block, in formula order.
    """

    def __init__(self, sizes):
        self.sizes = tuple(int(k) for k in sizes)
        counts = [k * (k + 1) // 2 for k in self.sizes]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n_theta = int(self.offsets[-1])
        # lme4's order: the lower triangle column by column.
        self.pairs = [
            (np.array([i for j in range(k) for i in range(j, k)], dtype=np.int64),
             np.array([j for j in range(k) for _ in range(j, k)], dtype=np.int64))
            for k in self.sizes
        ]

    def factor(self, theta: np.ndarray, block: int) -> np.ndarray:
        """``T_b``, shape (k, k), lower triangular."""
        k = self.sizes[block]
        rows, cols = self.pairs[block]
        out = np.zeros((k, k))
        out[rows, cols] = theta[self.offsets[block] : self.offsets[block + 1]]
        return out

    def diagonal_mask(self) -> np.ndarray:
        """Boolean, shape (m,): which elements of theta are diagonal elements of some ``T_b``."""
        return np.concatenate([rows == cols for rows, cols in self.pairs])

    def start(self) -> np.ndarray:
        """lme4's starting value: every ``T_b`` the identity."""
        return self.diagonal_mask().astype(float)

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """Diagonal elements >= 0, off-diagonal elements free."""
        return [(0.0, None) if diagonal else (None, None) for diagonal in self.diagonal_mask()]


def _block_matrix(block: RandomBlock) -> sp.csc_array:
    """Sparse ``Z_b``, shape (n, G k): column ``g k + j`` holds term ``j`` on the rows of level ``g``."""
    n, k = block.Z.shape
    rows = np.repeat(np.arange(n), k)
    cols = (block.group_index[:, None] * k + np.arange(k)[None, :]).reshape(-1)
    matrix = sp.csc_array((block.Z.reshape(-1), (rows, cols)), shape=(n, block.n_levels * k))
    matrix.eliminate_zeros()
    return matrix


def _per_level_crossprod(block: RandomBlock) -> np.ndarray:
    """``sum over rows of level g of z z'``, shape (G, k, k): the diagonal blocks of ``Z_b' Z_b``."""
    k = block.n_terms
    out = np.empty((block.n_levels, k, k))
    for i in range(k):
        for j in range(i + 1):
            weights = block.Z[:, i] * block.Z[:, j]
            values = np.bincount(block.group_index, weights=weights, minlength=block.n_levels)
            out[:, i, j] = values
            out[:, j, i] = values
    return out


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
        self.layout = _ThetaLayout([block.n_terms for block in design.blocks])
        sizes = [block.n_levels * block.n_terms for block in design.blocks]
        # The largest block goes first: its part of L is block diagonal, and the dense Schur
        # complement only covers the rest.
        self.big = int(np.argmax(sizes))
        self.others = [i for i in range(len(self.blocks)) if i != self.big]
        big = self.blocks[self.big]
        self.G1, self.k1 = big.n_levels, big.n_terms
        self.q1, self.q2 = sizes[self.big], sum(sizes[i] for i in self.others)
        XY = np.column_stack([X, y])
        Z1 = _block_matrix(big)
        self.M1 = _per_level_crossprod(big)
        self.ZtXY1 = np.asarray(Z1.T @ XY).reshape(self.G1, self.k1, self.p + 1)
        self.XtX = X.T @ X
        self.Xty = X.T @ y
        self.yty = float(y @ y)
        if self.others:
            Z2 = sp.hstack([_block_matrix(self.blocks[i]) for i in self.others], format="csc")
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
            pair_rows, pair_cols = self.layout.pairs[block_index]
            levels = np.arange(G) * k + offset
            for position, (i, j) in enumerate(zip(pair_rows, pair_cols)):
                rows.append(levels + i)
                cols.append(levels + j)
                where.append(np.full(G, self.layout.offsets[block_index] + position))
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
        T1 = self.layout.factor(theta, self.big)
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
    calls = [0]

    def objective(theta: np.ndarray) -> float:
        calls[0] += 1
        return model.deviance(theta, REML)

    lower = np.where(model.layout.diagonal_mask(), 0.0, -np.inf)
    result = optimize.minimize(
        objective,
        model.layout.start(),
        method="COBYQA",
        bounds=optimize.Bounds(lower, np.full(len(lower), np.inf)),
        options={"final_tr_radius": _FINAL_TRUST_RADIUS, "maxfev": max(2000, 500 * len(lower))},
    )
    n_evaluations = calls[0]
    theta = _snap_to_bounds(result.x, model.layout.diagonal_mask())
    scaled = _scaled_gradient(objective, theta, model.layout.diagonal_mask())
    converged = bool(result.success and scaled < _GRADIENT_TOLERANCE)
    if not converged:
        warnings.warn(
            f"optimizer did not converge: scaled gradient {scaled:.3g} ({result.message}); "
            "the random-effects structure may be too complex for the data",
            ConvergenceWarning,
            stacklevel=3,
        )
    return theta, converged, str(result.message), n_evaluations


def _snap_to_bounds(theta: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """Clip diagonal elements into [0, inf) and set those within 1e-10 of the bound to 0."""
    theta = np.array(theta, dtype=float)
    theta[diagonal] = np.where(theta[diagonal] < 1e-10, 0.0, theta[diagonal])
    return theta


def _scaled_gradient(f: Callable[[np.ndarray], float], theta: np.ndarray, diagonal: np.ndarray) -> float:
    """lme4's convergence check: the largest element of ``R^-T g`` on the free parameters.

    ``g`` is the central-difference gradient, ``R'R`` the Hessian; ``|R^-T g|^2 / 2`` is the decrease a
    Newton step would still promise. Parameters at their bound with the gradient pushing into the
    bound are left out. Falls back to ``max |g|`` where the Hessian is not positive definite.
    """
    steps = _GRADIENT_STEP * np.maximum(1.0, np.abs(theta))
    gradient = _central_gradient(f, theta, steps)
    free = ~(diagonal & (theta <= 0.0) & (gradient >= 0.0))
    if not free.any():
        return 0.0
    g = gradient[free]
    hessian = _hessian(lambda t: f(_embed(theta, free, t)), theta[free], levels=1)
    try:
        return float(np.max(np.abs(linalg.solve_triangular(np.linalg.cholesky(hessian), g, lower=True))))
    except np.linalg.LinAlgError:
        return float(np.max(np.abs(g)))


def _embed(theta: np.ndarray, free: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = theta.copy()
    out[free] = values
    return out


def _central_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Central-difference gradient of a scalar function, shape (len(x),)."""
    out = np.empty(len(x))
    for i, step in enumerate(steps):
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        out[i] = (f(up) - f(down)) / (2.0 * step)
    return out


def _richardson(estimate: Callable[[float], np.ndarray], levels: int = 2) -> np.ndarray:
    """Richardson extrapolation of an O(h^2) central-difference estimate (numDeriv's scheme).

    ``estimate(scale)`` returns the difference quotient with steps multiplied by ``scale``; steps are
    halved at each level and the error terms in h^2, h^4, ... eliminated.
    """
    table = [estimate(1.0)]
    for level in range(1, levels):
        row = [estimate(0.5**level)]
        for order in range(1, level + 1):
            factor = 4.0**order
            row.append((factor * row[order - 1] - table[order - 1]) / (factor - 1.0))
        table = row
    return table[-1]


def _derivative_steps(x: np.ndarray) -> np.ndarray:
    """Base steps for Richardson differences: 1% of |x|, at least 1e-3 (numDeriv uses 10%)."""
    return 1e-2 * np.maximum(np.abs(x), 0.1)


def _hessian(f: Callable[[np.ndarray], float], x: np.ndarray, levels: int = 2) -> np.ndarray:
    """Hessian of a scalar function by central differences, Richardson-extrapolated over ``levels``."""
    base = _derivative_steps(x)
    f0 = f(x)

    def estimate(scale: float) -> np.ndarray:
        h = base * scale
        m = len(x)
        out = np.empty((m, m))
        for i in range(m):
            e_i = np.zeros(m)
            e_i[i] = h[i]
            out[i, i] = (f(x + e_i) - 2.0 * f0 + f(x - e_i)) / h[i] ** 2
            for j in range(i):
                e_j = np.zeros(m)
                e_j[j] = h[j]
                value = (f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) / (
                    4.0 * h[i] * h[j]
                )
                out[i, j] = out[j, i] = value
        return out

    return _richardson(estimate, levels)


def _jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Jacobian of an array-valued function, shape f(x).shape + (len(x),), Richardson-extrapolated."""
    base = _derivative_steps(x)

    def estimate(scale: float) -> np.ndarray:
        columns = []
        for i in range(len(x)):
            e_i = np.zeros(len(x))
            e_i[i] = base[i] * scale
            columns.append((f(x + e_i) - f(x - e_i)) / (2.0 * e_i[i]))
        return np.stack(columns, axis=-1)

    return _richardson(estimate)


def _satterthwaite_df(
    model: _ProfiledDeviance, theta: np.ndarray, sigma: float, REML: bool, unscaled: np.ndarray
) -> tuple[np.ndarray, str]:
    """Satterthwaite degrees of freedom for each fixed effect, as lmerTest.

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
    df : ndarray, shape (p,)
    method : str
        ``"Satterthwaite"``, or which coefficients fell back to ``n - p``.
    """
    varpar = np.append(theta, sigma)
    hessian = _hessian(lambda v: model.deviance_varpar(v[:-1], v[-1], REML), varpar)
    values, vectors = np.linalg.eigh(hessian)
    positive = values > _EIGEN_TOLERANCE
    # Asymptotic covariance of varpar: twice the pseudo-inverse of the deviance Hessian.
    cov_varpar = 2.0 * (vectors[:, positive] / values[positive]) @ vectors[:, positive].T
    jac_theta = _jacobian(lambda t: model.unscaled_covbeta(model.solve(t)), theta) * sigma**2
    jac = np.concatenate([jac_theta, (2.0 * sigma * unscaled)[..., None]], axis=-1)  # (p, p, m + 1)
    variance = sigma**2 * np.diag(unscaled)
    gradients = np.stack([jac[i, i, :] for i in range(len(variance))])  # (p, m + 1)
    denominator = np.einsum("ia,ab,ib->i", gradients, cov_varpar, gradients)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * variance**2 / denominator
    bad = ~(np.isfinite(df) & (denominator > 0))
    if not bad.any():
        return df, "Satterthwaite"
    residual = float(model.n - model.p)
    df[bad] = residual
    names = [term for term, flag in zip(model.fixed_terms, bad) if flag]
    return df, f"Satterthwaite (residual df n - p = {residual:g} for {', '.join(names)})"


# --------------------------------------------------------------------------------------------------
# Result tables
# --------------------------------------------------------------------------------------------------


def _coef_table(names, beta: np.ndarray, vcov: np.ndarray, df: np.ndarray) -> pd.DataFrame:
    """Fixed-effects table with t-based intervals and two-sided p-values on ``df``."""
    se = np.sqrt(np.diag(vcov))
    t_stat = beta / se
    half_width = stats.t.ppf(0.975, df) * se
    table = pd.DataFrame(
        {
            "Estimate": beta,
            "SE": se,
            "2.5_ci": beta - half_width,
            "97.5_ci": beta + half_width,
            "DF": df,
            "T-stat": t_stat,
            "P-val": 2.0 * stats.t.sf(np.abs(t_stat), df),
        },
        index=pd.Index(list(names)),
    )
    return table[_COEF_COLUMNS]


def _ranef_var(blocks, layout: _ThetaLayout, theta: np.ndarray, sigma: float) -> pd.DataFrame:
    """Variance and SD of each (block, term) pair, then the residual."""
    groups, names, variances = [], [], []
    for index, block in enumerate(blocks):
        T = layout.factor(theta, index)
        groups += [block.factor] * block.n_terms
        names += list(block.terms)
        variances += list(sigma**2 * np.sum(T * T, axis=1))  # diag(T T')
    groups.append("Residual")
    names.append("")
    variances.append(sigma**2)
    variances = np.asarray(variances)
    return pd.DataFrame(
        {"Name": names, "Var": variances, "Std": np.sqrt(variances)}, index=pd.Index(groups, name="group")
    )


def _ranef_corr(blocks, layout: _ThetaLayout, theta: np.ndarray) -> pd.DataFrame | None:
    """Within-block correlations, one row per pair of terms; None when no block has two terms."""
    groups, first, second, corr = [], [], [], []
    for index, block in enumerate(blocks):
        if block.n_terms < 2:
            continue
        T = layout.factor(theta, index)
        cov = T @ T.T
        sd = np.sqrt(np.diag(cov))
        for i in range(block.n_terms):
            for j in range(i + 1, block.n_terms):
                groups.append(block.factor)
                first.append(block.terms[i])
                second.append(block.terms[j])
                corr.append(cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan)
    if not groups:
        return None
    return pd.DataFrame({"IV1": first, "IV2": second, "Corr": corr}, index=pd.Index(groups, name="group"))


def _ranef_frames(design: Design, blocks_b: list[np.ndarray]) -> dict[str, pd.DataFrame]:
    """Conditional modes per factor; blocks on the same factor side by side in block order."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for block, b in zip(design.blocks, blocks_b):
        frame = pd.DataFrame(b, index=block.levels, columns=list(block.terms))
        frames.setdefault(block.factor, []).append(frame)
    return {factor: pd.concat(parts, axis=1) for factor, parts in frames.items()}


def _coef_frames(design: Design, beta: np.ndarray, blocks_b: list[np.ndarray]) -> dict[str, pd.DataFrame]:
    """lme4's ``coef()``: fixed estimates per group plus that group's deviations."""
    fixed = dict(zip(design.fixed_terms, beta))
    out: dict[str, pd.DataFrame] = {}
    for factor in design.factors:
        blocks = [(block, b) for block, b in zip(design.blocks, blocks_b) if block.factor == factor]
        levels = blocks[0][0].levels
        # lme4 puts random-only terms (fixed value 0) before the fixed terms.
        random_only = list(dict.fromkeys(t for block, _ in blocks for t in block.terms if t not in fixed))
        columns = random_only + list(design.fixed_terms)
        values = np.tile([fixed.get(name, 0.0) for name in columns], (len(levels), 1))
        for block, b in blocks:
            for j, term in enumerate(block.terms):
                values[:, columns.index(term)] += b[:, j]
        out[factor] = pd.DataFrame(values, index=levels, columns=columns)
    return out


def _by_factor(design: Design, frames: dict[str, pd.DataFrame]) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The single frame when the model has one grouping factor, else the dict in formula order."""
    ordered = {factor: frames[factor] for factor in design.factors}
    return next(iter(ordered.values())) if len(ordered) == 1 else ordered
