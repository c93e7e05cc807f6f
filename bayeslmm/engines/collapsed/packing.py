"""Packing: a Gaussian mixed model as the flat arrays the collapsed kernels read, and draws mapped back.

:func:`pack` computes everything that touches the ``n`` rows once (``U'U``, ``U'r``, ``r'r`` with
``U = [X_c, Z]``), so that a log-density evaluation costs nothing that grows with ``n``.
:func:`posterior_from_theta` turns draws of the variance parameters into the posterior Dataset of the
general model (``beta``, ``sigma``, ``sd_*``, ``corr_*``, ``ranef_*``), drawing the fixed and group effects
from their exact conditional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr

from bayeslmm.engines.collapsed.codes import (
    EXPONENTIAL,
    GAMMA,
    HALF_CAUCHY,
    HALF_FLAT,
    HALF_NORMAL,
    HALF_STUDENT_T,
    INV_GAMMA,
    LOG_NORMAL,
    MODE_DRAW,
    MODE_GRAD,
    MODE_LOGP,
    WEIBULL,
)
from bayeslmm.engines.native import evaluate_many
from bayeslmm.engines.posterior_names import dataset, var_names
from bayeslmm.spec.design import Design
from bayeslmm.spec.priors import ModelPriors, Prior

__all__ = ["Packed", "pack", "prior_code", "unpack_theta", "posterior_from_theta", "corr_matrices"]


# ----------------------------------------------------------------------------------- priors
def prior_code(prior: Prior) -> tuple[int, float, float] | None:
    """(kind, a, b) of a positive prior for the kernel's ``_positive_logp``; None when it has no code."""
    if prior.distribution == "HalfFlat":
        return HALF_FLAT, 0.0, 0.0
    q = prior.resolved()
    d = prior.distribution
    if d == "HalfNormal":
        return HALF_NORMAL, q["sigma"] if "sigma" in q else q["tau"] ** -0.5, 0.0
    if d == "HalfStudentT":
        return HALF_STUDENT_T, q["nu"], q["sigma"] if "sigma" in q else q["lam"] ** -0.5
    if d == "HalfCauchy":
        return HALF_CAUCHY, q["beta"], 0.0
    if d == "Exponential":
        return EXPONENTIAL, q["lam"] if "lam" in q else 1.0 / q["scale"], 0.0
    if d == "Gamma":
        if "alpha" in q:
            return GAMMA, q["alpha"], q["beta"]
        return GAMMA, q["mu"] ** 2 / q["sigma"] ** 2, q["mu"] / q["sigma"] ** 2
    if d == "InverseGamma" and "alpha" in q:
        return INV_GAMMA, q["alpha"], q["beta"]
    if d == "LogNormal":
        return LOG_NORMAL, q["mu"], q["sigma"] if "sigma" in q else q["tau"] ** -0.5
    if d == "Weibull":
        return WEIBULL, q["alpha"], q["beta"]
    return None


# SD priors whose upper tail is light (log density falling at least linearly in the SD) get SDs
# ``scale * softplus(x)`` (see ``kernels._sd_transform``; both samplers use it); the others ``exp(x)``.
def sd_prior_row(prior: Prior) -> tuple[float, float, float, float]:
    """``(kind, a, b, scale)``: the kernel's prior code and the scale of the SD's transform (0: exp)."""
    kind, a, b = prior_code(prior)
    d = prior.distribution
    scale = 0.0
    if d == "HalfNormal":
        scale = a
    elif d == "Exponential":
        scale = 1.0 / a
    elif d == "Gamma" and b > 0:
        scale = max(a, 1.0) / b
    elif d == "Weibull" and a >= 1.0:
        scale = b
    return float(kind), float(a), float(b), float(scale)


def sd_forward(x: np.ndarray, scale: float) -> np.ndarray:
    """The SD from its unconstrained parameter (``exp`` or ``scale * softplus``), vectorised."""
    x = np.asarray(x, dtype=float)
    return np.exp(x) if scale == 0.0 else scale * np.logaddexp(0.0, x)


