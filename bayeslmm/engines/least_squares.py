"""Least-squares references: complete pooling (one regression) and no pooling (one per group).

For a mixed model's factor ``g``, no pooling gives every term that varies by ``g`` its own coefficient
per level and estimates the other fixed terms once, in one fit: the limit of the mixed model as the
group variances grow without bound. With ``(Days | Subject)`` this is a separate regression per subject
(lme4's ``lmList``); with ``(1 | Subject)`` one intercept per subject and a common ``Days`` slope.
Coefficients that the data cannot identify are NaN, as R's ``lm`` reports aliased ones.

Gaussian models are fitted by ordinary least squares. Binomial, Poisson and negative binomial models
are generalized linear models fitted by maximum likelihood with iteratively reweighted least squares
(R's ``glm.fit``): every step is the weighted least-squares fit above, on the working response, with the
GLM weights of the current linear predictor (:func:`glm_working`). The negative binomial's dispersion
alternates with the coefficients, as ``MASS::glm.nb``. A group whose responses are all 0 (or, for a
binomial, all successes) has no finite estimate of its own coefficients; they are NaN, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family

__all__ = [
    "least_squares",
    "complete_pooling",
    "no_pooling",
    "group_least_squares",
    "GlmWorking",
    "GlmFit",
    "glm_working",
    "glm",
]

# Fitted means are kept this far from the edges of their range, as R's binomial and poisson families.
_EPS = np.finfo(float).eps
# IRLS stops when the deviance changes by less than this, relative (R's glm.control uses 1e-8).
_IRLS_TOLERANCE = 1e-10
_IRLS_MAX_ITERATIONS = 100


def least_squares(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS coefficients, shape (p,), with NaN for columns aliased with earlier ones (as R's ``lm``)."""
    from scipy import linalg

    if X.shape[1] == 0:
        return np.zeros(0)
    _, r, pivot = linalg.qr(X, mode="economic", pivoting=True)
    diagonal = np.abs(np.diag(r))
    tolerance = diagonal[0] * max(X.shape) * np.finfo(float).eps * 10 if diagonal.size and diagonal[0] > 0 else np.inf
    kept = np.sort(pivot[: int(np.sum(diagonal > tolerance))])
    coef = np.full(X.shape[1], np.nan)
    if kept.size:
        coef[kept] = np.linalg.lstsq(X[:, kept], y, rcond=None)[0]
    return coef


def complete_pooling(design: Design, family: Family | None = None) -> pd.Series:
    """One regression of the response on the fixed part ``X``, indexed by fixed term (NaN for aliased columns).

    OLS for a gaussian model (``family`` None or gaussian), else the maximum-likelihood GLM (:func:`glm`)
    with the design's trials and offset; coefficients on the link scale.
    """
    if _is_gaussian(family):
        coef = least_squares(design.X, design.y)
    else:
        coef = glm(design.X, design.y, family, design.trials, design.offset).coef
    return pd.Series(coef, index=pd.Index(design.fixed_terms, name="term"), name="complete_pooling")


def _is_gaussian(family: Family | None) -> bool:
    return family is None or family.name == "gaussian"


