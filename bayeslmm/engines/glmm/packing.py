"""Packing: a GLMM as the flat arrays the kernel reads, its Laplace reference point, and draws mapped back.

:func:`laplace_reference` finds the joint mode of the fixed and group effects by penalized iteratively
reweighted least squares (PIRLS) at variance parameters refined by a few Laplace-EM steps, and returns
what the parametrization needs: the working weights at the mode, the pseudo-data of every level, and
the Laplace covariance of the fixed effects. None of it affects which posterior is sampled (any values
give an exact change of variables); it only decides how well the parametrization fits the posterior.

:func:`pack` turns design, priors, family and reference into the kernel's arrays;
:func:`posterior_from_draws` turns the sampled vectors into the posterior Dataset of the general model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr

from bayeslmm.engines.collapsed.packing import corr_matrices, prior_code, sd_forward, sd_inverse, sd_prior_row
from bayeslmm.engines.glmm.codes import (
    CLOGLOG,
    F_CAUCHY,
    F_NORMAL,
    F_STUDENT_T,
    GAUSSIAN,
    LOGIT,
    MODE_DRAW,
    MODE_GRAD,
    MODE_LOGP,
    NEGBIN,
    POISSON,
    PROBIT,
)
from bayeslmm.engines.native import evaluate_many
from bayeslmm.engines.posterior_names import dataset, var_names
from bayeslmm.spec.design import Design
from bayeslmm.spec.priors import ModelPriors, Prior

__all__ = [
    "Packed",
    "Reference",
    "pack",
    "laplace_reference",
    "family_code",
    "fixed_prior_code",
    "posterior_from_draws",
]

#: Laplace-EM steps on the variance parameters of the reference point.
EM_STEPS = 3
#: Smallest reference SD (link scale, per unit of the predictor's spread): keeps the linearization of
#: a level's likelihood at a sensible place when the maximum-likelihood SD is near zero.
MIN_REFERENCE_SD = 0.1


def family_code(family) -> int | None:
    """The kernel's code of a family and link; None when the kernel has no likelihood for it."""
    name, link = getattr(family, "name", None), family.link.name
    if name == "binomial":
        return {"logit": LOGIT, "probit": PROBIT, "cloglog": CLOGLOG}.get(link)
    if name == "poisson" and link == "log":
        return POISSON
    if name == "negbinomial" and link == "log":
        return NEGBIN
    if name == "gaussian" and link == "identity":
        return GAUSSIAN
    return None


#: Families with an auxiliary parameter sampled on the log scale: its name in the posterior.
AUX_NAMES = {NEGBIN: "dispersion", GAUSSIAN: "sigma"}


def fixed_prior_code(prior: Prior) -> tuple[int, float, float, float] | None:
    """(kind, a, b, c) of a fixed-effect prior for the kernel; None for distributions it lacks."""
    q = prior.resolved()
    d = prior.distribution
    if d == "Normal":
        mu, sd = prior.normal_moments()
        return F_NORMAL, mu, sd, 0.0
    if d == "StudentT":
        return F_STUDENT_T, q["nu"], q["mu"], q["sigma"] if "sigma" in q else q["lam"] ** -0.5
    if d == "Cauchy":
        return F_CAUCHY, q["alpha"], q["beta"], 0.0
    return None


@dataclass
class Reference:
    """The Laplace reference point: joint mode of the effects at refined variance parameters.

    Attributes
    ----------
    beta : ndarray, shape (p,)
        Centred fixed effects at the mode.
    ranef : list of ndarray, shape (G_j, k_j)
    cov : list of ndarray, shape (k_j, k_j)
        Block covariances after the Laplace-EM steps.
    weights : ndarray, shape (n,)
        Fisher weights at the mode (information of each row about its linear predictor).
    score : ndarray, shape (n,)
        d log-likelihood / d eta at the mode.
    cov_beta : ndarray, shape (p, p)
        Laplace covariance of the centred fixed effects, the group effects integrated out.
    dispersion : float
        The auxiliary parameter at the mode: negative binomial dispersion, gaussian sigma (1 for
        other families).
    precision : scipy.sparse.csc_matrix
        The penalized information ``U'WU + blockdiag(prior precision of beta, Sigma_j^{-1} (x) I)`` at
        the mode, columns ``[beta, block 0, block 1, ...]``: the precision of the Laplace approximation.
    """

    beta: np.ndarray
    ranef: list
    cov: list
    weights: np.ndarray
    score: np.ndarray
    cov_beta: np.ndarray
    dispersion: float
    precision: Any = None