def sd_inverse(sd: float, scale: float) -> float:
    """The unconstrained parameter of an SD (inverse of :func:`sd_forward`)."""
    if scale == 0.0:
        return math.log(sd)
    ratio = sd / scale
    return ratio + math.log(-math.expm1(-ratio))



@dataclass
class Packed:
    """The model as flat arrays for the kernel, plus what is needed to map draws back.

    Attributes
    ----------
    floats : list of ndarray
        ``Arr (R*R), Aee (G_e k_e k_e), Aer_val (nnz k_e), ce (G_e k_e), cr (R), fixed_prec (p),
        scal (3), prior_par (4 n_priors: kind, a, b, SD transform scale), eta (n_blocks)``.
    ints : list of ndarray
        ``Aer_ptr (G_e + 1), Aer_col (nnz), meta``.
    n_dim : int
        Length of the unconstrained parameter vector.
    x_offsets : list of int
        Offset of each block's SD parameters in ``x``.
    r_offsets : list of int
        Offset of each block's effects in ``gamma`` (the eliminated block after the R r-set columns).
    prior_mean : ndarray, shape (p,)
        Prior mean of the centred fixed effects.
    means : ndarray, shape (p,)
        Column means subtracted from X (0 for the intercept and when not centred).
    intercept : int or None
        Position of the intercept when the predictors are centred.
    init : ndarray, shape (n_dim,)
        A starting point.
    sd_scales : list of list of float
        Per block and term, the scale of the SD's softplus transform (0: the SD is ``exp(x)``).
    """

    floats: list
    ints: list
    n_dim: int
    x_offsets: list
    r_offsets: list
    prior_mean: np.ndarray
    means: np.ndarray
    intercept: int | None
    init: np.ndarray
    sd_scales: list

    @property
    def arrays(self) -> tuple:
        """The arrays in the order the C functions read them: ``floats``, then ``ints``."""
        return tuple(self.floats + self.ints)

    @property
    def args(self) -> tuple:
        """Kernel arguments after ``(x, mode, grad, z, gamma)``."""
        f, i = self.floats, self.ints
        return (f[0], f[1], f[2], i[0], i[1], f[3], f[4], f[5], f[6], f[7], f[8], i[2])

    @property
    def n_gamma(self) -> int:
        meta = self.ints[2]
        return int(meta[3] + meta[5 + 5 * meta[2]] * meta[4 + 5 * meta[2]])

    def evaluate_many(self, xs: np.ndarray, mode: int, zs: np.ndarray, gammas: np.ndarray, values: np.ndarray) -> None:
        """The kernel on every row of ``xs`` (n, n_dim), releasing the GIL: ``values`` (n,) gets the
        log densities (-inf where invalid); in ``MODE_DRAW`` each row of ``gammas`` (n, n_gamma) also
        gets the fixed and group effects drawn from their Gaussian conditional with the standard normal
        row of ``zs`` (n, n_gamma). In other modes ``zs`` and ``gammas`` have 0 columns."""
        evaluate_many("collapsed", self.arrays, mode, xs, zs, gammas, values)

    def logp(self, x: np.ndarray) -> float:
        """Log posterior density of the unconstrained variance parameters (up to a constant)."""
        from bayeslmm.engines.collapsed.kernels import evaluate  # numba: loaded on first use

        empty = np.zeros(0)
        return evaluate(np.asarray(x, float), MODE_LOGP, np.zeros(self.n_dim), empty, empty, *self.args)

    def logp_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log density and its gradient, shape (n_dim,)."""
        from bayeslmm.engines.collapsed.kernels import evaluate  # numba: loaded on first use

        grad = np.zeros(self.n_dim)
        empty = np.zeros(0)
        value = evaluate(np.asarray(x, float), MODE_GRAD, grad, empty, empty, *self.args)
        return value, grad


def pack(design: Design, priors: ModelPriors) -> Packed:
    """Precompute ``U'U``, ``U'r``, ``r'r`` and the prior codes (the only O(n) work of a fit)."""
    X = design.X
    n, p = X.shape
    means, intercept = design.fixed.centring()
    Xc = X - means
    normal = [priors.fixed[t].normal_moments() for t in design.fixed_terms]
    prior_mean = np.array([m for m, _ in normal], dtype=float)
    fixed_prec = np.array([1.0 / sd**2 for _, sd in normal], dtype=float)
    resid = design.y - Xc @ prior_mean

    blocks = design.blocks
    e = int(np.argmax([b.n_levels * b.n_terms for b in blocks]))
    r_offsets, x_offsets, pieces = [], [], [sp.csr_matrix(Xc)]
    R, x_off = p, 1
    for j, block in enumerate(blocks):
        x_offsets.append(x_off)
        x_off += block.n_terms * (block.n_terms + 1) // 2
        if j == e:
            r_offsets.append(-1)
            continue
        r_offsets.append(R)
        pieces.append(sp.csr_matrix(block.sparse()))
        R += block.n_levels * block.n_terms
    Ur = sp.hstack(pieces, format="csr")
    Ue = sp.csr_matrix(blocks[e].sparse())
    ke, Ge = blocks[e].n_terms, blocks[e].n_levels
    r_offsets[e] = R

    Arr = np.asarray((Ur.T @ Ur).toarray(), dtype=float)
    Ze, ge = blocks[e].Z, blocks[e].group_index
    Aee = np.zeros((Ge, ke, ke))
    for a in range(ke):
        for b in range(ke):
            Aee[:, a, b] = np.bincount(ge, weights=Ze[:, a] * Ze[:, b], minlength=Ge)
    ptr, col, val = _block_csr((Ue.T @ Ur).tocoo(), ke, Ge, R)

    prior_rows = [prior_code(priors.sigma) + (0.0,)]  # sigma: always log sigma
    meta = [p, len(blocks), e, R]
    for j, block in enumerate(blocks):
        meta += [block.n_terms, block.n_levels, -1 if j == e else r_offsets[j], x_offsets[j], len(prior_rows)]
        prior_rows += [sd_prior_row(priors.group_sd[block.name][t]) for t in block.terms]
    sd_scales = [[sd_prior_row(priors.group_sd[b.name][t])[3] for t in b.terms] for b in blocks]
    eta = np.array([priors.eta.get(b.name, 1.0) for b in blocks], dtype=float)
    scal = np.array([resid @ resid, float(n), float(np.sum(np.log(fixed_prec)))])
    floats = [
        Arr.reshape(-1), Aee.reshape(-1), val.reshape(-1), np.asarray(Ue.T @ resid, float), np.asarray(Ur.T @ resid, float),
        fixed_prec, scal, np.array(prior_rows, dtype=float).reshape(-1), eta,
    ]
    ints = [ptr, col, np.array(meta, dtype=np.int64)]
    # fresh, writeable, C-contiguous copies: a read-only array (pandas' copy-on-write hands those
    # out) would be another numba type, compiled again for ~20 s on the first fit
    floats = [np.array(a, dtype=np.float64, order="C") for a in floats]
    ints = [np.array(a, dtype=np.int64, order="C") for a in ints]
    init = _initial_point(design, x_offsets, x_off, sd_scales)
    return Packed(floats, ints, x_off, x_offsets, r_offsets, prior_mean, means, intercept, init, sd_scales)