def no_pooling(design: Design, factor: str | None = None, family: Family | None = None) -> pd.DataFrame:
    """No-pooling coefficients of every level of ``factor`` (see the module docstring).

    Parameters
    ----------
    design : Design
    factor : str, optional
        The grouping factor; the formula's first by default.
    family : Family, optional
        Gaussian (default): least squares. Otherwise one GLM with each group's own coefficients for the
        terms that vary by ``factor`` (link scale).

    Returns
    -------
    pandas.DataFrame, shape (G, number of terms)
        Indexed by the factor's levels; columns as lme4's ``coef()``: group-only terms first, then the
        fixed terms (common terms repeat their single estimate). Coefficients a group cannot identify
        (fewer rows than its terms, or a constant predictor) are NaN, with a warning.

    Raises
    ------
    DataError
        The design has no grouping factor, or ``factor`` is not one of them.
    """
    factor = design.random.resolve_factor(factor)
    blocks = design.blocks_of(factor)
    varying_terms, columns = [], []
    for block in blocks:
        for j, term in enumerate(block.terms):
            if term not in varying_terms:
                varying_terms.append(term)
                columns.append(block.Z[:, j])
    common = [j for j, term in enumerate(design.fixed_terms) if term not in varying_terms]
    group_only = [term for term in varying_terms if term not in design.fixed_terms]
    levels = blocks[0].levels
    V, C, codes = np.column_stack(columns), design.X[:, common], blocks[0].group_index
    if _is_gaussian(family):
        varying, common_coef = group_least_squares(design.y, V, C, codes, len(levels))
        reason = "too few rows or a predictor constant within the group"
    else:
        varying, common_coef = _group_glm(design, V, C, codes, len(levels), family)
        reason = "too few rows, a predictor constant within the group, or every response 0 (or every trial a success)"
    frame = pd.DataFrame(varying, index=levels, columns=varying_terms)
    for j, position in enumerate(common):
        frame[design.fixed_terms[position]] = common_coef[j]
    unidentified = frame.index[frame[varying_terms].isna().any(axis=1)]
    if len(unidentified):
        warnings.warn(
            f"no pooling: {len(unidentified)} group(s) of {factor!r} cannot identify their own "
            f"{', '.join(varying_terms)} ({reason}); their no-pooling estimates are NaN: "
            f"{', '.join(map(str, unidentified))}",
            UserWarning,
            stacklevel=3,
        )
    return frame[group_only + list(design.fixed_terms)]


