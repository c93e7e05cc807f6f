"""Marginal sampling: the fast, compilation-free path for Gaussian mixed models.

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

NUTS (nutpie) then samples only ``theta`` = (log sigma, log SDs, Stan's unconstrained correlation
Cholesky parameters), with the same priors as :mod:`bayeslmm.model` and the Jacobians of those
transforms. For each kept draw, ``gamma`` is drawn from its exact conditional ``N(M^{-1} c, M^{-1})``.
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

import datetime
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from bayeslmm.design import INTERCEPT, Design
from bayeslmm.inference import SamplerSettings
from bayeslmm.model import var_names
from bayeslmm.priors import ModelPriors, Prior

__all__ = ["supports", "sample_marginal", "MAX_DENSE", "MAX_NUTS"]

#: Largest dense Schur complement (fixed effects plus all but the largest block's columns) handled here.
#: One log density costs a dense Cholesky of that size (about R^3 / 3 flops; 20-40 ms at R = 1144).
MAX_DENSE = 2048
#: Up to this size the variance parameters are sampled by NUTS (nutpie), which needs gradients (about
#: 3 R^3 flops each); above it by the gradient-free independence Metropolis sampler :func:`sample_imh`.
MAX_NUTS = 64


# ----------------------------------------------------------------------------------- public API
def supports(design: Design, priors: ModelPriors, family) -> bool:
    """Whether :func:`sample_marginal` can fit this model exactly.

    True for a Gaussian family with Normal priors on every fixed effect, SD priors of the kinds in
    :data:`bayeslmm.priors.POSITIVE_DISTRIBUTIONS` with their usual parameters, at least one random
    block, and a dense remainder of at most :data:`MAX_DENSE` columns.
    """
    if getattr(family, "name", None) != "gaussian" or priors.sigma is None or not design.blocks:
        return False
    if any(_normal_params(priors.fixed[t]) is None for t in design.fixed_terms):
        return False
    positive = [priors.sigma] + [p for block in priors.group_sd.values() for p in block.values()]
    if any(_positive_code(p) is None for p in positive):
        return False
    return dense_size(design) <= MAX_DENSE


def dense_size(design: Design) -> int:
    """R: fixed effects plus the group effects of every block but the largest (eliminated) one."""
    sizes = [b.n_levels * b.n_terms for b in design.blocks]
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
        Passed to :func:`nutpie.sample` (e.g. ``target_accept``, ``cores``); ``nuts_sampler`` is ignored.
        ``method``: ``"auto"`` (default: NUTS when the dense part has at most :data:`MAX_NUTS` columns,
        else the independence Metropolis sampler :func:`sample_imh`), ``"nuts"`` or ``"imh"``. The
        independence sampler uses only ``cores`` (threads, default all CPUs) and runs at most
        :data:`IMH_MAX_TUNE` tuning steps per chain.

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
        import os
        import warnings

        from bayeslmm.errors import ConvergenceWarning

        cores = int(options.get("cores") or os.cpu_count() or 1)
        theta, gamma, stats = sample_imh(packed, draws=draws, tune=tune, chains=chains, random_seed=random_seed, cores=cores)
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
        posterior, stats = _sample_nuts(packed, design, draws, tune, chains, random_seed, progressbar, options)
        sampler = "nutpie, marginal"
    if keep is not None:
        posterior = posterior[[name for name in keep if name in posterior]]
    observed = xr.Dataset({"y": (("obs",), design.y)}, coords={"obs": np.arange(design.n_obs)})
    tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": stats, "observed_data": observed})
    settings = SamplerSettings(
        sampler=sampler, draws=draws, tune=tune, chains=chains, random_seed=random_seed,
        seconds=time.perf_counter() - start,
    )
    return tree, settings


def _sample_nuts(packed: Packed, design: Design, draws: int, tune: int, chains: int, random_seed: int | None,
                 progressbar: bool, options: dict) -> tuple[xr.Dataset, xr.Dataset]:
    """Posterior and sample_stats from nutpie's NUTS on the variance parameters."""
    import nutpie

    options.setdefault("cores", min(chains, 2))
    model = _NutpieMarginal.create(packed, design, random_seed)
    options.pop("return_raw_trace", None)
    options.pop("blocking", None)
    # the raw Arrow trace is read directly: nutpie's ArviZ conversion costs as much as the sampling here
    background = nutpie.sample(
        model, draws=draws, tune=tune, chains=chains, seed=random_seed, progress_bar=progressbar,
        save_warmup=False, return_raw_trace=True, blocking=False, **options,
    )
    try:
        results = background.wait()
    except KeyboardInterrupt:
        results = background.abort()
    except BaseException:
        background.cancel()
        raise
    theta, stats = _read_trace(results, getattr(background, "_settings", None), packed.n_dim)
    return posterior_from_theta(packed, design, theta, np.random.default_rng(random_seed)), stats


# nutpie's per-draw statistics that its own ArviZ conversion leaves out unless a setting stores them,
# plus the ones dropped here (positions and gradients of the unconstrained parameters)
_SKIPPED_STATS = {
    "chain", "draw", "gradient", "unconstrained_draw", "mass_matrix_inv", "mass_matrix_eigvals",
    "mass_matrix_stds", "divergence_start", "divergence_end", "divergence_momentum",
    "divergence_start_gradient", "transformed_position", "transformed_gradient", "transformation_mu",
}