@dataclass
class Packed:
    """The model as flat arrays for the kernel, plus what is needed to map draws back.

    Attributes
    ----------
    floats : list of ndarray
        ``y, trials, offset, X, Zv, H, c, A, cval, bhat, bref, beta_par, fixed_par, prior_par, eta_lkj, ytab``
        (``X``, ``Zv`` column-major).
    ints : list of ndarray
        ``gidx, meta``.
    n_dim : int
    x_offsets, z_offsets : list of int
        Offset of each block's log SDs and of its ``z`` in ``x`` (blocks in formula order).
    b_offsets : list of int
        Offset of each block's effects in ``b`` (laid out in :func:`processing_order`).
    aux_offset : int or None
        Offset of the log auxiliary parameter (negative binomial dispersion, gaussian sigma).
    init : ndarray, shape (n_dim,)
        The reference point in ``x``.
    reference : Reference
    sd_scales : list of list of float
        Per block and term, the scale of the SD's softplus transform (0: the SD is ``exp(x)``).
    """

    floats: list
    ints: list
    n_dim: int
    x_offsets: list
    z_offsets: list
    b_offsets: list
    aux_offset: int | None
    init: np.ndarray
    reference: Reference
    sd_scales: list

    def sds(self, xs: np.ndarray, block: int, k: int) -> np.ndarray:
        """SDs of block ``block`` (formula order) from unconstrained draws ``xs`` (..., n_dim)."""
        off = self.x_offsets[block]
        return np.stack([sd_forward(xs[..., off + t], self.sd_scales[block][t]) for t in range(k)], axis=-1)

    @property
    def arrays(self) -> tuple:
        """The arrays in the order the C functions read them: ``floats``, then ``ints``."""
        return tuple(self.floats + self.ints)

    @property
    def args(self) -> tuple:
        """Kernel arguments after ``(x, mode, grad, out)``: :attr:`arrays`, in the same order."""
        return self.arrays

    @property
    def n_out(self) -> int:
        """Length of ``(beta_c, b)``."""
        return int(self.floats[9].size + self.floats[6].size)

    def logp(self, x: np.ndarray) -> float:
        """Log posterior density at ``x`` (up to a constant)."""
        from bayeslmm.engines.glmm.kernels import evaluate  # numba: loaded on first use

        return evaluate(np.asarray(x, float), MODE_LOGP, np.zeros(self.n_dim), np.zeros(0), *self.args)

    def logp_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log density and its gradient, shape (n_dim,)."""
        from bayeslmm.engines.glmm.kernels import evaluate  # numba: loaded on first use

        grad = np.zeros(self.n_dim)
        value = evaluate(np.asarray(x, float), MODE_GRAD, grad, np.zeros(0), *self.args)
        return value, grad

    def effects(self, xs: np.ndarray) -> np.ndarray:
        """``(beta_c, b)`` of every row of ``xs`` (draws, n_dim), shape (draws, n_out)."""
        xs = np.ascontiguousarray(np.asarray(xs, float).reshape(-1, self.n_dim))
        outs = np.zeros((xs.shape[0], self.n_out))
        evaluate_many("glmm", self.arrays, MODE_DRAW, xs, outs, np.zeros((xs.shape[0], 0)),
                      np.empty(xs.shape[0]))
        return outs


# ----------------------------------------------------------------------------------- reference point
def _moments(family, code: int, y, trials, eta, r):
    """Fisher weights and d loglik / d eta per row at ``eta``."""
    if code == GAUSSIAN:
        return np.full(y.shape, 1.0 / r**2), (y - eta) / r**2
    if code in (POISSON, NEGBIN):
        mu = np.exp(np.minimum(eta, 700.0))
        if code == POISSON:
            return np.maximum(mu, 1e-10), y - mu
        factor = r / (r + mu)
        return np.maximum(mu * factor, 1e-10), (y - mu) * factor
    prob = np.clip(family.link.inverse(eta), 1e-12, 1.0 - 1e-12)
    mu_eta = np.maximum(family.link.mu_eta(eta), 1e-300)
    variance = prob * (1.0 - prob)
    weights = trials * mu_eta**2 / variance
    score = (y - trials * prob) * mu_eta / variance
    return np.maximum(weights, 1e-10), score


def _loglik_total(family, code: int, y, trials, eta, r) -> float:
    mu = family.inverse_link(eta)
    aux = {name: np.asarray(r) for name in family.aux}
    with np.errstate(all="ignore"):
        values = family.log_likelihood(y, mu, aux, trials=trials if code <= CLOGLOG else None)
    total = float(np.sum(values))
    return total if math.isfinite(total) else -math.inf


def _start_eta(code: int, y, trials, family) -> np.ndarray:
    if code == GAUSSIAN:
        return np.asarray(y, float).copy()
    if code in (POISSON, NEGBIN):
        return np.log(y + 0.5)
    return family.link((y + 0.5) / (trials + 1.0))


def _nb_dispersion(y, mu, r) -> float:
    """Maximum-likelihood NB dispersion given the means, by Newton steps on log r (bounded)."""
    from scipy.special import digamma, polygamma

    log_r = math.log(r)
    for _ in range(20):
        r = math.exp(log_r)
        one_q = r / (r + mu)
        d1 = float(np.sum(digamma(y + r) - digamma(r) + np.log(one_q) + 1.0 - (r + y) / (r + mu)))
        d2 = float(np.sum(polygamma(1, y + r) - polygamma(1, r) + 1.0 / r - 2.0 / (r + mu) + (r + y) / (r + mu) ** 2))
        g, h = r * d1, r * d1 + r * r * d2  # derivatives in log r
        step = -g / h if h < 0 else math.copysign(1.0, g)
        log_r = min(max(log_r + max(min(step, 2.0), -2.0), -4.0), 9.0)
        if abs(step) < 1e-6:
            break
    return math.exp(log_r)


def laplace_reference(design: Design, priors: ModelPriors, family) -> Reference:
    """Joint mode of the effects by PIRLS, at variance parameters from a few Laplace-EM steps.

    Fixed-effect priors enter as Gaussians (their location and scale), the group effects with the
    current block covariances; each EM step sets a block's covariance to the mean over its levels of
    ``b b' + (Sigma^{-1} + H_g)^{-1}``, with SDs kept above :data:`MIN_REFERENCE_SD` (per unit spread).
    """
    code = family_code(family)
    y = design.y
    trials = design.trials if design.trials is not None else np.ones_like(y)
    offset = design.offset_or_zero
    means, _ = design.fixed.centring()
    Xc = design.X - means
    n, p = Xc.shape
    blocks = design.blocks
    U = sp.hstack([sp.csc_matrix(Xc)] + [sp.csc_matrix(b.sparse()) for b in blocks], format="csr")
    q_sizes = [b.n_effects for b in blocks]
    prior_mean = np.zeros(p)
    prior_prec = np.zeros(p)
    for a, term in enumerate(design.fixed_terms):
        kind, x1, x2, x3 = fixed_prior_code(priors.fixed[term]) or (F_NORMAL, 0.0, 10.0, 0.0)
        loc, scale = (x1, x2) if kind in (F_NORMAL, F_CAUCHY) else (x2, x3)
        prior_mean[a], prior_prec[a] = loc, 1.0 / scale**2
    # the link scale is that of the response for gaussian models, O(1) for the others
    unit = (float(np.std(y)) or 1.0) if code == GAUSSIAN else 1.0
    floors = [np.array([MIN_REFERENCE_SD / (float(np.std(b.Z[:, t])) or 1.0) for t in range(b.n_terms)]) for b in blocks]
    cov = [np.diag(np.maximum(0.5 * unit, f) ** 2) for f in floors]
    r = {NEGBIN: 10.0, GAUSSIAN: 0.5 * unit}.get(code, 1.0)
    largest = int(np.argmax(q_sizes))
    lo = p + int(sum(q_sizes[:largest]))
    eliminate = (lo, lo + q_sizes[largest], blocks[largest].n_terms)
    gamma = None
    for step in range(EM_STEPS + 1):
        penalty = sp.block_diag(
            [sp.diags(prior_prec)] + [sp.kron(sp.identity(b.n_levels), sp.csr_matrix(np.linalg.inv(S))) for b, S in zip(blocks, cov)],
            format="csr",
        )
        center = np.concatenate([prior_mean, np.zeros(sum(q_sizes))])
        gamma = _pirls(family, code, U, penalty, center, y, trials, offset, r, gamma, eliminate)
        eta = offset + U @ gamma
        if code == NEGBIN:
            r = _nb_dispersion(y, np.exp(np.minimum(eta, 700.0)), r)
        elif code == GAUSSIAN:  # the residual SD at the mode, kept away from 0 (a perfect fit)
            r = max(float(np.sqrt(np.mean((y - eta) ** 2))), 1e-3 * unit)
        weights, score = _moments(family, code, y, trials, eta, r)
        if step == EM_STEPS:
            break
        start = p
        for j, block in enumerate(blocks):
            k, G = block.n_terms, block.n_levels
            b = gamma[start:start + G * k].reshape(G, k)
            start += G * k
            Hg = block.crossprod_per_level(weights)
            Vg = np.linalg.inv(np.linalg.inv(cov[j])[None] + Hg)
            S = (b.T @ b + Vg.sum(axis=0)) / G
            sd = np.maximum(np.sqrt(np.diag(S)), floors[j])
            corr = S / np.sqrt(np.outer(np.diag(S), np.diag(S)))
            corr = 0.9 * corr + 0.1 * np.eye(k)  # keep the reference away from singular correlations
            cov[j] = corr * np.outer(sd, sd)
    # Laplace covariance of the fixed effects: top-left block of the inverse of the penalized information
    M = (U.T @ sp.diags(weights) @ U + penalty).tocsc()
    if p:
        rhs = np.zeros((M.shape[0], p))
        rhs[:p, :p] = np.eye(p)
        solved = _Solver(M, *eliminate).solve(rhs)
        cov_beta = 0.5 * (solved[:p] + solved[:p].T)
    else:
        cov_beta = np.zeros((0, 0))
    ranef, start = [], p
    for block in blocks:
        ranef.append(gamma[start:start + block.n_effects].reshape(block.n_levels, block.n_terms))
        start += block.n_effects
    return Reference(gamma[:p].copy(), ranef, cov, weights, score, cov_beta, float(r), M)


#: Largest dense Schur complement of the reference point's linear systems; above it, sparse LU.
MAX_DENSE_REFERENCE = 4000
#: Systems up to this size are factorized densely as a whole.
MAX_DENSE_SMALL = 400


class _Solver:
    """Solves with a symmetric positive definite sparse ``M`` whose columns ``[lo, hi)`` are one block's
    levels (``k`` each, block diagonal in ``M``): those are eliminated level by level and the rest is a
    dense Cholesky of the Schur complement, as the collapsed sampler does. Sparse LU (symmetric mode)
    when that complement would be larger than :data:`MAX_DENSE_REFERENCE`."""

    def __init__(self, M, lo: int, hi: int, k: int):
        N = M.shape[0]
        self.lo, self.hi, self.N = lo, hi, N
        self.dense = None
        if N <= MAX_DENSE_SMALL:  # small systems: sparse bookkeeping would cost more than the algebra
            from scipy.linalg import cho_factor

            dense = M.toarray() if sp.issparse(M) else np.asarray(M)
            self.dense = cho_factor(0.5 * (dense + dense.T), lower=True)
            return
        M = sp.csr_matrix(M)
        self.rest = np.r_[0:lo, hi:N].astype(np.int64)
        if self.rest.size > MAX_DENSE_REFERENCE or hi <= lo:
            from scipy.sparse.linalg import splu

            self.lu = splu(sp.csc_matrix(M), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options={"SymmetricMode": True})
            return
        from scipy.linalg import cho_factor

        self.lu = None
        E = np.arange(lo, hi)
        G = (hi - lo) // k
        Mee = M[E][:, E].tocsr()
        blocks = np.empty((G, k, k))
        for a in range(k):
            for b in range(k):
                blocks[:, a, b] = np.asarray(Mee[a::k][:, b::k].diagonal()).ravel()
        inverse = np.linalg.inv(blocks)
        rows = (np.arange(G)[:, None, None] * k + np.arange(k)[None, :, None]).repeat(k, axis=2)
        cols = np.swapaxes(rows, 1, 2)
        self.Dinv = sp.csr_matrix((inverse.ravel(), (rows.ravel(), cols.ravel())), shape=(G * k, G * k))
        self.Mre = M[self.rest][:, E].tocsr()
        T = self.Mre @ self.Dinv
        S = M[self.rest][:, self.rest].toarray() - (T @ self.Mre.T).toarray()
        self.cho = cho_factor(0.5 * (S + S.T), lower=True)

    def solve(self, b: np.ndarray) -> np.ndarray:
        from scipy.linalg import cho_solve

        if self.dense is not None:
            return cho_solve(self.dense, np.asarray(b, dtype=float))
        if self.lu is not None:
            return self.lu.solve(b)

        b = np.asarray(b, dtype=float)
        b_e, b_r = b[self.lo:self.hi], b[self.rest]
        y_e = self.Dinv @ b_e
        x_r = cho_solve(self.cho, b_r - self.Mre @ y_e)
        x = np.empty_like(b)
        x[self.rest] = x_r
        x[self.lo:self.hi] = self.Dinv @ (b_e - self.Mre.T @ x_r)
        return x


def _pirls(family, code, U, penalty, center, y, trials, offset, r, gamma, eliminate, max_iter: int = 50, tol: float = 1e-8):
    """Mode of ``loglik(offset + U gamma) - (gamma - center)' penalty (gamma - center) / 2`` by Fisher scoring."""
    def objective(g):
        d = g - center
        return _loglik_total(family, code, y, trials, offset + U @ g, r) - 0.5 * float(d @ (penalty @ d))

    if gamma is None:  # a GLM-style start from the smoothed response
        eta = _start_eta(code, y, trials, family)
        weights, score = _moments(family, code, y, trials, eta, r)
        working = eta - offset + score / weights
        M = (U.T @ sp.diags(weights) @ U + penalty).tocsc()
        gamma = _Solver(M, *eliminate).solve(U.T @ (weights * working) + penalty @ center)
    current = objective(gamma)
    for _ in range(max_iter):
        eta = offset + U @ gamma
        weights, score = _moments(family, code, y, trials, eta, r)
        M = (U.T @ sp.diags(weights) @ U + penalty).tocsc()
        direction = _Solver(M, *eliminate).solve(U.T @ score - penalty @ (gamma - center))
        step = 1.0
        while True:
            trial = gamma + step * direction
            value = objective(trial)
            if value >= current - 1e-10 or step < 1e-4:
                break
            step *= 0.5
        gamma, improved = trial, value - current
        current = value
        if np.max(np.abs(step * direction)) < tol or abs(improved) < 1e-10 * (1.0 + abs(current)):
            break
    return gamma