def group_least_squares(
    y: np.ndarray, V: np.ndarray, C: np.ndarray, codes: np.ndarray, G: int
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``y`` on group-specific columns ``V`` and common columns ``C``.

    The common coefficients come from the within-group residuals of ``y`` and ``C`` on ``V``
    (Frisch-Waugh-Lovell), the group coefficients from each group's regression of ``y - C b`` on ``V``.

    Parameters
    ----------
    y : ndarray, shape (n,)
    V : ndarray, shape (n, k)
    C : ndarray, shape (n, c)
    codes : ndarray of int, shape (n,)
        Group of each row, in ``0 .. G-1``.
    G : int

    Returns
    -------
    varying : ndarray, shape (G, k)
        NaN for groups whose ``V`` rows have rank below ``k``.
    common : ndarray, shape (c,)
        NaN for aliased columns.
    """
    rows_of = [np.flatnonzero(codes == g) for g in range(G)]
    common = np.zeros(C.shape[1])
    if C.shape[1]:
        y_within, C_within = y.copy(), C.copy()
        for rows in rows_of:
            target = np.column_stack([y[rows], C[rows]])
            fitted = V[rows] @ np.linalg.lstsq(V[rows], target, rcond=None)[0]
            y_within[rows], C_within[rows] = (target - fitted)[:, 0], (target - fitted)[:, 1:]
        common = least_squares(C_within, y_within)
    adjusted = y - C @ np.nan_to_num(common)
    varying = np.full((G, V.shape[1]), np.nan)
    for g, rows in enumerate(rows_of):
        if len(rows) >= V.shape[1] and np.linalg.matrix_rank(V[rows]) == V.shape[1]:
            varying[g] = np.linalg.lstsq(V[rows], adjusted[rows], rcond=None)[0]
    return varying, common


# ----------------------------------------------------------------------------------------- GLMs
@dataclass(frozen=True)
class GlmWorking:
    """A GLM at one linear predictor: what one IRLS step (and the Laplace engine's PIRLS) needs.

    Attributes
    ----------
    mu : ndarray, shape (n,)
        Mean on the family's scale (a probability for binomial), kept inside its range by machine epsilon.
    weights : ndarray, shape (n,)
        GLM (Fisher) weights ``(dm / deta)^2 / Var(y)``, with ``m`` the mean of ``y`` (trials x ``mu``).
    residual : ndarray, shape (n,)
        Working residuals ``(y - m) / (dm / deta)``.
    log_lik : ndarray, shape (n,)
        ``log p(y_i | eta_i)``, the full density.
    """

    mu: np.ndarray
    weights: np.ndarray
    residual: np.ndarray
    log_lik: np.ndarray


def glm_working(
    family: Family, eta: np.ndarray, y: np.ndarray, trials: np.ndarray | None = None, aux: dict | None = None
) -> GlmWorking:
    """Mean, GLM weights, working residuals and log-likelihood of ``y`` at the linear predictor ``eta``.

    Parameters
    ----------
    family : Family
    eta : ndarray, shape (n,)
        Offset included.
    y : ndarray, shape (n,)
        As the family encodes it (successes for binomial).
    trials : ndarray, shape (n,), optional
        Binomial trials.
    aux : dict, optional
        The family's auxiliary parameters as floats (the negative binomial's ``dispersion``).
    """
    aux = aux or {}
    link = family.link
    mu = link.inverse(eta)
    mu = np.clip(mu, _EPS, 1.0 - _EPS) if family.name == "binomial" else np.maximum(mu, _EPS)
    n = 1.0 if trials is None else trials
    dm_deta = n * np.maximum(link.mu_eta(eta), _EPS)
    weights = dm_deta**2 / family.variance(mu, aux, trials)
    residual = (y - n * mu) / dm_deta
    return GlmWorking(mu, weights, residual, family.log_likelihood(y, mu, aux, trials=trials))


@dataclass(frozen=True)
class GlmFit:
    """A maximum-likelihood GLM fit.

    Attributes
    ----------
    coef : ndarray, shape (p,)
        Link-scale coefficients; NaN for aliased columns.
    aux : dict of str to float
        The negative binomial's ``dispersion``; empty otherwise.
    log_lik : float
    converged : bool
    """

    coef: np.ndarray
    aux: dict
    log_lik: float
    converged: bool


def glm(
    X: np.ndarray,
    y: np.ndarray,
    family: Family,
    trials: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> GlmFit:
    """Maximum-likelihood GLM by IRLS, as R's ``glm`` (``MASS::glm.nb`` for the negative binomial).

    Parameters
    ----------
    X : ndarray, shape (n, p)
    y : ndarray, shape (n,)
    family : Family
        Binomial, Poisson or negative binomial (a gaussian family gives OLS).
    trials, offset : ndarray, shape (n,), optional

    Returns
    -------
    GlmFit
    """
    X = np.asarray(X, dtype=float)

    def fit(weights: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        root = np.sqrt(weights)
        coef = least_squares(X * root[:, None], z * root)
        return coef, X @ np.nan_to_num(coef)

    return _fit_glm(fit, y, family, trials, offset)


def _group_glm(
    design: Design, V: np.ndarray, C: np.ndarray, codes: np.ndarray, G: int, family: Family
) -> tuple[np.ndarray, np.ndarray]:
    """One GLM with group-specific columns ``V`` and common columns ``C`` (see :func:`group_least_squares`).

    Rows of groups that cannot identify their own coefficients (fewer rows than columns of ``V``, a
    rank-deficient ``V``, or responses all 0 or all successes) are left out; their coefficients are NaN.
    """
    y, trials = design.y, design.trials
    sizes = np.bincount(codes, minlength=G)
    degenerate = np.bincount(codes, weights=(y == 0).astype(float), minlength=G) == sizes
    if trials is not None:  # a binomial group needs a failure and a success
        degenerate |= np.bincount(codes, weights=(y == trials).astype(float), minlength=G) == sizes
    identified = np.array(
        [not degenerate[g] and np.linalg.matrix_rank(V[codes == g]) == V.shape[1] for g in range(G)]
    )
    rows = identified[codes]
    Vr, Cr, cr = V[rows], C[rows], codes[rows]

    def fit(weights: np.ndarray, z: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        root = np.sqrt(weights)
        varying, common = group_least_squares(z * root, Vr * root[:, None], Cr * root[:, None], cr, G)
        eta = np.einsum("nk,nk->n", Vr, np.nan_to_num(varying[cr])) + Cr @ np.nan_to_num(common)
        return (varying, common), eta

    offset = None if design.offset is None else design.offset[rows]
    result = _fit_glm(fit, y[rows], family, None if trials is None else trials[rows], offset)
    varying, common = result.coef
    varying[~identified] = np.nan
    return varying, common


def _fit_glm(
    fit: Callable[[np.ndarray, np.ndarray], tuple],
    y: np.ndarray,
    family: Family,
    trials: np.ndarray | None,
    offset: np.ndarray | None,
) -> GlmFit:
    """IRLS with ``fit(weights, working response) -> (coef, X coef)``; the dispersion alternates (NB)."""
    offset = np.zeros(len(y)) if offset is None else offset
    if "dispersion" not in family.aux:
        coef, _, log_lik, converged = _irls(fit, y, family, trials, offset, {})
        return GlmFit(coef, {}, log_lik, converged)
    from bayeslmm.spec.families import get_family

    # MASS::glm.nb: a Poisson fit, then the dispersion's ML estimate and the coefficients in turn
    coef, eta, log_lik, converged = _irls(fit, y, get_family("poisson"), None, offset, {})
    size = _dispersion_ml(family, y, np.exp(eta))
    for _ in range(25):
        coef, eta, log_lik, converged = _irls(fit, y, family, None, offset, {"dispersion": size}, start=eta)
        previous, size = size, _dispersion_ml(family, y, np.exp(eta))
        if abs(np.log(size / previous)) < 1e-8:
            break
    log_lik = float(family.log_likelihood(y, np.exp(eta), {"dispersion": size}).sum())
    return GlmFit(coef, {"dispersion": size}, log_lik, converged)


def _irls(fit, y, family: Family, trials, offset, aux: dict, start: np.ndarray | None = None):
    """Iteratively reweighted least squares with step halving; returns coef, eta, log_lik, converged."""
    if start is None:
        if family.name == "binomial":
            n = np.ones_like(y) if trials is None else trials
            start = family.link((y + 0.5) / (n + 1.0))  # R's binomial()$initialize
        else:
            start = family.link(y + 0.1)
    eta = start
    working = glm_working(family, eta, y, trials, aux)
    deviance = -2.0 * working.log_lik.sum()
    coef, converged = None, False
    for _ in range(_IRLS_MAX_ITERATIONS):
        new_coef, linear = fit(working.weights, eta - offset + working.residual)
        new_eta = linear + offset
        for _ in range(30):
            trial = glm_working(family, new_eta, y, trials, aux)
            new_deviance = -2.0 * trial.log_lik.sum()
            if np.isfinite(new_deviance) and (coef is None or new_deviance <= deviance + 1e-12 * abs(deviance)):
                break
            new_eta = 0.5 * (new_eta + eta)
            new_coef = _halfway(new_coef, coef)
        change = abs(new_deviance - deviance) / (abs(new_deviance) + 0.1)
        coef, eta, working, deviance = new_coef, new_eta, trial, new_deviance
        if change < _IRLS_TOLERANCE:
            converged = True
            break
    return coef, eta, -0.5 * deviance, converged


def _halfway(new, old):
    """The midpoint of two coefficient sets (arrays, or tuples of arrays)."""
    if isinstance(new, tuple):
        return tuple(_halfway(a, b) for a, b in zip(new, old))
    return 0.5 * (new + old)


def _dispersion_ml(family: Family, y: np.ndarray, mu: np.ndarray) -> float:
    """Maximum-likelihood negative binomial dispersion at fixed means (``MASS::theta.ml``)."""
    from scipy import optimize

    def negative(log_size: float) -> float:
        return -float(family.log_likelihood(y, mu, {"dispersion": np.exp(log_size)}).sum())

    result = optimize.minimize_scalar(negative, bounds=(-10.0, 15.0), method="bounded", options={"xatol": 1e-10})
    return float(np.exp(result.x))