def _block_csr(A: sp.coo_matrix, ke: int, Ge: int, R: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U_e'U_r grouped by level of the eliminated block: for each group, the union of its columns.

    Returns ``ptr`` (G_e + 1,), ``col`` (nnz,) and ``val`` (nnz, k_e) with
    ``val[a, t] = (U_e'U_r)[g k_e + t, col[a]]`` for ``ptr[g] <= a < ptr[g + 1]``.
    """
    group, term = A.row // ke, A.row % ke
    key = group.astype(np.int64) * R + A.col
    unique, position = np.unique(key, return_inverse=True)
    val = np.zeros((len(unique), ke))
    np.add.at(val, (position, term), A.data)
    ptr = np.searchsorted(unique // R, np.arange(Ge + 1)).astype(np.int64)
    return ptr, (unique % R).astype(np.int64), val


def _initial_point(design: Design, x_offsets: list, n_dim: int, sd_scales: list) -> np.ndarray:
    """Half the response SD for sigma and each group SD (scaled by the predictor's spread), no correlation."""
    y_sd = float(np.std(design.y)) or 1.0
    x = np.zeros(n_dim)
    x[0] = math.log(0.5 * y_sd)
    for block, off, scales in zip(design.blocks, x_offsets, sd_scales):
        for t in range(block.n_terms):
            spread = float(np.std(block.Z[:, t])) or 1.0
            x[off + t] = sd_inverse(0.5 * y_sd / spread, scales[t])
    return x


# ----------------------------------------------------------------------------------- draws -> posterior
def unpack_theta(packed: Packed, design: Design, theta: np.ndarray) -> dict[str, np.ndarray]:
    """sigma, SDs and correlation matrices from unconstrained draws ``theta`` (..., n_dim)."""
    out = {"sigma": np.exp(theta[..., 0])}
    for block, off, scales in zip(design.blocks, packed.x_offsets, packed.sd_scales):
        k = block.n_terms
        out[f"sd_{block.name}"] = np.stack([sd_forward(theta[..., off + t], scales[t]) for t in range(k)], axis=-1)
        if k > 1:
            out[f"corr_{block.name}"] = corr_matrices(theta[..., off + k:off + k + k * (k - 1) // 2], k)
    return out


def corr_matrices(y: np.ndarray, k: int) -> np.ndarray:
    """Correlation matrices (..., k, k) from Stan's unconstrained parameters (..., k(k-1)/2)."""
    flat = y.reshape(-1, y.shape[-1])
    L = np.zeros((flat.shape[0], k, k))
    L[:, 0, 0] = 1.0
    m = 0
    for i in range(1, k):
        s = np.zeros(flat.shape[0])
        for j in range(i):
            L[:, i, j] = np.tanh(flat[:, m]) * np.sqrt(1.0 - s)
            s += L[:, i, j] ** 2
            m += 1
        L[:, i, i] = np.sqrt(np.maximum(1.0 - s, 0.0))
    corr = L @ np.swapaxes(L, -1, -2)
    return corr.reshape(*y.shape[:-1], k, k)


def posterior_from_theta(
    packed: Packed, design: Design, theta: np.ndarray, rng: np.random.Generator, gamma: np.ndarray | None = None
) -> xr.Dataset:
    """The posterior Dataset of the general model from variance draws ``theta`` (chains, draws, n_dim).

    ``beta`` and every ``ranef_<block>`` are drawn from their exact Gaussian conditional given each draw,
    unless ``gamma`` (chains * draws, n_gamma) already holds such draws.
    """
    chains, n_draws, _ = theta.shape
    if gamma is None:
        flat = np.ascontiguousarray(theta.reshape(-1, packed.n_dim))
        z = rng.standard_normal((flat.shape[0], packed.n_gamma))
        gamma = np.zeros_like(z)
        packed.evaluate_many(flat, MODE_DRAW, z, gamma, np.empty(flat.shape[0]))
    p = design.X.shape[1]
    beta = design.fixed.uncentre(gamma[:, :p] + packed.prior_mean)
    shape = (chains, n_draws)
    coords: dict[str, Any] = {"chain": np.arange(chains), "draw": np.arange(n_draws), "fixed_term": list(design.fixed_terms)}
    data = {"beta": (("chain", "draw", "fixed_term"), beta.reshape(*shape, p))}
    hyper = unpack_theta(packed, design, theta)
    data["sigma"] = (("chain", "draw"), hyper["sigma"])
    for block, off in zip(design.blocks, packed.r_offsets):
        names, k, G = var_names(block), block.n_terms, block.n_levels
        coords[names["level"]] = list(block.levels)
        coords[names["term"]] = list(block.terms)
        data[names["sd"]] = (("chain", "draw", names["term"]), hyper[names["sd"]])
        if k > 1:
            coords[names["term_"]] = list(block.terms)
            data[names["corr"]] = (("chain", "draw", names["term"], names["term_"]), hyper[names["corr"]])
        ranef = gamma[:, off:off + G * k].reshape(*shape, G, k)
        data[names["ranef"]] = (("chain", "draw", names["level"], names["term"]), ranef)
    return dataset(data, coords)