# ----------------------------------------------------------------------------------- packing
#: Largest dense intermediate (entries) when a block's reference is marginalized over the blocks after it.
MAX_SCHUR_ENTRIES = 20_000_000
#: Most coupling entries kept per block (the largest in magnitude), relative to the number of rows.
MAX_COUPLING_PER_ROW = 4


def processing_order(design: Design) -> list[int]:
    """Blocks in the order the parametrization conditions them: fewest effects first, so that the
    largest block (e.g. subjects, or one level per row) is the exact conditional given all others."""
    return sorted(range(len(design.blocks)), key=lambda j: (design.blocks[j].n_effects, j))


def _conditional_reference(Q, p: int, starts: list, sizes: list, order: list, pos: int, k: int, k_last: int):
    """Per-level precision and coupling of block ``order[pos]`` in the Laplace approximation, given the
    fixed effects and the blocks before it, marginal over the blocks after it.

    Returns ``level_S`` (G, k, k), the diagonal blocks of that precision; ``A`` (q_m, p), the coupling
    to the fixed effects; and ``C`` (q_m, q_earlier), sparse, the coupling to the earlier blocks in
    processing order. When the marginalization's dense intermediates would exceed
    :data:`MAX_SCHUR_ENTRIES`, the block is conditioned on the later blocks at the reference instead
    (still an exact map, only a looser fit).
    """
    j = order[pos]
    m = np.arange(starts[j], starts[j] + sizes[j])
    earlier = [np.arange(starts[e], starts[e] + sizes[e]) for e in order[:pos]]
    later = [np.arange(starts[e], starts[e] + sizes[e]) for e in order[pos + 1:]]
    given = np.concatenate([np.arange(p)] + earlier).astype(np.int64)
    Qm = Q[m].tocsc()
    G = m.size // k
    level_S = np.empty((G, k, k))
    Qmm = Qm[:, m].tocsr()
    for a in range(k):
        for b in range(k):
            level_S[:, a, b] = np.asarray(Qmm[a::k][:, b::k].diagonal()).ravel()
    C = Qm[:, given].tocsr()
    if later:
        later = np.concatenate(later)
        if later.size * (m.size + given.size) <= MAX_SCHUR_ENTRIES:
            rhs = Q[later][:, np.concatenate([m, given])].toarray()
            last = sizes[order[-1]]  # the largest block, last in processing order: eliminated level by level
            solved = _Solver(Q[later][:, later], later.size - last, later.size, k_last).solve(rhs)
            cross = Qm[:, later].tocsr()
            solved_m = solved[:, :m.size]
            for a in range(k):  # only the per-level diagonal blocks of cross @ solved_m
                rows = cross[a::k]
                for b in range(k):
                    level_S[:, a, b] -= np.asarray(rows.multiply(solved_m[:, b::k].T).sum(axis=1)).ravel()
            C = sp.csr_matrix(C.toarray() - cross @ solved[:, m.size:])
    A = np.asarray(C[:, :p].toarray())
    return level_S, A, C[:, p:].tocsr()