def _read_trace(results, settings, n_dim: int) -> tuple[np.ndarray, xr.Dataset]:
    """Kept draws ``theta`` (chains, draws, n_dim) and ``sample_stats`` from nutpie's raw Arrow trace.

    The same content as ``nutpie.sample(...)["sample_stats"]`` (without the unconstrained positions and
    gradients), built straight from the Arrow columns: no ArviZ conversion of the warm-up.
    """
    import json

    import pyarrow as pa

    draw_batches, stat_batches = results.get_arrow_trace()
    chains = len(draw_batches)
    columns: list[dict] = []
    kept = []
    for draw, stat in zip(draw_batches, stat_batches):
        tuning = pa.array(stat.column("tuning")).to_numpy(zero_copy_only=False)
        start = int(tuning.sum())
        kept.append(draw.num_rows - start)
        x = pa.array(draw.column("theta")).flatten().to_numpy(zero_copy_only=False).reshape(-1, n_dim)
        chain_cols = {"theta": x[start:]}
        for name in stat.column_names:
            if name in _SKIPPED_STATS:
                continue
            col = pa.array(stat.column(name))
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                continue
            if col.null_count and (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
                col = col.fill_null(False if pa.types.is_boolean(col.type) else 0)  # as nutpie does
            chain_cols[name] = col.to_numpy(zero_copy_only=False)[start:]
        columns.append(chain_cols)
    n_draws = max(kept) if kept else 0
    theta = np.full((chains, n_draws, n_dim), np.nan)
    data = {}
    for c, chain_cols in enumerate(columns):
        theta[c, :kept[c]] = chain_cols.pop("theta")
        for name, values in chain_cols.items():
            if name not in data:
                if values.dtype.kind == "f":
                    data[name] = np.full((chains, n_draws), np.nan, dtype=values.dtype)
                elif values.dtype == object:
                    data[name] = np.full((chains, n_draws), None, dtype=object)
                else:
                    data[name] = np.zeros((chains, n_draws), dtype=values.dtype)
            data[name][c, :kept[c]] = values
    from importlib.metadata import version

    try:  # the attributes ArviZ's from_dict writes
        from arviz_base import make_attrs

        attrs = make_attrs()
    except ImportError:  # pragma: no cover
        attrs = {"created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    attrs.update(sample_dims=["chain", "draw"], inference_library="nutpie", inference_library_version=version("nutpie"))
    if settings is not None:
        attrs["inference_library_settings"] = json.dumps(settings.as_dict())
    coords = {"chain": np.arange(chains), "draw": np.arange(n_draws)}
    stats = xr.Dataset({k: (("chain", "draw"), v) for k, v in data.items()}, coords=coords, attrs=attrs)
    return theta, stats


# ----------------------------------------------------------------------------------- priors
def _normal_params(prior: Prior) -> tuple[float, float] | None:
    """(mean, precision) of a Normal prior, None for anything else."""
    params = prior.params
    if prior.distribution != "Normal" or not set(params) <= {"mu", "sigma", "tau"}:
        return None
    mu = float(params.get("mu", 0.0))
    if "tau" in params:
        return mu, float(params["tau"])
    return mu, 1.0 / float(params.get("sigma", 1.0)) ** 2


def _positive_code(prior: Prior) -> tuple[int, float, float] | None:
    """(kind, a, b) for :func:`_positive_logp`, or None when the kernel does not know the prior."""
    d, q = prior.distribution, {k: float(v) for k, v in prior.params.items()}
    keys = set(q)
    if {"sigma", "tau"} <= keys or {"sigma", "lam"} <= keys:
        return None  # over-specified scale: let PyMC raise its own error on the general path
    if d == "HalfFlat" and not keys:
        return HALF_FLAT, 0.0, 0.0
    if d == "HalfNormal" and keys <= {"sigma", "tau"}:
        return HALF_NORMAL, q["sigma"] if "sigma" in q else (q["tau"] ** -0.5 if "tau" in q else 1.0), 0.0
    if d == "HalfStudentT" and keys <= {"nu", "sigma", "lam"}:
        scale = q["sigma"] if "sigma" in q else (q["lam"] ** -0.5 if "lam" in q else 1.0)
        return HALF_STUDENT_T, q.get("nu", 1.0), scale
    if d == "HalfCauchy" and keys == {"beta"}:
        return HALF_CAUCHY, q["beta"], 0.0
    if d == "Exponential" and keys in ({"lam"}, {"scale"}):
        return EXPONENTIAL, q["lam"] if "lam" in q else 1.0 / q["scale"], 0.0
    if d == "Gamma" and keys == {"alpha", "beta"}:
        return GAMMA, q["alpha"], q["beta"]
    if d == "Gamma" and keys == {"mu", "sigma"}:
        return GAMMA, q["mu"] ** 2 / q["sigma"] ** 2, q["mu"] / q["sigma"] ** 2
    if d == "InverseGamma" and keys == {"alpha", "beta"}:
        return INV_GAMMA, q["alpha"], q["beta"]
    if d == "LogNormal" and keys <= {"mu", "sigma", "tau"} and keys & {"sigma", "tau"}:
        return LOG_NORMAL, q.get("mu", 0.0), q["sigma"] if "sigma" in q else q["tau"] ** -0.5
    if d == "Weibull" and keys == {"alpha", "beta"}:
        return WEIBULL, q["alpha"], q["beta"]
    return None


# ----------------------------------------------------------------------------------- packing
@dataclass
class Packed:
    """The model as flat arrays for the kernel, plus what is needed to map draws back.

    Attributes
    ----------
    floats : list of ndarray
        ``Arr (R*R), Aee (G_e k_e k_e), Aer_val (nnz k_e), ce (G_e k_e), cr (R), fixed_prec (p),
        scal (3), prior_par (3 n_priors), eta (n_blocks)``.
    ints : list of ndarray
        ``Aer_ptr (G_e + 1), Aer_col (nnz), meta``.
    n_dim : int
        Length of the unconstrained parameter vector.
    x_offsets : list of int
        Offset of each block's ``log sd`` in ``x``.
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

    @property
    def args(self) -> tuple:
        """Kernel arguments after ``(x, mode, grad, z, gamma)``."""
        f, i = self.floats, self.ints
        return (f[0], f[1], f[2], i[0], i[1], f[3], f[4], f[5], f[6], f[7], f[8], i[2])

    @property
    def n_gamma(self) -> int:
        meta = self.ints[2]
        return int(meta[3] + meta[5 + 5 * meta[2]] * meta[4 + 5 * meta[2]])

    def logp(self, x: np.ndarray) -> float:
        """Log posterior density of the unconstrained variance parameters (up to a constant)."""
        empty = np.zeros(0)
        return evaluate(np.asarray(x, float), MODE_LOGP, np.zeros(self.n_dim), empty, empty, *self.args)

    def logp_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log density and its gradient, shape (n_dim,)."""
        grad = np.zeros(self.n_dim)
        empty = np.zeros(0)
        value = evaluate(np.asarray(x, float), MODE_GRAD, grad, empty, empty, *self.args)
        return value, grad


def _centring(design: Design) -> tuple[np.ndarray, int | None]:
    """Column means subtracted from X exactly as :func:`bayeslmm.model._fixed_part` does."""
    p = design.X.shape[1]
    if INTERCEPT not in design.fixed_terms or p == 1:
        return np.zeros(p), None
    intercept = design.fixed_terms.index(INTERCEPT)
    means = design.X.mean(axis=0)
    means[intercept] = 0.0
    return means, intercept


def _block_matrix(block) -> sp.csr_matrix:
    """The block's n x (G k) sparse model matrix, columns ordered group-major."""
    n, k = block.Z.shape
    rows = np.repeat(np.arange(n), k)
    cols = (block.group_index[:, None] * k + np.arange(k)).reshape(-1)
    return sp.csr_matrix((block.Z.reshape(-1), (rows, cols)), shape=(n, block.n_levels * k))


def pack(design: Design, priors: ModelPriors) -> Packed:
    """Precompute ``U'U``, ``U'r``, ``r'r`` and the prior codes (the only O(n) work of a fit)."""
    X = design.X
    n, p = X.shape
    means, intercept = _centring(design)
    Xc = X - means
    normal = [_normal_params(priors.fixed[t]) for t in design.fixed_terms]
    prior_mean = np.array([m for m, _ in normal], dtype=float)
    fixed_prec = np.array([t for _, t in normal], dtype=float)
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
        pieces.append(_block_matrix(block))
        R += block.n_levels * block.n_terms
    Ur = sp.hstack(pieces, format="csr")
    Ue = _block_matrix(blocks[e])
    ke, Ge = blocks[e].n_terms, blocks[e].n_levels
    r_offsets[e] = R

    Arr = np.asarray((Ur.T @ Ur).toarray(), dtype=float)
    Ze, ge = blocks[e].Z, blocks[e].group_index
    Aee = np.zeros((Ge, ke, ke))
    for a in range(ke):
        for b in range(ke):
            Aee[:, a, b] = np.bincount(ge, weights=Ze[:, a] * Ze[:, b], minlength=Ge)
    ptr, col, val = _block_csr((Ue.T @ Ur).tocoo(), ke, Ge, R)

    prior_rows = [_positive_code(priors.sigma)]
    meta = [p, len(blocks), e, R]
    for j, block in enumerate(blocks):
        meta += [block.n_terms, block.n_levels, -1 if j == e else r_offsets[j], x_offsets[j], len(prior_rows)]
        prior_rows += [_positive_code(priors.group_sd[block.name][t]) for t in block.terms]
    eta = np.array([priors.eta.get(b.name, 1.0) for b in blocks], dtype=float)
    scal = np.array([resid @ resid, float(n), float(np.sum(np.log(fixed_prec)))])
    floats = [
        Arr.reshape(-1), Aee.reshape(-1), val.reshape(-1), np.asarray(Ue.T @ resid, float), np.asarray(Ur.T @ resid, float),
        fixed_prec, scal, np.array(prior_rows, dtype=float).reshape(-1), eta,
    ]
    ints = [ptr, col, np.array(meta, dtype=np.int64)]
    floats = [np.ascontiguousarray(a, dtype=np.float64) for a in floats]
    ints = [np.ascontiguousarray(a, dtype=np.int64) for a in ints]
    return Packed(floats, ints, x_off, x_offsets, r_offsets, prior_mean, means, intercept, _initial_point(design, x_offsets, x_off))


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


def _initial_point(design: Design, x_offsets: list, n_dim: int) -> np.ndarray:
    """Half the response SD for sigma and each group SD (scaled by the predictor's spread), no correlation."""
    y_sd = float(np.std(design.y)) or 1.0
    x = np.zeros(n_dim)
    x[0] = math.log(0.5 * y_sd)
    for block, off in zip(design.blocks, x_offsets):
        for t in range(block.n_terms):
            spread = float(np.std(block.Z[:, t])) or 1.0
            x[off + t] = math.log(0.5 * y_sd / spread)
    return x


# ----------------------------------------------------------------------------------- draws -> posterior
def unpack_theta(packed: Packed, design: Design, theta: np.ndarray) -> dict[str, np.ndarray]:
    """sigma, SDs and correlation matrices from unconstrained draws ``theta`` (..., n_dim)."""
    out = {"sigma": np.exp(theta[..., 0])}
    for block, off in zip(design.blocks, packed.x_offsets):
        k = block.n_terms
        out[f"sd_{block.name}"] = np.exp(theta[..., off:off + k])
        if k > 1:
            out[f"corr_{block.name}"] = _corr_matrices(theta[..., off + k:off + k + k * (k - 1) // 2], k)
    return out


def _corr_matrices(y: np.ndarray, k: int) -> np.ndarray:
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
        draw_all(flat, z, gamma, *packed.args)
    p = design.X.shape[1]
    beta_c = gamma[:, :p] + packed.prior_mean
    beta = beta_c.copy()
    if packed.intercept is not None:
        beta[:, packed.intercept] -= beta_c @ packed.means
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
    return xr.Dataset(data, coords=coords)


# ----------------------------------------------------------------------------------- nutpie model
def _nutpie_base():
    from nutpie.sample import CompiledModel

    return CompiledModel


@dataclass(frozen=True)
class _NutpieMarginal(_nutpie_base()):
    """A nutpie model whose log density is the cached C callback :func:`c_logp` on ``packed``'s arrays."""

    packed: Any = None
    header: Any = None
    init: Any = None
    seed: Any = None

    @classmethod
    def create(cls, packed: Packed, design: Design, seed: int | None) -> "_NutpieMarginal":
        arrays = packed.floats + packed.ints
        header = np.array([v for a in arrays for v in (a.ctypes.data, a.size)], dtype=np.uint64)
        return cls(dims={"theta": ("theta_dim",)}, packed=packed, header=header, init=packed.init, seed=seed)

    @property
    def n_dim(self) -> int:
        return self.packed.n_dim

    @property
    def shapes(self) -> dict:
        return {"theta": (self.packed.n_dim,)}

    @property
    def coords(self) -> dict:
        return {"theta_dim": np.arange(self.packed.n_dim)}

    def _initial_point(self, seed: int) -> np.ndarray:
        # PyMC-style jitter so that chains start apart (R-hat needs overdispersed starts)
        rng = np.random.default_rng(seed)
        return self.init + rng.uniform(-0.5, 0.5, size=self.init.shape)

    def _make_sampler(self, settings, init_mean, cores, progress_type, extra_callback, extra_callback_rate, store):
        from nutpie import _lib

        return _lib.PySampler.from_pymc(
            settings, cores, self._make_model(init_mean), progress_type, extra_callback, extra_callback_rate, store
        )

    def _make_model(self, init_mean):
        from nutpie import _lib

        d = self.n_dim
        address = self.header.ctypes.data
        # the arrays (kept alive by self) are read through their addresses in the header
        expand = _lib.ExpandFunc(d, d, c_expand.address, address, self)
        logp = _lib.LogpFunc(c_logp.address, address, self)
        coords = self.coords
        variables = _lib.PyVariable.new_variables(["theta"], ["float64"], [(d,)], {"theta_dim": d}, dict(self.dims))

        def make_adapter(*args, **kwargs):
            from nutpie.transform_adapter import make_transform_adapter

            return make_transform_adapter()(*args, **kwargs, logp_fn=None)

        return _lib.PyMcModel(logp, expand, variables, d, {"theta_dim": d}, coords, self._initial_point, make_adapter)


# ----------------------------------------------------------------------------------- independence Metropolis
def _log_density_many(packed: Packed, xs: np.ndarray, cores: int, zs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Log densities at the rows of ``xs`` on ``cores`` threads; with ``zs`` also conditional draws of gamma.

    The threads run :func:`evaluate_many` on small slices taken in turn (the kernel releases the GIL;
    slices balance the load on a busy machine) with BLAS limited to one thread, so that they do not
    compete for the cores. Every row depends only on its own inputs: the result does not depend on
    ``cores``.
    """
    xs = np.ascontiguousarray(xs, dtype=float)
    n = xs.shape[0]
    out = np.empty(n)
    mode = MODE_LOGP if zs is None else MODE_DRAW
    gammas = np.zeros((n, packed.n_gamma)) if zs is not None else np.zeros((n, 0))
    zs = np.zeros((n, 0)) if zs is None else np.ascontiguousarray(zs)
    cores = max(1, min(int(cores), n))
    size = max(1, min(16, n // (4 * cores)))
    bounds = list(range(0, n, size)) + [n]

    def run(i):
        a, b = bounds[i], bounds[i + 1]
        evaluate_many(xs[a:b], mode, zs[a:b], gammas[a:b], out[a:b], *packed.args)

    with _one_blas_thread():
        if cores == 1:
            for i in range(len(bounds) - 1):
                run(i)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(cores) as pool:
                list(pool.map(run, range(len(bounds) - 1)))
    return out, (gammas if mode == MODE_DRAW else None)


class _one_blas_thread:
    """Context manager for the kernel threads: BLAS/LAPACK on one thread, large blocks reused by malloc.

    * Our threads already use the cores; a multi-threaded OpenBLAS Cholesky on a busy machine was
      measured 40x slower (1.6 s instead of 40 ms for R = 1144) than a single-threaded one. SciPy's
      LAPACK (which numba calls) is loaded first, so that threadpoolctl limits it too.
    * Each density allocates R x R matrices (10 MB at R = 1144). glibc hands blocks that large out as
      fresh mmap-ed pages, and their page faults cost as much as the Cholesky itself (measured 28 ms
      instead of 17 ms for allocate + Cholesky); inside the block glibc keeps them in its heap instead
      (``mallopt``: mmap threshold 32 MiB, trim threshold 256 MiB), and restores glibc's defaults after.
    """

    def __init__(self):
        self.limiter, self.libc = None, None

    def __enter__(self):
        try:
            import scipy.linalg.cython_lapack  # noqa: F401 -- load numba's LAPACK before limiting it
            from threadpoolctl import threadpool_limits

            self.limiter = threadpool_limits(1)
        except ImportError:  # pragma: no cover
            self.limiter = None
        self.libc = _glibc()
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            self.libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
        return self

    def __exit__(self, *exc):
        if self.limiter is not None:
            self.limiter.restore_original_limits()
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)  # glibc's defaults
            self.libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)
            self.libc.malloc_trim(0)
        return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _glibc():
    """glibc through ctypes (for ``mallopt``), or None on other C libraries."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # pragma: no cover
        return None


def find_mode(packed: Packed, cores: int = 1, step: float = 1e-3, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior mode of the variance parameters and the Hessian of ``-logp`` there (finite differences).

    Newton iterations with the diagonal of the Hessian: the 2 d + 1 points of central differences give
    the gradient and the diagonal curvature together (evaluated in parallel), the step is halved until
    ``logp`` increases, and the search stops when every step is below 1 % of the Laplace SD. Then the
    full Hessian (the 2 d + 2 d (d - 1) points of the usual central formulas) and one full Newton step.

    Returns
    -------
    mode : ndarray (d,)
    hessian : ndarray (d, d)
        Of ``-logp`` (positive definite at a proper mode).
    logp : float
        At the mode.
    """
    d = packed.n_dim
    eye = np.eye(d)
    x = np.asarray(packed.init, float).copy()
    f = -np.inf
    for _ in range(max_iter):
        pts = np.vstack([x[None, :], x + step * eye, x - step * eye])
        vals, _ = _log_density_many(packed, pts, cores)
        f = vals[0]
        if not np.all(np.isfinite(vals)):
            raise FloatingPointError("the log density is not finite around the starting point")
        g = (vals[1:d + 1] - vals[d + 1:]) / (2 * step)  # gradient of logp
        curv = -(vals[1:d + 1] - 2 * f + vals[d + 1:]) / step**2  # diagonal of -Hessian
        good = curv > 0
        delta = np.where(good, g / np.where(good, curv, 1.0), np.sign(g))
        delta = np.clip(delta, -2.0, 2.0)
        small = np.all(np.abs(delta) < 0.01 / np.sqrt(np.where(good, curv, 1e-300)))
        if small and np.all(good):
            break
        for _ in range(30):
            trial, _ = _log_density_many(packed, (x + delta)[None, :], 1)
            if np.isfinite(trial[0]) and trial[0] >= f:
                break
            delta = delta / 2
        else:
            break
        x = x + delta
    mode = x
    pts, index = [mode], {}
    for i in range(d):
        for sign in (1, -1):
            index[(i, sign)] = len(pts)
            pts.append(mode + sign * step * eye[i])
    for i in range(d):
        for j in range(i):
            for si in (1, -1):
                for sj in (1, -1):
                    index[(i, j, si, sj)] = len(pts)
                    pts.append(mode + step * (si * eye[i] + sj * eye[j]))
    vals, _ = _log_density_many(packed, np.array(pts), cores)
    f0 = vals[0]
    H = np.zeros((d, d))
    for i in range(d):
        H[i, i] = -(vals[index[(i, 1)]] - 2 * f0 + vals[index[(i, -1)]]) / step**2
        for j in range(i):
            v = vals[index[(i, j, 1, 1)]] - vals[index[(i, j, 1, -1)]] - vals[index[(i, j, -1, 1)]] + vals[index[(i, j, -1, -1)]]
            H[i, j] = H[j, i] = -v / (4 * step**2)
    g = np.array([(vals[index[(i, 1)]] - vals[index[(i, -1)]]) / (2 * step) for i in range(d)])
    try:
        np.linalg.cholesky(H)
        shift = np.linalg.solve(H, g)  # the full Newton step from the last diagonal one
        if np.all(np.abs(shift) < np.sqrt(np.diag(np.linalg.inv(H)))):
            mode = mode + shift
    except np.linalg.LinAlgError:
        pass
    return mode, H, float(f0)


class _Mixture:
    """Mixture of proposals with ``draw`` and ``logpdf`` methods."""

    def __init__(self, components: list, weights: list[float]):
        self.components, self.weights = components, np.asarray(weights, float)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        which = rng.choice(len(self.components), size=size, p=self.weights)
        out = np.empty((size, self.components[0].d))
        for i, component in enumerate(self.components):
            mask = which == i
            out[mask] = component.draw(rng, int(mask.sum()))
        return out

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import logsumexp

        parts = [math.log(w) + c.logpdf(x) for c, w in zip(self.components, self.weights)]
        return logsumexp(np.stack(parts), axis=0)


class _SplitT:
    """Split Student-t (Geweke 1989): ``x = mu + L u``, ``u_i = z_i s_i^{sign(z_i)}``, ``z ~ t_nu(0, I)``.

    Each axis of the Laplace-whitened space has its own scale on either side of the mode, so that the
    proposal follows a skewed posterior (e.g. the SD of a factor with few levels).
    """

    def __init__(self, mu: np.ndarray, L: np.ndarray, plus: np.ndarray, minus: np.ndarray, nu: float):
        self.mu, self.L, self.nu = np.asarray(mu, float), np.asarray(L, float), float(nu)
        self.plus, self.minus = np.asarray(plus, float), np.asarray(minus, float)
        self.d = len(self.mu)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        z = rng.standard_normal((size, self.d)) / np.sqrt(rng.chisquare(self.nu, size) / self.nu)[:, None]
        u = z * np.where(z > 0, self.plus, self.minus)
        return self.mu + u @ self.L.T

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        from scipy.linalg import solve_triangular

        u = solve_triangular(self.L, (np.atleast_2d(x) - self.mu).T, lower=True).T
        scale = np.where(u > 0, self.plus, self.minus)
        z = u / scale
        d, nu = self.d, self.nu
        const = math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - 0.5 * d * math.log(nu * math.pi) - np.sum(np.log(np.diag(self.L)))
        return const - 0.5 * (nu + d) * np.log1p(np.sum(z * z, axis=1) / nu) - np.sum(np.log(scale), axis=1)


def _side_scales(packed: Packed, mode: np.ndarray, L: np.ndarray, cores: int, reach: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Scale on each side of the mode along each whitened axis, from the drop of ``logp`` at ``reach`` SDs.

    A Gaussian drops by ``reach^2 / 2`` at ``reach`` SDs; a smaller (larger) drop means a heavier
    (lighter) side. Clipped to [0.5, 3].
    """
    d = len(mode)
    pts = [mode] + [mode + sign * reach * L[:, i] for i in range(d) for sign in (1, -1)]
    vals, _ = _log_density_many(packed, np.array(pts), cores)
    drop = vals[0] - vals[1:].reshape(d, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(drop > 0, reach / np.sqrt(2 * np.maximum(drop, 1e-300)), 3.0)
    scale = np.where(np.isfinite(vals[1:].reshape(d, 2)), scale, 0.5)
    scale = np.clip(scale, 0.5, 3.0)
    return scale[:, 0], scale[:, 1]


class _StudentT:
    """Multivariate Student-t proposal: location ``mu``, scale matrix ``Sigma``, ``nu`` degrees of freedom."""

    def __init__(self, mu: np.ndarray, Sigma: np.ndarray, nu: float):
        self.mu, self.nu = np.asarray(mu, float), float(nu)
        self.L = np.linalg.cholesky(Sigma)
        self.d = len(self.mu)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        z = rng.standard_normal((size, self.d))
        w = rng.chisquare(self.nu, size) / self.nu
        return self.mu + (z @ self.L.T) / np.sqrt(w)[:, None]

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        from scipy.linalg import solve_triangular

        r = solve_triangular(self.L, (x - self.mu).T, lower=True)
        q = np.sum(r * r, axis=0)
        d, nu = self.d, self.nu
        const = math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - 0.5 * d * math.log(nu * math.pi) - np.sum(np.log(np.diag(self.L)))
        return const - 0.5 * (nu + d) * np.log1p(q / nu)


def _psis_khat(log_weights: np.ndarray) -> float:
    """Pareto k-hat of importance weights (ArviZ's PSIS); NaN if it cannot be computed."""
    try:
        from arviz_stats.base import array_stats

        lw = np.asarray(log_weights, float)
        lw = np.where(np.isfinite(lw), lw, np.min(lw[np.isfinite(lw)]) - 50.0)
        _, khat = array_stats.psislw(-lw)  # it takes log-likelihoods: weights exp(-ary)
        return float(np.asarray(khat))
    except Exception:  # noqa: BLE001 -- a diagnostic only
        return float("nan")


#: The proposal: split Student-t with ``IMH_NU`` degrees of freedom on the Laplace covariance (times
#: ``IMH_SCALE`` and each side's scale), mixed (weight ``IMH_DEFENSIVE``) with a Student-t of 3 degrees of
#: freedom and at least twice the scale, which bounds the importance weights where the posterior has
#: heavier tails than the Laplace approximation.
IMH_NU, IMH_SCALE, IMH_DEFENSIVE = 5.0, 1.0, 0.05
#: Most tuning (burn-in) steps per chain: with an independence proposal the chain forgets its start at
#: its first acceptance, so more would only cost density evaluations.
IMH_MAX_TUNE = 50
#: Below this mean acceptance rate :func:`sample_marginal` warns that the proposal fits poorly.
IMH_MIN_ACCEPTANCE = 0.25


def sample_imh(
    packed: Packed, *, draws: int, tune: int, chains: int, random_seed: int | None, cores: int = 2
) -> tuple[np.ndarray, np.ndarray, xr.Dataset]:
    """Independence Metropolis-Hastings on the variance parameters, jointly with their conditional effects.

    1. The mode of ``logp`` and the Hessian there (:func:`find_mode`) give a Laplace approximation; the
       proposal is a multivariate split Student-t (:class:`_SplitT`, ``IMH_NU`` degrees of freedom)
       centred at the mode on the inverse Hessian, whose scale on either side of the mode along each
       whitened axis comes from the drop of ``logp`` two SDs away (:func:`_side_scales`: 2 d more
       densities), mixed with a wider symmetric Student-t (weight ``IMH_DEFENSIVE``).
    2. Each chain proposes ``min(tune, IMH_MAX_TUNE) + draws`` independent points from it and accepts
       each with probability ``min(1, w(new) / w(current))``, ``w = p / q``; the first (tuning) steps
       are discarded. A chain starts at its first proposal.
    3. Every proposal's effects are drawn from their exact conditional with the same Cholesky factor that
       gives its density, and they move with the proposal: this is an independence sampler on the joint
       (theta, gamma) space whose proposal for gamma is its exact conditional, so the acceptance ratio is
       that of theta alone and no second factorization is needed.

    The proposals do not depend on the chain states, so all densities are evaluated first, in parallel
    on ``cores`` threads; the accept/reject pass afterwards is cheap.

    Returns
    -------
    theta : ndarray (chains, draws, d)
    gamma : ndarray (chains * draws, n_gamma)
    stats : xarray.Dataset
        ``diverging`` (all False), ``accepted``, ``acceptance_rate`` (the MH acceptance probability of
        each step), ``lp`` (chain, draw); attributes ``pareto_k`` (PSIS k-hat of the importance weights
        ``p / q`` of all proposals; with a few hundred proposals it is noisy, e.g. 0.4-1.1 for
        InstEval's well-fitting proposal), ``mean_acceptance``, the proposal and the tuning steps.
    """
    rng = np.random.default_rng(random_seed)
    d = packed.n_dim
    mode, H, _ = find_mode(packed, cores)
    try:
        cov = np.linalg.inv(H)
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:  # not a proper mode: fall back to the diagonal
        cov = np.diag(1.0 / np.maximum(np.abs(np.diag(H)), 1e-8))
    L = np.linalg.cholesky(cov)
    plus, minus = _side_scales(packed, mode, L, cores)
    wide = 2 * IMH_SCALE * max(1.0, float(np.max(plus)), float(np.max(minus)))
    proposal = _Mixture(
        [_SplitT(mode, L, IMH_SCALE * plus, IMH_SCALE * minus, IMH_NU), _StudentT(mode, wide**2 * cov, 3.0)],
        [1.0 - IMH_DEFENSIVE, IMH_DEFENSIVE],
    )
    n_burn = max(0, min(int(tune), IMH_MAX_TUNE))
    steps = n_burn + draws
    xs = proposal.draw(rng, chains * steps)
    lp, gammas = _log_density_many(packed, xs, cores, rng.standard_normal((chains * steps, packed.n_gamma)))
    lw = lp - proposal.logpdf(xs)
    u = np.log(rng.uniform(size=chains * steps))
    keep = np.empty((chains, draws), dtype=np.int64)  # index of the proposal each kept draw holds
    accepted = np.zeros((chains, draws), dtype=bool)
    rate = np.zeros((chains, draws))
    for c in range(chains):
        current = -1
        for t in range(steps):
            i = c * steps + t
            if not np.isfinite(lw[i]):
                log_alpha = -np.inf
            elif current < 0:
                log_alpha = 0.0
            else:
                log_alpha = min(0.0, lw[i] - lw[current])
            moved = current < 0 or u[i] < log_alpha
            if moved and np.isfinite(lw[i]):
                current = i
            if t >= n_burn:
                keep[c, t - n_burn] = current if current >= 0 else i
                accepted[c, t - n_burn] = moved and np.isfinite(lw[i])
                rate[c, t - n_burn] = math.exp(log_alpha)
    flat = keep.reshape(-1)
    theta = xs[flat].reshape(chains, draws, d)
    gamma = gammas[flat]
    del gammas
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    stats = xr.Dataset(
        {
            "diverging": (("chain", "draw"), np.zeros((chains, draws), dtype=bool)),
            "accepted": (("chain", "draw"), accepted),
            "acceptance_rate": (("chain", "draw"), rate),
            "lp": (("chain", "draw"), lp[flat].reshape(chains, draws)),
        },
        coords=coords,
        attrs={
            "inference_library": "bayeslmm",
            "sampler": "independence Metropolis-Hastings",
            "proposal": (
                f"at the posterior mode: {1 - IMH_DEFENSIVE:g} split Student-t (nu={IMH_NU:g}, inverse Hessian, "
                f"side scales {np.round(plus, 2).tolist()} / {np.round(minus, 2).tolist()}) + {IMH_DEFENSIVE:g} "
                f"Student-t (nu=3, {wide:.2g}^2 x inverse Hessian)"
            ),
            "pareto_k": _psis_khat(lw),
            "mean_acceptance": float(rate.mean()) if rate.size else float("nan"),
            "tune_steps": n_burn,
        },
    )
    return theta, gamma, stats


# =================================================================================== numba kernels
# Everything below takes only flat NumPy arrays, so one compiled version (cached on disk) serves every
# model. Array layout (``meta``, int64):
#     meta[0:4] = p, n_blocks, e (the eliminated block), R (size of the dense Schur part)
#     meta[4 + 5 j : 9 + 5 j] = k_j, G_j, roff_j (offset in the r-set, -1 for e), xoff_j, prior row
# Parameter vector x: log sigma, then per block log sd (k_j) and k_j (k_j - 1) / 2 unconstrained
# correlation parameters (Stan's canonical partial correlations through tanh).

LOG_2PI = math.log(2.0 * math.pi)

# Positive-prior kinds (rows of ``prior_par``: kind, a, b)
HALF_FLAT, HALF_NORMAL, HALF_STUDENT_T, HALF_CAUCHY, EXPONENTIAL, GAMMA, INV_GAMMA, LOG_NORMAL, WEIBULL = range(9)

MODE_LOGP, MODE_GRAD, MODE_DRAW = 0, 1, 2


@njit(cache=True)
def _positive_logp(kind, a, b, x):
    """Log density (up to a constant) of a positive prior at ``x`` and its derivative in ``x``."""
    if kind == HALF_NORMAL:
        return -0.5 * x * x / (a * a), -x / (a * a)
    if kind == HALF_STUDENT_T:
        return -0.5 * (a + 1.0) * math.log1p(x * x / (a * b * b)), -(a + 1.0) * x / (a * b * b + x * x)
    if kind == HALF_CAUCHY:
        return -math.log1p(x * x / (a * a)), -2.0 * x / (a * a + x * x)
    if kind == EXPONENTIAL:
        return -a * x, -a
    if kind == GAMMA:
        return (a - 1.0) * math.log(x) - b * x, (a - 1.0) / x - b
    if kind == INV_GAMMA:
        return -(a + 1.0) * math.log(x) - b / x, -(a + 1.0) / x + b / (x * x)
    if kind == LOG_NORMAL:
        d = math.log(x) - a
        return -math.log(x) - 0.5 * d * d / (b * b), -1.0 / x - d / (b * b * x)
    if kind == WEIBULL:
        t = (x / b) ** a
        return (a - 1.0) * math.log(x) - t, (a - 1.0) / x - a * t / x
    return 0.0, 0.0


@njit(cache=True)
def _corr_cholesky(y, k, L, dL, dlogj):
    """Cholesky factor of a correlation matrix from unconstrained ``y``, with forward derivatives.

    Parameters
    ----------
    y : ndarray, shape (m,), m = k (k - 1) / 2
        Row-major over the strict lower triangle.
    L : ndarray, shape (k, k)
        Filled with the lower Cholesky factor (rows of unit norm).
    dL : ndarray, shape (m, k, k)
        Filled with dL / dy_m.
    dlogj : ndarray, shape (m,)
        Filled with the derivative of the log-Jacobian.

    Returns
    -------
    float
        log |d L_free / d y|, as in Stan's ``cholesky_corr`` transform.
    """
    L[:, :] = 0.0
    dL[:, :, :] = 0.0
    dlogj[:] = 0.0
    L[0, 0] = 1.0
    logj = 0.0
    m0 = 0
    for i in range(1, k):
        s = 0.0
        for j in range(i):
            z = math.tanh(y[m0 + j])
            L[i, j] = z * math.sqrt(1.0 - s)
            logj += 0.5 * math.log(1.0 - s) + math.log(1.0 - z * z)
            s += L[i, j] * L[i, j]
        L[i, i] = math.sqrt(1.0 - s)
        # forward-mode derivative of row i with respect to each of its parameters
        for mm in range(i):
            m = m0 + mm
            s = 0.0
            ds = 0.0
            for j in range(i):
                z = math.tanh(y[m0 + j])
                w = math.sqrt(1.0 - s)
                dw = -ds / (2.0 * w)
                dz = (1.0 - z * z) if j == mm else 0.0
                dL[m, i, j] = dz * w + z * dw
                dlogj[m] += -0.5 * ds / (1.0 - s)
                s += L[i, j] * L[i, j]
                ds += 2.0 * L[i, j] * dL[m, i, j]
            dL[m, i, i] = -ds / (2.0 * L[i, i])
            dlogj[m] += -2.0 * math.tanh(y[m])
        m0 += i
    return logj


@njit(cache=True)
def _chol_small(A, L):
    """Lower Cholesky of a small SPD matrix ``A`` into ``L``; returns log det A (-inf if not SPD)."""
    k = A.shape[0]
    logdet = 0.0
    for i in range(k):
        for j in range(i + 1):
            s = A[i, j]
            for t in range(j):
                s -= L[i, t] * L[j, t]
            if i == j:
                if s <= 0.0:
                    return -np.inf
                L[i, i] = math.sqrt(s)
                logdet += 2.0 * math.log(L[i, i])
            else:
                L[i, j] = s / L[j, j]
        for j in range(i + 1, k):
            L[i, j] = 0.0
    return logdet


@njit(cache=True)
def _inv_from_chol(L, out):
    """``out = (L L')^{-1}`` for a small lower-triangular ``L``."""
    _inv_from_chol_into(L, out, np.zeros((L.shape[0], L.shape[0])))


@njit(cache=True)
def _inv_from_chol_into(L, out, Li):
    """:func:`_inv_from_chol` with scratch space ``Li`` (k, k), so that loops over groups allocate nothing."""
    k = L.shape[0]
    for i in range(k):
        Li[i, i] = 1.0 / L[i, i]
        for j in range(i):
            s = 0.0
            for t in range(j, i):
                s -= L[i, t] * Li[t, j]
            Li[i, j] = s / L[i, i]
    for i in range(k):
        for j in range(k):
            s = 0.0
            for t in range(max(i, j), k):
                s += Li[t, i] * Li[t, j]
            out[i, j] = s


_SMALL = 48  # below this size, plain loops beat the overhead of a LAPACK call


@njit(cache=True)
def _mm(A, B):
    """Small matrix product without a BLAS call (k <= a few)."""
    out = np.zeros((A.shape[0], B.shape[1]))
    for i in range(A.shape[0]):
        for t in range(A.shape[1]):
            a = A[i, t]
            for j in range(B.shape[1]):
                out[i, j] += a * B[t, j]
    return out


@njit(cache=True)
def _chol_dense(S):
    """Lower Cholesky factor of ``S``: loops when small, LAPACK otherwise; NaN diagonal if not SPD."""
    R = S.shape[0]
    if R > _SMALL:
        return np.linalg.cholesky(S)
    L = np.zeros((R, R))
    if not np.isfinite(_chol_small(S, L)):
        L[0, 0] = np.nan
    return L


@njit(cache=True)
def _solve_lower(L, b):
    n = b.shape[0]
    x = b.copy()
    for i in range(n):
        s = x[i]
        for t in range(i):
            s -= L[i, t] * x[t]
        x[i] = s / L[i, i]
    return x


@njit(cache=True)
def _solve_upper_t(L, b):
    """Solve ``L' x = b`` for lower-triangular ``L``."""
    n = b.shape[0]
    x = b.copy()
    for i in range(n - 1, -1, -1):  # row-oriented: reads L row by row (contiguous)
        x[i] /= L[i, i]
        xi = x[i]
        for t in range(i):
            x[t] -= L[i, t] * xi
    return x


@njit(cache=True)
def evaluate(x, mode, grad, z, gamma, Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta):
    """Log posterior density of the variance parameters, its gradient, or a conditional draw.

    Parameters
    ----------
    x : ndarray, shape (d,)
        Unconstrained variance parameters.
    mode : int
        0: log density; 1: log density and ``grad``; 2: also fill ``gamma`` with a draw of the fixed
        deviations and group effects from their Gaussian conditional, using the standard normals ``z``.
    grad : ndarray, shape (d,)
        Output gradient (mode 1).
    z, gamma : ndarray, shape (p + q,)
        Standard normals in, draw out (mode 2), ordered r-set then eliminated block.
    Arr : (R * R,) U_r' U_r.  Aee : (G_e k_e k_e,) diagonal blocks of U_e' U_e.
    Aer_val : (nnz k_e,) U_e' U_r in block-CSR, with Aer_ptr (G_e + 1,) and Aer_col (nnz,).
    ce : (G_e k_e,) and cr : (R,)  U' r.    fixed_prec : (p,) prior precisions of the fixed effects.
    scal : [r'r, n, sum log fixed_prec].    prior_par : (n_priors * 3,).    eta : (n_blocks,).
    meta : int64, see the module docstring.

    Returns
    -------
    float
        Log density (likelihood with constants, priors up to constants, Jacobians); -inf if invalid.
    """
    p, nb, e, R = meta[0], meta[1], meta[2], meta[3]
    rr, n = scal[0], scal[1]
    sig = math.exp(x[0])
    s2 = sig * sig
    ke, Ge = meta[4 + 5 * e], meta[5 + 5 * e]
    # ---- block covariances: F = diag(sd) L, Sigma = F F', P = Sigma^{-1}
    kmax = 1
    for j in range(nb):
        kmax = max(kmax, meta[4 + 5 * j])
    Ls = np.zeros((nb, kmax, kmax))
    Ps = np.zeros((nb, kmax, kmax))
    Sig = np.zeros((nb, kmax, kmax))
    sds = np.zeros((nb, kmax))
    mmax = kmax * (kmax - 1) // 2
    dLs = np.zeros((nb, max(mmax, 1), kmax, kmax))
    dlogjs = np.zeros((nb, max(mmax, 1)))
    logp = 0.0
    kind0 = int(prior_par[0])
    lp, dlp = _positive_logp(kind0, prior_par[1], prior_par[2], sig)
    logp += lp + x[0]
    if mode == MODE_GRAD:
        grad[:] = 0.0
        grad[0] = sig * dlp + 1.0
    logdetP_total = 0.0
    for j in range(nb):
        k, G, xoff, prow = meta[4 + 5 * j], meta[5 + 5 * j], meta[7 + 5 * j], meta[8 + 5 * j]
        for t in range(k):
            sd = math.exp(x[xoff + t])
            sds[j, t] = sd
            row = prow + t
            lp, dlp = _positive_logp(int(prior_par[3 * row]), prior_par[3 * row + 1], prior_par[3 * row + 2], sd)
            logp += lp + x[xoff + t]
            if mode == MODE_GRAD:
                grad[xoff + t] += sd * dlp + 1.0
        Lj = Ls[j, :k, :k]
        if k > 1:
            m = k * (k - 1) // 2
            logj = _corr_cholesky(x[xoff + k:xoff + k + m], k, Lj, dLs[j, :m, :k, :k], dlogjs[j, :m])
            logp += logj
            # LKJ(eta) density of the Cholesky factor (Stan's lkj_corr_cholesky)
            for i in range(1, k):
                logp += (k - i + 2.0 * eta[j] - 3.0) * math.log(Lj[i, i])
            if mode == MODE_GRAD:
                for mm in range(m):
                    grad[xoff + k + mm] += dlogjs[j, mm]
                    for i in range(1, k):
                        grad[xoff + k + mm] += (k - i + 2.0 * eta[j] - 3.0) * dLs[j, mm, i, i] / Lj[i, i]
        else:
            Lj[0, 0] = 1.0
        F = np.zeros((k, k))
        for a in range(k):
            for b in range(k):
                F[a, b] = sds[j, a] * Lj[a, b]
        Sj = _mm(F, F.T.copy())
        Sig[j, :k, :k] = Sj
        LF = np.zeros((k, k))
        logdetS = _chol_small(Sj, LF)
        if not np.isfinite(logdetS):
            return -np.inf
        _inv_from_chol(LF, Ps[j, :k, :k])
        logdetP_total += G * (-logdetS)
    # ---- eliminated block: M_g = P_e + Aee_g / s2 (block diagonal)
    Pe = Ps[e, :ke, :ke]
    Minv = np.zeros((Ge, ke, ke))
    Lg = np.zeros((Ge, ke, ke))
    logdetM = 0.0
    Mg = np.zeros((ke, ke))
    scratch = np.zeros((ke, ke))
    for g in range(Ge):
        for a in range(ke):
            for b in range(ke):
                Mg[a, b] = Pe[a, b] + Aee[(g * ke + a) * ke + b] / s2
        ld = _chol_small(Mg, Lg[g])
        if not np.isfinite(ld):
            return -np.inf
        logdetM += ld
        _inv_from_chol_into(Lg[g], Minv[g], scratch)
    # ---- Schur complement S = M_rr - M_re M_ee^{-1} M_er (dense, R x R)
    # only the lower triangle of S is filled and read (by both Cholesky routines)
    S = np.zeros((R, R))
    for a in range(R):
        for b in range(a + 1):
            S[a, b] = Arr[a * R + b] / s2
    for i in range(p):
        S[i, i] += fixed_prec[i]
    for j in range(nb):
        k, G, roff = meta[4 + 5 * j], meta[5 + 5 * j], meta[6 + 5 * j]
        if j == e:
            continue
        for g in range(G):
            base = roff + g * k
            for a in range(k):
                for b in range(k):
                    S[base + a, base + b] += Ps[j, a, b]
    nnz = Aer_col.shape[0]
    W = np.zeros((nnz, ke))  # W[a, :] = M_g^{-1} M_er[g][:, a]
    for g in range(Ge):
        for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
            for t in range(ke):
                s = 0.0
                for u in range(ke):
                    s += Minv[g, t, u] * Aer_val[a * ke + u]
                W[a, t] = s / s2
        if ke == 1:  # the common case (a random intercept eliminated): no inner loop
            for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
                row = S[Aer_col[a]]
                va = Aer_val[a] / s2
                for b in range(Aer_ptr[g], a + 1):  # columns ascend within a group: lower triangle
                    row[Aer_col[b]] -= va * W[b, 0]
            continue
        for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
            ca = Aer_col[a]
            for b in range(Aer_ptr[g], a + 1):  # columns ascend within a group: lower triangle
                s = 0.0
                for t in range(ke):
                    s += Aer_val[a * ke + t] * W[b, t]
                S[ca, Aer_col[b]] -= s / s2
    if R > 0:
        LS = _chol_dense(S)
        for i in range(R):
            if not LS[i, i] > 0.0:
                return -np.inf
            logdetM += 2.0 * math.log(LS[i, i])
    else:
        LS = np.zeros((0, 0))
    # ---- posterior mean mu = M^{-1} c with c = U'r / s2
    t_e = np.zeros((Ge, ke))
    ct = np.empty(R)
    for i in range(R):
        ct[i] = cr[i] / s2
    for g in range(Ge):
        for a in range(ke):
            s = 0.0
            for b in range(ke):
                s += Minv[g, a, b] * ce[g * ke + b]
            t_e[g, a] = s / s2
        for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
            s = 0.0
            for t in range(ke):
                s += Aer_val[a * ke + t] * t_e[g, t]
            ct[Aer_col[a]] -= s / s2
    mu_r = _solve_upper_t(LS, _solve_lower(LS, ct))
    mu_e = t_e.copy()
    for g in range(Ge):
        for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
            for t in range(ke):
                mu_e[g, t] -= W[a, t] * mu_r[Aer_col[a]]
    quad = 0.0
    for i in range(R):
        quad += cr[i] * mu_r[i]
    for g in range(Ge):
        for t in range(ke):
            quad += ce[g * ke + t] * mu_e[g, t]
    quad /= s2
    loglik = -0.5 * (n * LOG_2PI + n * math.log(s2) - logdetP_total - scal[2] + logdetM + rr / s2 - quad)
    logp += loglik
    if mode == MODE_DRAW:
        _draw(z, gamma, LS, mu_r, Lg, Minv, ce, Aer_val, Aer_ptr, Aer_col, s2, R, Ge, ke)
    if mode != MODE_GRAD:
        return logp
    _gradient(grad, sig, s2, n, rr, quad, mu_r, mu_e, LS, Minv, W, Aer_ptr, Aer_col, fixed_prec, Ps, Sig, Ls, sds, dLs, meta)
    return logp


@njit(cache=True)
def _draw(z, gamma, LS, mu_r, Lg, Minv, ce, Aer_val, Aer_ptr, Aer_col, s2, R, Ge, ke):
    """gamma_r ~ N(mu_r, S^{-1}); gamma_e,g | gamma_r ~ N(M_g^{-1}(c_g - M_gr gamma_r), M_g^{-1})."""
    gr = mu_r + _solve_upper_t(LS, z[:R].copy())
    gamma[:R] = gr
    for g in range(Ge):
        cg = np.empty(ke)
        for t in range(ke):
            cg[t] = ce[g * ke + t] / s2
        for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
            for t in range(ke):
                cg[t] -= Aer_val[a * ke + t] / s2 * gr[Aer_col[a]]
        noise = _solve_upper_t(Lg[g], z[R + g * ke:R + (g + 1) * ke].copy())
        for t in range(ke):
            s = 0.0
            for u in range(ke):
                s += Minv[g, t, u] * cg[u]
            gamma[R + g * ke + t] = s + noise[t]


@njit(cache=True)
def _gradient(grad, sig, s2, n, rr, quad, mu_r, mu_e, LS, Minv, W, Aer_ptr, Aer_col, fixed_prec, Ps, Sig, Ls, sds, dLs, meta):
    """Add the gradient of the log marginal likelihood to ``grad`` (EM identities, no n-sized work).

    With T_j = sum_g (M^{-1})_gg and Q_j = sum_g mu_g mu_g' over block j's groups,
    d loglik / dP_j = -(T_j + Q_j - G_j Sigma_j) / 2 and
    d loglik / d s2 = -(n - N + tr(M^{-1} D^{-1}) - RSS / s2) / (2 s2).
    """
    p, nb, e, R = meta[0], meta[1], meta[2], meta[3]
    ke, Ge = meta[4 + 5 * e], meta[5 + 5 * e]
    Sinv = np.zeros((R, R))
    if R > _SMALL:
        Sinv = np.linalg.inv(LS @ LS.T)
    elif R > 0:
        _inv_from_chol(LS, Sinv)
    kmax = Ps.shape[1]
    T = np.zeros((nb, kmax, kmax))
    Q = np.zeros((nb, kmax, kmax))
    n_gamma = p
    for j in range(nb):
        k, G, roff = meta[4 + 5 * j], meta[5 + 5 * j], meta[6 + 5 * j]
        n_gamma += k * G
        if j == e:
            continue
        for g in range(G):
            base = roff + g * k
            for a in range(k):
                for b in range(k):
                    T[j, a, b] += Sinv[base + a, base + b]
                    Q[j, a, b] += mu_r[base + a] * mu_r[base + b]
    for g in range(Ge):
        for a in range(ke):
            for b in range(ke):
                T[e, a, b] += Minv[g, a, b]
                Q[e, a, b] += mu_e[g, a] * mu_e[g, b]
        for a in range(Aer_ptr[g], Aer_ptr[g + 1]):
            ca = Aer_col[a]
            for b in range(Aer_ptr[g], Aer_ptr[g + 1]):
                sab = Sinv[ca, Aer_col[b]]
                for t in range(ke):
                    for u in range(ke):
                        T[e, t, u] += W[a, t] * sab * W[b, u]
    tr_md = 0.0
    mdm = 0.0
    for i in range(p):
        tr_md += fixed_prec[i] * Sinv[i, i]
        mdm += fixed_prec[i] * mu_r[i] * mu_r[i]
    for j in range(nb):
        k = meta[4 + 5 * j]
        for a in range(k):
            for b in range(k):
                tr_md += Ps[j, a, b] * T[j, b, a]
                mdm += Ps[j, a, b] * Q[j, b, a]
    rss = rr - s2 * quad - s2 * mdm
    d_s2 = -0.5 * (n - n_gamma + tr_md - rss / s2) / s2
    grad[0] += 2.0 * s2 * d_s2
    for j in range(nb):
        k, G, xoff = meta[4 + 5 * j], meta[5 + 5 * j], meta[7 + 5 * j]
        P = Ps[j, :k, :k].copy()
        GP = -0.5 * (T[j, :k, :k] + Q[j, :k, :k] - G * Sig[j, :k, :k])
        GS = -_mm(_mm(P, GP), P)
        L = Ls[j, :k, :k].copy()
        F = np.zeros((k, k))
        for a in range(k):
            for b in range(k):
                F[a, b] = sds[j, a] * L[a, b]
        GF = 2.0 * _mm(GS, F)
        for a in range(k):
            s = 0.0
            for b in range(k):
                s += GF[a, b] * L[a, b]
            grad[xoff + a] += sds[j, a] * s
        m = k * (k - 1) // 2
        for mm in range(m):
            s = 0.0
            for a in range(k):
                for b in range(a + 1):
                    s += sds[j, a] * GF[a, b] * dLs[j, mm, a, b]
            grad[xoff + k + mm] += s


# ----------------------------------------------------------------------------------- C callbacks
N_FLOAT = 9  # Arr, Aee, Aer_val, ce, cr, fixed_prec, scal, prior_par, eta
N_INT = 3  # Aer_ptr, Aer_col, meta


@intrinsic
def _as_void_pointer(typingctx, src):
    """A void pointer from an integer address (as nutpie's own numba backend does)."""
    sig = types.voidptr(src)

    def codegen(cgctx, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@njit(cache=True)
def _farr(hdr, i):
    return carray(_as_void_pointer(hdr[2 * i]), (hdr[2 * i + 1],), dtype=np.float64)


@njit(cache=True)
def _iarr(hdr, i):
    return carray(_as_void_pointer(hdr[2 * i]), (hdr[2 * i + 1],), dtype=np.int64)


_LOGP_SIG = types.int64(
    types.uint64, types.CPointer(types.double), types.CPointer(types.double), types.CPointer(types.double), types.voidptr
)
_EXPAND_SIG = types.int64(
    types.uint64, types.uint64, types.CPointer(types.double), types.CPointer(types.double), types.voidptr
)


@cfunc(_LOGP_SIG, cache=True)
def c_logp(dim, x_, out_, logp_, user_data):
    """nutpie's C log-density callback: ``user_data`` points to (address, length) pairs of the arrays."""
    try:
        hdr = carray(user_data, (2 * (N_FLOAT + N_INT),), dtype=np.uint64)
        x = carray(x_, (dim,))
        out = carray(out_, (dim,))
        logp = carray(logp_, (1,))
        empty = np.zeros(0)
        value = evaluate(
            x, MODE_GRAD, out, empty, empty,
            _farr(hdr, 0), _farr(hdr, 1), _farr(hdr, 2), _iarr(hdr, 9), _iarr(hdr, 10),
            _farr(hdr, 3), _farr(hdr, 4), _farr(hdr, 5), _farr(hdr, 6), _farr(hdr, 7), _farr(hdr, 8),
            _iarr(hdr, 11),
        )
        logp[0] = value
        if not np.isfinite(value):
            return 4
        for i in range(dim):
            if not np.isfinite(out[i]):
                return 3
    except Exception:  # noqa: BLE001 -- a failed Cholesky is a rejected point, not a crash
        return 1
    return 0


@cfunc(_EXPAND_SIG, cache=True)
def c_expand(dim, expanded, x_, out_, user_data):
    """nutpie's expand callback: keep the unconstrained point; everything else is derived afterwards."""
    x = carray(x_, (dim,))
    out = carray(out_, (expanded,))
    for i in range(dim):
        out[i] = x[i]
    return 0


@njit(cache=True)
def draw_all(xs, zs, gammas, Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta):
    """Conditional draws for many points: ``gammas[i]`` from ``xs[i]`` and standard normals ``zs[i]``."""
    empty = np.zeros(xs.shape[1])
    for i in range(xs.shape[0]):
        evaluate(xs[i], MODE_DRAW, empty, zs[i], gammas[i], Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta)


@njit(cache=True, nogil=True)
def evaluate_many(xs, mode, zs, gammas, out, Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta):
    """``out[i]`` = log density at ``xs[i]`` (-inf where invalid); mode 2 also draws ``gammas[i]`` from ``zs[i]``.

    Releases the GIL, so that threads can evaluate different rows at once.
    """
    grad = np.zeros(xs.shape[1])
    empty = np.zeros(0)
    for i in range(xs.shape[0]):
        try:
            if mode == MODE_DRAW:
                out[i] = evaluate(xs[i], MODE_DRAW, grad, zs[i], gammas[i], Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta)
            else:
                out[i] = evaluate(xs[i], MODE_LOGP, grad, empty, empty, Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta)
        except Exception:  # noqa: BLE001 -- a failed Cholesky is a point of zero density
            out[i] = -np.inf
        if not np.isfinite(out[i]):
            out[i] = -np.inf
