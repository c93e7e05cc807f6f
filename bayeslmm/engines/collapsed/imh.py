"""Independence Metropolis-Hastings on the variance parameters, for models whose dense part is large.

When the dense Schur complement is large (``R > MAX_NUTS``, e.g. InstEval's 1,144 lecturer and
department effects), a gradient costs several dense R x R inversions, so NUTS is replaced by
:func:`sample_imh`: an independence sampler whose proposal is a split Student-t around the posterior
mode (the Laplace approximation from finite differences of the log density, with a scale on either side
of the mode along each axis), with every proposal's effects drawn from their exact conditional by the
same Cholesky factor that gives its density. It needs one density per draw, evaluated in parallel
threads, and reports ``diverging`` (always False), ``acceptance_rate`` and the Pareto k of its
importance weights.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import xarray as xr

from bayeslmm.engines.collapsed.codes import MODE_DRAW, MODE_LOGP
from bayeslmm.engines.collapsed.packing import Packed
from bayeslmm.engines.posterior_names import dataset
from bayeslmm.engines.progress import Progress

__all__ = ["sample_imh", "find_mode", "IMH_NU", "IMH_SCALE", "IMH_DEFENSIVE", "IMH_MAX_TUNE", "IMH_MIN_ACCEPTANCE"]


def _log_density_many(
    packed: Packed, xs: np.ndarray, cores: int, zs: np.ndarray | None = None, progress=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Log densities at the rows of ``xs`` on ``cores`` threads; with ``zs`` also conditional draws of gamma.

    The threads run :meth:`Packed.evaluate_many` on small slices taken in turn (the kernel releases the GIL;
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

    done, lock = [0], threading.Lock()

    def run(i):
        a, b = bounds[i], bounds[i + 1]
        packed.evaluate_many(xs[a:b], mode, zs[a:b], gammas[a:b], out[a:b])
        if progress is not None:
            with lock:
                done[0] += b - a
                progress.update(done[0])

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
      LAPACK (which the kernels call) is loaded first, so that threadpoolctl limits it too.
    * Each density allocates R x R matrices (10 MB at R = 1144). glibc hands blocks that large out as
      fresh mmap-ed pages, and their page faults cost as much as the Cholesky itself (measured 28 ms
      instead of 17 ms for allocate + Cholesky); inside the block glibc keeps them in its heap instead
      (``mallopt``: mmap threshold 32 MiB, trim threshold 256 MiB), and restores glibc's defaults after.
    """

    def __init__(self):
        self.limiter, self.libc = None, None

    def __enter__(self):
        try:
            import scipy.linalg.cython_lapack  # noqa: F401 -- load the kernels' LAPACK before limiting it
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
    packed: Packed, *, draws: int, tune: int, chains: int, random_seed: int | None, cores: int = 2,
    progressbar: bool = False,
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
    with Progress(chains * steps, f"Independence sampler, {chains} chains", "proposals", enabled=progressbar) as bar:
        lp, gammas = _log_density_many(
            packed, xs, cores, rng.standard_normal((chains * steps, packed.n_gamma)), progress=bar if progressbar else None
        )
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
    stats = dataset(
        {
            "diverging": (("chain", "draw"), np.zeros((chains, draws), dtype=bool)),
            "accepted": (("chain", "draw"), accepted),
            "acceptance_rate": (("chain", "draw"), rate),
            "lp": (("chain", "draw"), lp[flat].reshape(chains, draws)),
        },
        coords,
        {
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