def pack(design: Design, priors: ModelPriors, family) -> Packed:
    """The kernel's arrays (everything that touches the ``n`` rows is laid out once).

    BLAS runs on one thread meanwhile: the dense factorizations here are small, and a multi-threaded
    OpenBLAS on a busy machine was measured 50-100x slower on them.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency
        return _pack(design, priors, family)
    with threadpool_limits(1):
        return _pack(design, priors, family)


def _pack(design: Design, priors: ModelPriors, family) -> Packed:
    code = family_code(family)
    ref = laplace_reference(design, priors, family)
    y = np.asarray(design.y, float)
    trials = np.asarray(design.trials, float) if design.trials is not None else np.ones_like(y)
    offset = design.offset_or_zero.astype(float)
    means, _ = design.fixed.centring()
    Xc = design.X - means
    n, p = Xc.shape
    blocks = design.blocks
    J = len(blocks)
    order = processing_order(design)
    sizes = [b.n_effects for b in blocks]
    starts = list(p + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int))
    Zv = np.hstack([blocks[j].Z for j in order])
    gidx = np.stack([blocks[j].group_index for j in order])
    values, counts = np.unique(y, return_counts=True) if code == NEGBIN else (np.zeros(0), np.zeros(0))

    x_offsets = [0] * J
    xoff = p
    for j in order:
        x_offsets[j] = xoff
        xoff += blocks[j].n_theta
    aux_offset = xoff if code in AUX_NAMES else None
    zoff = xoff + (1 if code in AUX_NAMES else 0)
    H_parts, c_parts, A_parts, bref_parts = [], [], [], []
    cptr, ccol, cval = [0], [], []
    prior_rows, meta_blocks, z_offsets, b_offsets = [], [], [0] * J, [0] * J
    hoff = coff = kcol = 0
    for pos, j in enumerate(order):
        block = blocks[j]
        k, G = block.n_terms, block.n_levels
        level_S, A_block, C = _conditional_reference(ref.precision, p, starts, sizes, order, pos, k,
                                                     blocks[order[-1]].n_terms)
        Hg = level_S - np.linalg.inv(ref.cov[j])[None]
        Hg = 0.5 * (Hg + np.swapaxes(Hg, 1, 2))
        bhat = ref.ranef[j]
        c = np.einsum("gij,gj->gi", level_S, bhat)
        H_parts.append(Hg.reshape(-1))
        c_parts.append(c.reshape(-1))
        A_parts.append(np.ascontiguousarray(A_block).reshape(-1))
        bref_parts.append(bhat.reshape(-1))
        _coupling(C, level_S, cptr, ccol, cval, n)
        z_offsets[j] = zoff
        b_offsets[j] = coff
        in_map = int(G * k * p <= max(n, MIN_MAP_WORK))
        meta_blocks += [k, G, x_offsets[j], zoff, len(prior_rows), hoff, coff, kcol, in_map]
        prior_rows += [sd_prior_row(priors.group_sd[block.name][t]) for t in block.terms]
        zoff += G * k
        hoff += G * k * k
        coff += G * k
        kcol += k
    aux_row = -1
    if code in AUX_NAMES:
        aux_row = len(prior_rows)
        prior_rows.append(prior_code(priors.aux[AUX_NAMES[code]]) + (0.0,))
    n_dim = zoff
    fixed_par = np.array([fixed_prior_code(priors.fixed[t]) for t in design.fixed_terms], dtype=float).reshape(-1)
    beta_par = _fixed_map(ref, [ref.cov[j] for j in order], _cat(H_parts), _cat(A_parts), _cat(bref_parts), meta_blocks, p)
    eta_lkj = np.array([priors.eta.get(blocks[j].name, 1.0) for j in order], dtype=float)
    meta = [n, p, J, code, n_dim, -1 if aux_offset is None else aux_offset, Zv.shape[1], aux_row] + meta_blocks
    floats = [
        y, trials, offset, Xc.T.reshape(-1), Zv.T.reshape(-1), _cat(H_parts), _cat(c_parts), _cat(A_parts),
        np.array(cval, dtype=float), ref.beta, _cat(bref_parts), beta_par, fixed_par,
        np.array(prior_rows, dtype=float).reshape(-1), eta_lkj, np.concatenate([values, counts]).astype(float),
    ]
    ints = [gidx.reshape(-1), np.array(cptr), np.array(ccol), np.array(meta)]
    # fresh, writeable, C-contiguous copies: a read-only array (pandas' copy-on-write hands those
    # out) would be another numba type, compiled again for ~20 s on the first fit
    floats = [np.array(a, dtype=np.float64, order="C") for a in floats]
    ints = [np.array(a, dtype=np.int64, order="C") for a in ints]
    init = np.zeros(n_dim)
    for block, off, S in zip(blocks, x_offsets, ref.cov):
        scales = [sd_prior_row(priors.group_sd[block.name][t])[3] for t in block.terms]
        init[off:off + block.n_terms] = [sd_inverse(s, a) for s, a in zip(np.sqrt(np.diag(S)), scales)]
    if aux_offset is not None:
        init[aux_offset] = math.log(ref.dispersion)
    sd_scales = [[sd_prior_row(priors.group_sd[b.name][t])[3] for t in b.terms] for b in blocks]
    return Packed(floats, ints, n_dim, x_offsets, z_offsets, b_offsets, aux_offset, init, ref, sd_scales)


#: A block's SDs enter the fixed effects' map when its levels' share of that work (G k p^2 per evaluation)
#: is at most that of the rows (n p), or below this many multiply-adds; otherwise its part of the map is
#: held at the reference (blocks with about one level per row: their SDs barely move the fixed effects).
MIN_MAP_WORK = 2000
#: Smallest eigenvalue of the fixed effects' map precision S(theta) relative to the reference's, whatever
#: the variance parameters (see :func:`_fixed_map`).
MIN_PRECISION_RATIO = 1e-4


def _fixed_map(ref: Reference, order_cov: list, H, A, bref, meta_blocks: list, p: int) -> np.ndarray:
    """``S0``, ``delta0`` and ``lam`` of the fixed effects' map (the kernel's ``beta_par``).

    Given the variance parameters, the fixed effects are ``beta = bhat + S^{-1} lam delta + Lb^{-T} w``
    with ``S = Lb Lb' = S0 - lam K``, ``K = sum_g A_g' M_g^{-1} A_g``, ``delta = delta0 - sum_g A_g'
    M_g^{-1} c_g`` and ``M_g = Sigma^{-1} + H_g``: with one block and ``lam = 1``, the Laplace marginal of
    the fixed effects at those variance parameters. ``S0 = S_ref + lam K_ref`` makes ``S`` the exact
    marginal precision ``S_ref`` at the reference; as every ``M_g^{-1}`` grows with the block's
    covariance, ``K <= K_inf = sum_g A_g' H_g^+ A_g``, and ``lam`` (at most 1) keeps
    ``S >= MIN_PRECISION_RATIO S_ref`` for all variance parameters, so the map is always defined.
    Only blocks marked for the map (``meta`` flag, see :data:`MIN_MAP_WORK`) enter ``K`` and ``delta``;
    the others' part stays in ``S_ref``.
    """
    if p == 0:
        return np.zeros(1)
    S_ref = np.linalg.inv(ref.cov_beta)
    S_ref = 0.5 * (S_ref + S_ref.T)
    K_ref = np.zeros((p, p))
    K_inf = np.zeros((p, p))
    delta0 = np.zeros(p)
    for pos in range(len(meta_blocks) // 9):
        k, G, hoff, coff, in_map = (meta_blocks[9 * pos + i] for i in (0, 1, 5, 6, 8))
        if not in_map:
            continue
        Hg = H[hoff:hoff + G * k * k].reshape(G, k, k)
        Ag = A[coff * p:(coff + G * k) * p].reshape(G, k, p)
        bg = bref[coff:coff + G * k].reshape(G, k)
        M = np.linalg.inv(order_cov[pos])[None] + Hg
        K_ref += np.einsum("gkp,gkl,glq->pq", Ag, np.linalg.inv(M), Ag)
        K_inf += np.einsum("gkp,gkl,glq->pq", Ag, np.linalg.pinv(Hg, hermitian=True), Ag)
        delta0 += np.einsum("gkp,gk->p", Ag, bg)
    L = np.linalg.cholesky(S_ref)
    Li = np.linalg.inv(L)
    growth = Li @ (K_inf - K_ref) @ Li.T
    top = float(np.linalg.eigvalsh(0.5 * (growth + growth.T))[-1])
    lam = 1.0 if top <= 1.0 - MIN_PRECISION_RATIO else (1.0 - MIN_PRECISION_RATIO) / top
    S0 = S_ref + lam * K_ref
    return np.concatenate([S0.reshape(-1), delta0, [lam]])


def _coupling(C, level_S: np.ndarray, cptr: list, ccol: list, cval: list, n: int) -> None:
    """Append the coupling rows of one block (sparse ``C``) to the CSR lists, dropping negligible entries.

    An entry is kept when it moves the row's conditional mean by at least 1e-4 per unit of the earlier
    effect (``|C| / S_tt``), and at most ``MAX_COUPLING_PER_ROW n`` entries per block, the largest.
    Dropping entries changes only how well the parametrization fits, never the posterior.
    """
    C = sp.csr_matrix(C)
    C.sort_indices()
    diag = np.einsum("gii->gi", level_S).reshape(-1)
    rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
    size = np.abs(C.data) / diag[rows]
    keep = size >= 1e-4
    budget = MAX_COUPLING_PER_ROW * n
    if keep.sum() > budget:
        keep &= size >= np.partition(size[keep], -budget)[-budget]
    counts = np.bincount(rows[keep], minlength=C.shape[0])
    ccol.extend(C.indices[keep].tolist())
    cval.extend(C.data[keep].tolist())
    cptr.extend((cptr[-1] + np.cumsum(counts)).tolist())


def _cat(parts: list) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


# ----------------------------------------------------------------------------------- draws -> posterior
def posterior_from_draws(packed: Packed, design: Design, family, xs: np.ndarray) -> xr.Dataset:
    """The posterior Dataset of the general model from sampled vectors ``xs`` (chains, draws, n_dim)."""
    chains, n_draws, _ = xs.shape
    shape = (chains, n_draws)
    outs = packed.effects(xs)
    p = design.X.shape[1]
    beta = design.fixed.uncentre(outs[:, :p])
    coords: dict[str, Any] = {"chain": np.arange(chains), "draw": np.arange(n_draws), "fixed_term": list(design.fixed_terms)}
    data = {"beta": (("chain", "draw", "fixed_term"), beta.reshape(*shape, p))}
    if packed.aux_offset is not None:
        data[AUX_NAMES[family_code(family)]] = (("chain", "draw"), np.exp(xs[..., packed.aux_offset]))
    for j, (block, off, start) in enumerate(zip(design.blocks, packed.x_offsets, packed.b_offsets)):
        names, k, G = var_names(block), block.n_terms, block.n_levels
        coords[names["level"]] = list(block.levels)
        coords[names["term"]] = list(block.terms)
        data[names["sd"]] = (("chain", "draw", names["term"]), packed.sds(xs, j, k))
        if k > 1:
            coords[names["term_"]] = list(block.terms)
            corr = corr_matrices(xs[..., off + k:off + k + k * (k - 1) // 2], k)
            data[names["corr"]] = (("chain", "draw", names["term"], names["term_"]), corr)
        ranef = outs[:, p + start:p + start + G * k].reshape(*shape, G, k)
        data[names["ranef"]] = (("chain", "draw", names["level"], names["term"]), ranef)
    return dataset(data, coords)
