"""numba kernels of the GLMM sampler: one compiled version (cached on disk) for every model.

The log density is that of the joint posterior of (fixed effects, group effects, variance parameters,
auxiliary parameter) in the Laplace-informed parametrization described in
:mod:`bayeslmm.engines.glmm`; everything here takes flat NumPy arrays.

Parameter vector ``x``::

    x[0:p]                 w: the centred fixed effects, beta_c = beta_hat + S^{-1} lam delta + Lb^{-T} w
                           (S = Lb Lb' their Laplace marginal precision given the variance parameters)
    x[xoff_j : ...]        per block: k_j SD parameters (log sd, or sd = scale softplus(x) for
                           light-tailed priors: :func:`_sd_transform`), then k_j (k_j - 1) / 2
                           unconstrained correlation parameters (Stan's canonical partial correlations)
    x[aux_off]             log dispersion (negative binomial) or log sigma (gaussian); absent otherwise
    x[zoff_j : ...]        per block: z (G_j k_j), level-major

Blocks are stored in processing order (fewest effects first): each block's levels are conditioned on
the fixed effects and the blocks before it (coupling ``cval``/``cptr``/``ccol``).

``meta`` (int64)::

    meta[0:8]  = n, p, J (blocks), family, n_dim, aux_off (-1 if none), kz (columns of Zv), aux prior row
    meta[8 + 9 j : 17 + 9 j] = k_j, G_j, xoff_j, zoff_j, prow_j (first prior row), hoff_j (offset in H),
                               coff_j (offset in c, u and b; A at coff_j * p), kcol_j (first column in Zv),
                               1 if the block's SDs enter the fixed effects' map, else 0

Level ``g`` of block ``j`` maps ``z`` to the group effects (with ``F = diag(sd) L`` the Cholesky factor
of the block's covariance, ``H`` and ``c`` the level's data information and pseudo-data at the Laplace
reference, ``A`` and ``C`` its coupling to the fixed effects and to earlier blocks)::

    P = I + F' H F = R R',   v = F' (c - A (beta_c - beta_hat) - C (b_earlier - b_hat)),
    u = P^{-1} v + R^{-T} z,   b = F u

and contributes ``-u'u / 2 - sum log R_ii`` (prior of ``b`` plus the log-Jacobian ``log |F| - log |R|``;
the ``log |F|`` cancels against the prior's normalising constant); the fixed effects contribute their
prior and ``-sum log diag Lb``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, cfunc, njit, types

# numba's disk cache watches only this file: after changing one of these helpers in the collapsed
# kernels, touch this file too (or clear the cache) so that the GLMM kernels recompile with it
from bayeslmm.engines.collapsed.kernels import (
    _EXPAND_SIG,
    _LOGP_SIG,
    _MANY_SIG,
    _as_void_pointer,
    _c_expand,
    _corr_cholesky,
    _positive_logp,
    _sd_transform,
)
from bayeslmm.engines.glmm.codes import (  # noqa: F401 -- the kernels compile these in
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

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


# ----------------------------------------------------------------------------------- special functions
@njit(cache=True)
def _digamma(x):
    """psi(x) for x > 0 (recurrence to x >= 6, then the asymptotic series; about 1e-13 relative)."""
    result = 0.0
    while x < 6.0:
        result -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f * (1.0 / 132)))))
    return result + math.log(x) - 0.5 / x - series


@njit(cache=True)
def _log_ndtr_and_ratio(x):
    """log Phi(x) and phi(x) / Phi(x), accurate in the far left tail."""
    if x > -37.0:
        cdf = 0.5 * math.erfc(-x * _INV_SQRT2)
        return math.log(cdf), math.exp(-0.5 * x * x) / _SQRT_2PI / cdf
    # Phi(x) = phi(x) / -x * (1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8 ...), relative error < 1e-12 here
    t = 1.0 / (x * x)
    s = 1.0 - t * (1.0 - t * (3.0 - t * (15.0 - t * 105.0)))
    log_pdf = -0.5 * x * x - math.log(_SQRT_2PI)
    return log_pdf - math.log(-x) + math.log(s), -x / s


@njit(cache=True)
def _row_loglik(family, y, trials, eta, r, d):
    """Sum over rows of the log-likelihood (up to terms constant in the parameters) and ``extra``, with
    which the log-likelihood's derivative in the auxiliary parameter ``r`` is ``d_r - extra`` (``d_r``
    from :func:`_nb_gamma_terms` for the negative binomial, 0 otherwise); ``d`` gets d loglik / d eta
    per row. For the negative binomial ``extra = sum_i [log(r + mu_i) + (r + y_i) / (r + mu_i)]`` and its
    gamma-function terms are left to :func:`_nb_gamma_terms` (they depend on the counts only through their
    distinct values); for the gaussian (``r = sigma``) ``extra = n / sigma - sum_i (y_i - eta_i)^2 / sigma^3``.

    ``log(1 + t)`` is used instead of ``log1p(t)`` for ``t`` in (0, 1]: its absolute error (what a log
    density needs) is below 1e-16, and it is several times faster.
    """
    n = eta.shape[0]
    total = 0.0
    if family == GAUSSIAN:
        inv_var = 1.0 / (r * r)
        ss = 0.0
        for i in range(n):
            e = y[i] - eta[i]
            ss += e * e
            d[i] = e * inv_var
        return -0.5 * ss * inv_var - n * math.log(r), n / r - ss * inv_var / r
    if family == LOGIT:
        for i in range(n):
            e = eta[i]
            t = math.exp(-abs(e))
            one_t = 1.0 + t
            mu = 1.0 / one_t if e > 0.0 else t / one_t
            total += y[i] * e - trials[i] * (max(e, 0.0) + math.log(one_t))
            d[i] = y[i] - trials[i] * mu
        return total, 0.0
    if family == POISSON:
        for i in range(n):
            mu = math.exp(eta[i])
            total += y[i] * eta[i] - mu
            d[i] = y[i] - mu
        return total, 0.0
    if family == NEGBIN:
        log_r = math.log(r)
        extra = 0.0
        for i in range(n):
            e = eta[i]
            # log(r + mu) and q = mu / (r + mu), stably
            if e > log_r:
                t = math.exp(log_r - e)
                log_rmu = e + math.log(1.0 + t)
                q = 1.0 / (1.0 + t)
            else:
                t = math.exp(e - log_r)
                log_rmu = log_r + math.log(1.0 + t)
                q = t / (1.0 + t)
            total += y[i] * e - (r + y[i]) * log_rmu
            d[i] = y[i] - (r + y[i]) * q
            extra += log_rmu + (r + y[i]) * (1.0 - q) / r
        return total + n * r * log_r, extra
    if family == PROBIT:
        for i in range(n):
            e = eta[i]
            value = 0.0
            di = 0.0
            if y[i] > 0.0:
                lp, ratio = _log_ndtr_and_ratio(e)
                value += y[i] * lp
                di += y[i] * ratio
            if trials[i] - y[i] > 0.0:
                lq, ratio = _log_ndtr_and_ratio(-e)
                value += (trials[i] - y[i]) * lq
                di -= (trials[i] - y[i]) * ratio
            total += value
            d[i] = di
        return total, 0.0
    # CLOGLOG: mu = 1 - exp(-exp(eta)); log(1 - mu) = -exp(eta)
    for i in range(n):
        e = eta[i]
        t = math.exp(e)
        value = -(trials[i] - y[i]) * t
        di = value
        if y[i] > 0.0:
            if t < 1e-300:
                value += y[i] * e  # -expm1(-t) = t to double precision
                di += y[i]
            else:
                value += y[i] * math.log(-math.expm1(-t))
                di += y[i] * t / math.expm1(t)
        total += value
        d[i] = di
    return total, 0.0


@njit(cache=True)
def _nb_gamma_terms(r, n, counts, values):
    """``sum_i [lgamma(y_i + r) - lgamma(r)]`` over the distinct counts ``values`` (multiplicities
    ``counts``), and the derivative in ``r`` of the whole negative binomial log-likelihood but the
    row sum :func:`_row_loglik` returns."""
    value = -n * math.lgamma(r)
    d_r = -n * _digamma(r) + n * (math.log(r) + 1.0)
    for a in range(values.shape[0]):
        value += counts[a] * math.lgamma(values[a] + r)
        d_r += counts[a] * _digamma(values[a] + r)
    return value, d_r


@njit(cache=True)
def _fixed_logp(kind, a, b, c, x):
    """Log density (up to a constant) of a fixed-effect prior and its derivative."""
    if kind == F_NORMAL:  # a = mu, b = sigma
        z = (x - a) / b
        return -0.5 * z * z, -z / b
    if kind == F_STUDENT_T:  # a = nu, b = mu, c = sigma
        z = (x - b) / c
        return -0.5 * (a + 1.0) * math.log1p(z * z / a), -(a + 1.0) * z / (c * (a + z * z))
    # F_CAUCHY: a = alpha (location), b = beta (scale)
    z = (x - a) / b
    return -math.log1p(z * z), -2.0 * z / (b * (1.0 + z * z))


# ----------------------------------------------------------------------------------- small matrices
@njit(cache=True)
def _chol(A, L, k):
    """Lower Cholesky of the leading k x k of ``A`` into ``L``; False if not positive definite."""
    for i in range(k):
        for j in range(i + 1):
            s = A[i, j]
            for t in range(j):
                s -= L[i, t] * L[j, t]
            if i == j:
                if not s > 0.0:
                    return False
                L[i, i] = math.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
        for j in range(i + 1, k):
            L[i, j] = 0.0
    return True


@njit(cache=True)
def _lower_inverse(L, Li, k):
    """Inverse of a lower-triangular ``L`` into ``Li``."""
    for i in range(k):
        for j in range(k):
            Li[i, j] = 0.0
    for i in range(k):
        Li[i, i] = 1.0 / L[i, i]
        for j in range(i):
            s = 0.0
            for t in range(j, i):
                s -= L[i, t] * Li[t, j]
            Li[i, j] = s / L[i, i]


# ----------------------------------------------------------------------------------- the density
@njit(cache=True)
def _block_factors(x, J, kmax, meta, prior_par, eta_lkj, Fs, dFs, grad, want_grad):
    """SD priors, LKJ densities and Jacobians of every block; ``Fs[j] = diag(sd) L`` and its derivatives
    ``dFs[j, m]`` in the block's parameters (log SDs, then correlation parameters). Returns the log density."""
    logp = 0.0
    Lc = np.zeros((kmax, kmax))
    ncorr = max(kmax * (kmax - 1) // 2, 1)
    dLc = np.zeros((ncorr, kmax, kmax))
    dlogj = np.zeros(ncorr)
    sds = np.empty(kmax)
    dsds = np.empty(kmax)
    for j in range(J):
        base = 8 + 9 * j
        k, xoff, prow = meta[base], meta[base + 2], meta[base + 4]
        for t in range(k):
            row = prow + t
            sd, dsd, logj, dlogj_sd = _sd_transform(x[xoff + t], prior_par[4 * row + 3])
            sds[t] = sd
            dsds[t] = dsd
            lp, dlp = _positive_logp(int(prior_par[4 * row]), prior_par[4 * row + 1], prior_par[4 * row + 2], sd)
            logp += lp + logj
            if want_grad:
                grad[xoff + t] += dsd * dlp + dlogj_sd
        if k == 1:
            Fs[j, 0, 0] = sds[0]
            dFs[j, 0, 0, 0] = dsds[0]
            continue
        m = k * (k - 1) // 2
        logp += _corr_cholesky(x[xoff + k:xoff + k + m], k, Lc[:k, :k], dLc[:m, :k, :k], dlogj[:m])
        for i in range(1, k):  # LKJ(eta) density of the Cholesky factor (Stan's lkj_corr_cholesky)
            logp += (k - i + 2.0 * eta_lkj[j] - 3.0) * math.log(Lc[i, i])
        if want_grad:
            for mm in range(m):
                grad[xoff + k + mm] += dlogj[mm]
                for i in range(1, k):
                    grad[xoff + k + mm] += (k - i + 2.0 * eta_lkj[j] - 3.0) * dLc[mm, i, i] / Lc[i, i]
        for a in range(k):
            for b in range(a + 1):
                Fs[j, a, b] = sds[a] * Lc[a, b]
        for t in range(k):  # d F / d x_t: row t of F times (d sd_t / d x_t) / sd_t
            for b in range(k):
                dFs[j, t, t, b] = dsds[t] * Lc[t, b]
        for mm in range(m):
            for a in range(k):
                for b in range(k):
                    dFs[j, k + mm, a, b] = sds[a] * dLc[mm, a, b]
    return logp


@njit(cache=True)
def _ctilde(ct, k, g, coff, p, c, A, dbeta, cval, cptr, ccol, b_all, bref):
    """``c - A (beta - beta_hat) - C (b_earlier - b_hat_earlier)`` of level ``g`` of a block."""
    for a in range(k):
        row = coff + g * k + a
        s = c[row]
        for t in range(p):
            s -= A[row * p + t] * dbeta[t]
        for e in range(cptr[row], cptr[row + 1]):
            col = ccol[e]
            s -= cval[e] * (b_all[col] - bref[col])
        ct[a] = s


@njit(cache=True)
def _scatter_coupling(fv, k, g, coff, p, A, cval, cptr, ccol, gbeta, bbar):
    """Reverse pass of :func:`_ctilde`, given ``fv = F vbar``."""
    for a in range(k):
        row = coff + g * k + a
        for t in range(p):
            gbeta[t] -= A[row * p + t] * fv[a]
        for e in range(cptr[row], cptr[row + 1]):
            bbar[ccol[e]] -= cval[e] * fv[a]


@njit(cache=True)
def _solve_lower(R, x, k):
    """``x = R^{-1} x`` in place (R lower triangular, leading k x k)."""
    for a in range(k):
        s = x[a]
        for t in range(a):
            s -= R[a, t] * x[t]
        x[a] = s / R[a, a]


@njit(cache=True)
def _solve_upper_t(R, x, k):
    """``x = R^{-T} x`` in place."""
    for a in range(k - 1, -1, -1):
        s = x[a]
        for t in range(a + 1, k):
            s -= R[t, a] * x[t]
        x[a] = s / R[a, a]


@njit(cache=True)
def evaluate(x, mode, grad, out, y, trials, offset, X, Zv, H, c, A, cval, bhat, bref, beta_par, fixed_par, prior_par,
             eta_lkj, ytab, gidx, cptr, ccol, meta):
    """Log posterior density at ``x``, its gradient, or the fixed and group effects of ``x``.

    Parameters
    ----------
    x : ndarray, shape (d,)
        Unconstrained parameters (layout in the module docstring).
    mode : int
        0: log density; 1: also ``grad``; 2: fill ``out`` with ``(beta_c, b)`` and return without
        evaluating the likelihood.
    grad : ndarray, shape (d,)
        Output gradient (mode 1).
    out : ndarray, shape (p + sum G_j k_j,)
        Output centred fixed effects and group effects, blocks in processing order (mode 2).
    y, trials, offset : (n,)
        Response (successes or counts), binomial trials (ones otherwise), offset.
    X : (p n,) centred fixed-effects matrix, column-major.   Zv : (kz n,) every block's columns, column-major.
    H : (sum G k^2,), c : (sum G k,), A : (sum G k p,)  the Laplace reference of every level: data
        information, pseudo-data and coupling to the fixed effects.
    cval : (nnz,) with cptr (sum G k + 1,) and ccol (nnz,)  coupling of every (level, term) to the
        effects of the blocks processed before (CSR, columns index ``b``).
    bhat : (p,) fixed effects at the reference.   bref : (sum G k,) group effects at the reference.
    beta_par : (p p + p + 1,)  ``S0``, ``delta0``, ``lam`` of the fixed effects' map.
    fixed_par : (4 p,) fixed-effect priors.  prior_par : (4 rows,) positive priors (SDs, then the
    dispersion): kind, two parameters, and the scale of the SD's softplus transform (0: exp).  eta_lkj : (J,) LKJ shapes.  ytab : the distinct counts then their multiplicities
    (negative binomial; empty otherwise).  gidx : (J n,) level of every row in every block.
    meta : int64, see the module docstring.

    Returns
    -------
    float
        The log density (priors, likelihood and Jacobians, up to a constant); -inf where invalid.
    """
    n, p, J, family, d_all, aux_off = meta[0], meta[1], meta[2], meta[3], meta[4], meta[5]
    want_grad = mode == MODE_GRAD
    if want_grad:
        for i in range(d_all):
            grad[i] = 0.0
    logp = 0.0
    # ---- auxiliary parameter: negative binomial dispersion or gaussian sigma
    r = 1.0
    if aux_off >= 0:
        r = math.exp(x[aux_off])
        row = meta[7]
        lp, dlp = _positive_logp(int(prior_par[4 * row]), prior_par[4 * row + 1], prior_par[4 * row + 2], r)
        logp += lp + x[aux_off]
        if want_grad:
            grad[aux_off] = r * dlp + 1.0
    # ---- block factors F = diag(sd) L
    kmax = 1
    nb_total = 0
    for j in range(J):
        kmax = max(kmax, meta[8 + 9 * j])
        nb_total += meta[8 + 9 * j] * meta[9 + 9 * j]
    mmax = kmax * (kmax + 1) // 2
    Fs = np.zeros((J, kmax, kmax))
    dFs = np.zeros((J, mmax, kmax, kmax))
    logp += _block_factors(x, J, kmax, meta, prior_par, eta_lkj, Fs, dFs, grad, want_grad)
    # ---- pass 1 over the levels: P = I + F'HF = R R', At = R^{-1} F'A, t0 = R^{-1} F'c; K, delta
    nh = meta[8 + 9 * (J - 1) + 5] + meta[8 + 9 * (J - 1) + 1] * meta[8 + 9 * (J - 1)] ** 2
    R_all = np.zeros(nh)
    HF_all = np.empty(nh)
    At_all = np.empty(nb_total * p)
    t0_all = np.empty(nb_total)
    K = np.zeros((p, p))
    delta = np.zeros(p)
    for a in range(p):
        delta[a] = beta_par[p * p + a]
    HF = np.empty((kmax, kmax))
    P = np.empty((kmax, kmax))
    R = np.zeros((kmax, kmax))
    ct = np.empty(kmax)
    for j in range(J):
        base = 8 + 9 * j
        k, G, hoff, coff = meta[base], meta[base + 1], meta[base + 5], meta[base + 6]
        F = Fs[j, :k, :k]
        in_map = meta[base + 8] != 0
        if k == 1:  # a random intercept or a single slope: scalars, no small-matrix loops
            sd = F[0, 0]
            for g in range(G):
                Rg = math.sqrt(1.0 + sd * sd * H[hoff + g])
                logp -= math.log(Rg)
                R_all[hoff + g] = Rg
                HF_all[hoff + g] = H[hoff + g] * sd
                if not in_map:
                    continue
                r0 = coff + g
                scale = sd / Rg
                ta = scale * c[r0]
                t0_all[r0] = ta
                rowa = r0 * p
                for col in range(p):
                    v = scale * A[rowa + col]
                    At_all[rowa + col] = v
                    delta[col] -= v * ta
                    for col2 in range(col + 1):
                        K[col, col2] += v * At_all[rowa + col2]
            continue
        for g in range(G):
            h0 = hoff + g * k * k
            for a in range(k):
                for bb in range(k):
                    s = 0.0
                    for t in range(k):
                        s += H[h0 + a * k + t] * F[t, bb]
                    HF[a, bb] = s
            for a in range(k):
                for bb in range(a + 1):
                    s = 1.0 if a == bb else 0.0
                    for t in range(k):
                        s += F[t, a] * HF[t, bb]
                    P[a, bb] = s
            if not _chol(P, R, k):
                return -np.inf
            for a in range(k):
                logp -= math.log(R[a, a])
                for bb in range(k):
                    R_all[h0 + a * k + bb] = R[a, bb]
                    HF_all[h0 + a * k + bb] = HF[a, bb]
            if not in_map:
                continue
            r0 = coff + g * k
            for a in range(k):
                s = 0.0
                for t in range(k):
                    s += F[t, a] * c[r0 + t]
                ct[a] = s
            _solve_lower(R, ct, k)
            for a in range(k):
                t0_all[r0 + a] = ct[a]
            for col in range(p):
                for a in range(k):
                    s = 0.0
                    for t in range(k):
                        s += F[t, a] * A[(r0 + t) * p + col]
                    ct[a] = s
                _solve_lower(R, ct, k)
                for a in range(k):
                    At_all[(r0 + a) * p + col] = ct[a]
            for a in range(k):
                rowa = (r0 + a) * p
                ta = t0_all[r0 + a]
                for col in range(p):
                    v = At_all[rowa + col]
                    delta[col] -= v * ta
                    for col2 in range(col + 1):
                        K[col, col2] += v * At_all[rowa + col2]
    # ---- fixed effects: beta = bhat + S^{-1} lam delta + Lb^{-T} w, S = S0 - lam K = Lb Lb'
    lam = beta_par[p * p + p]
    S = np.empty((p, p))
    Lb = np.zeros((p, p))
    for a in range(p):
        for bb in range(a + 1):
            S[a, bb] = beta_par[a * p + bb] - lam * K[a, bb]
    if not _chol(S, Lb, p):
        return -np.inf
    mb = np.empty(p)
    for a in range(p):
        mb[a] = lam * delta[a]
        logp -= math.log(Lb[a, a])
    _solve_lower(Lb, mb, p)
    _solve_upper_t(Lb, mb, p)  # mb = S^{-1} lam delta
    omega = np.empty(p)
    for a in range(p):
        omega[a] = x[a]
    _solve_upper_t(Lb, omega, p)  # omega = Lb^{-T} w
    beta = np.empty(p)
    dbeta = np.empty(p)
    gbeta = np.zeros(p)
    for a in range(p):
        dbeta[a] = mb[a] + omega[a]
        beta[a] = bhat[a] + dbeta[a]
        lp, dlp = _fixed_logp(int(fixed_par[4 * a]), fixed_par[4 * a + 1], fixed_par[4 * a + 2], fixed_par[4 * a + 3], beta[a])
        logp += lp
        gbeta[a] = dlp
    # ---- pass 2: group effects block by block, b = F u, u = R^{-T} (R^{-1} F' ct + z)
    b_all = np.empty(nb_total)
    u_all = np.empty(nb_total)
    ct_all = np.empty(nb_total)  # c - A dbeta - C db_earlier of every level, kept for the reverse pass
    w = np.empty(kmax)
    for j in range(J):
        base = 8 + 9 * j
        k, G, zoff, hoff, coff = meta[base], meta[base + 1], meta[base + 3], meta[base + 5], meta[base + 6]
        F = Fs[j, :k, :k]
        if k == 1:
            sd = F[0, 0]
            for g in range(G):
                _ctilde(ct, 1, g, coff, p, c, A, dbeta, cval, cptr, ccol, b_all, bref)
                ct_all[coff + g] = ct[0]
                Rg = R_all[hoff + g]
                u = (sd * ct[0] / Rg + x[zoff + g]) / Rg
                u_all[coff + g] = u
                b_all[coff + g] = sd * u
                logp -= 0.5 * u * u
            continue
        for g in range(G):
            h0 = hoff + g * k * k
            for a in range(k):
                for bb in range(a + 1):
                    R[a, bb] = R_all[h0 + a * k + bb]
            _ctilde(ct, k, g, coff, p, c, A, dbeta, cval, cptr, ccol, b_all, bref)
            for a in range(k):
                ct_all[coff + g * k + a] = ct[a]
            for a in range(k):
                s = 0.0
                for t in range(k):
                    s += F[t, a] * ct[t]
                w[a] = s
            _solve_lower(R, w, k)
            for a in range(k):
                w[a] += x[zoff + g * k + a]
            _solve_upper_t(R, w, k)
            uu = 0.0
            for a in range(k):
                u_all[coff + g * k + a] = w[a]
                uu += w[a] * w[a]
            logp -= 0.5 * uu
            for a in range(k):
                s = 0.0
                for t in range(a + 1):
                    s += F[a, t] * w[t]
                b_all[coff + g * k + a] = s
    if mode == MODE_DRAW:
        for a in range(p):
            out[a] = beta[a]
        for i in range(nb_total):
            out[p + i] = b_all[i]
        return logp
    # ---- likelihood: column passes over the rows (X, Zv and gidx are stored column-major)
    eta = offset.copy()
    for a in range(p):
        ba = beta[a]
        col = a * n
        for i in range(n):
            eta[i] += X[col + i] * ba
    for j in range(J):
        base = 8 + 9 * j
        k, coff, kcol = meta[base], meta[base + 6], meta[base + 7]
        grow = j * n
        for t in range(k):
            zcol = (kcol + t) * n
            for i in range(n):
                eta[i] += Zv[zcol + i] * b_all[coff + gidx[grow + i] * k + t]
    d = np.empty(n)
    value, extra = _row_loglik(family, y, trials, eta, r, d)
    logp += value
    d_r = 0.0
    if family == NEGBIN:
        half = ytab.shape[0] // 2
        value, d_r = _nb_gamma_terms(r, n, ytab[half:], ytab[:half])
        logp += value
    if not want_grad or not np.isfinite(logp):
        return logp
    if aux_off >= 0:
        grad[aux_off] += r * (d_r - extra)
    for a in range(p):
        s = 0.0
        col = a * n
        for i in range(n):
            s += X[col + i] * d[i]
        gbeta[a] += s
    bbar = np.zeros(nb_total)
    for j in range(J):
        base = 8 + 9 * j
        k, coff, kcol = meta[base], meta[base + 6], meta[base + 7]
        grow = j * n
        for t in range(k):
            zcol = (kcol + t) * n
            for i in range(n):
                bbar[coff + gidx[grow + i] * k + t] += Zv[zcol + i] * d[i]
    # ---- reverse pass through the group effects, last block first (it feeds the earlier ones' bbar)
    Ri = np.zeros((kmax, kmax))
    dP = np.empty((kmax, kmax))
    Phi = np.zeros((kmax, kmax))
    Tm = np.empty((kmax, kmax))
    w1 = np.empty(kmax)
    w2 = np.empty(kmax)
    ubar = np.empty(kmax)
    zbar = np.empty(kmax)
    vbar = np.empty(kmax)
    fv = np.empty(kmax)
    gth = np.zeros(mmax)
    for j in range(J - 1, -1, -1):
        base = 8 + 9 * j
        k, G, xoff, zoff, hoff, coff = meta[base], meta[base + 1], meta[base + 2], meta[base + 3], meta[base + 5], meta[base + 6]
        F = Fs[j, :k, :k]
        nm = k * (k + 1) // 2
        for mm in range(nm):
            gth[mm] = 0.0
        if k == 1:
            sd, dsd = F[0, 0], dFs[j, 0, 0, 0]
            for g in range(G):
                ct[0] = ct_all[coff + g]
                Rg = R_all[hoff + g]
                Pg = Rg * Rg
                h = H[hoff + g]
                u = u_all[coff + g]
                w1s = sd * ct[0] / Pg
                w2s = u - w1s
                bb = bbar[coff + g]
                ub = sd * bb - u
                zb = ub / Rg
                vb = ub / Pg
                grad[zoff + g] = zb
                fv[0] = sd * vb
                _scatter_coupling(fv, 1, g, coff, p, A, cval, cptr, ccol, gbeta, bbar)
                dPg = 2.0 * dsd * sd * h
                dRg = dPg / (2.0 * Rg)
                gth[0] += bb * dsd * u - vb * dPg * w1s + ct[0] * dsd * vb - w2s * dRg * zb - dPg / (2.0 * Pg)
            grad[xoff] += gth[0]
            continue
        for g in range(G):
            h0 = hoff + g * k * k
            for a in range(k):
                for bb in range(k):
                    R[a, bb] = R_all[h0 + a * k + bb]
                    HF[a, bb] = HF_all[h0 + a * k + bb]
            _lower_inverse(R, Ri, k)
            for a in range(k):
                ct[a] = ct_all[coff + g * k + a]
            # w1 = P^{-1} F' ct, w2 = u - w1
            for a in range(k):
                s = 0.0
                for t in range(k):
                    s += F[t, a] * ct[t]
                w1[a] = s
            _solve_lower(R, w1, k)
            _solve_upper_t(R, w1, k)
            for a in range(k):
                w2[a] = u_all[coff + g * k + a] - w1[a]
            # ubar = F' bbar - u; zbar = R^{-1} ubar; vbar = R^{-T} zbar
            for a in range(k):
                s = -u_all[coff + g * k + a]
                for t in range(k):
                    s += F[t, a] * bbar[coff + g * k + t]
                ubar[a] = s
            for a in range(k):
                s = 0.0
                for t in range(a + 1):
                    s += Ri[a, t] * ubar[t]
                zbar[a] = s
                grad[zoff + g * k + a] = s
                vbar[a] = s
            _solve_upper_t(R, vbar, k)
            for a in range(k):
                s = 0.0
                for t in range(k):
                    s += F[a, t] * vbar[t]
                fv[a] = s
            _scatter_coupling(fv, k, g, coff, p, A, cval, cptr, ccol, gbeta, bbar)
            # the block's parameters, forward mode: one pass per parameter
            for mm in range(nm):
                dF = dFs[j, mm, :k, :k]
                for a in range(k):  # dP = dF' H F + F' H dF
                    for bb in range(k):
                        s = 0.0
                        for t in range(k):
                            s += dF[t, a] * HF[t, bb]
                        Tm[a, bb] = s
                for a in range(k):
                    for bb in range(k):
                        dP[a, bb] = Tm[a, bb] + Tm[bb, a]
                total = 0.0
                for a in range(k):  # bbar' dF u + ct' dF vbar - vbar' dP w1
                    s1 = 0.0
                    s2 = 0.0
                    s3 = 0.0
                    for t in range(k):
                        s1 += dF[a, t] * u_all[coff + g * k + t]
                        s2 += dF[a, t] * vbar[t]
                        s3 += dP[a, t] * w1[t]
                    total += bbar[coff + g * k + a] * s1 + ct[a] * s2 - vbar[a] * s3
                # Phi = lower(Ri dP Ri') with half diagonal: dR = R Phi; - w2' dR zbar, and the
                # Jacobian's - tr(P^{-1} dP) / 2 = - tr(Phi)
                for a in range(k):
                    for bb in range(k):
                        s = 0.0
                        for t in range(a + 1):
                            s += Ri[a, t] * dP[t, bb]
                        Tm[a, bb] = s
                for a in range(k):
                    for bb in range(a + 1):
                        s = 0.0
                        for t in range(bb + 1):
                            s += Tm[a, t] * Ri[bb, t]
                        Phi[a, bb] = 0.5 * s if a == bb else s
                for a in range(k):
                    s = 0.0
                    for t in range(a + 1):
                        q = 0.0
                        for e2 in range(t + 1):
                            q += Phi[t, e2] * zbar[e2]
                        s += R[a, t] * q
                    total -= w2[a] * s + Phi[a, a]
                gth[mm] += total
        for mm in range(nm):
            grad[xoff + mm] += gth[mm]
    # ---- reverse pass through the fixed effects' map
    # wbar = Lb^{-1} gbeta; s1 = S^{-1} gbeta; Sbar = -s1 mb' - Lb^{-T} T Lb^{-1} - S^{-1} / 2, with
    # T = lower(w wbar') (half diagonal); Kbar = -lam sym(Sbar); deltabar = lam s1
    wbar = gbeta.copy()
    _solve_lower(Lb, wbar, p)
    for a in range(p):
        grad[a] = wbar[a]
    s1 = wbar.copy()
    _solve_upper_t(Lb, s1, p)
    Li = np.zeros((p, p))
    _lower_inverse(Lb, Li, p)
    Tw = np.zeros((p, p))
    for a in range(p):
        for bb in range(a):
            Tw[a, bb] = x[a] * wbar[bb]
        Tw[a, a] = 0.5 * x[a] * wbar[a]
    TL = np.zeros((p, p))  # Tw Li (both lower triangular), then M1 = Li' TL: two O(p^3) products
    for t in range(p):
        for bb in range(t + 1):
            q = 0.0
            for e2 in range(bb, t + 1):
                q += Tw[t, e2] * Li[e2, bb]
            TL[t, bb] = q
    M1 = np.zeros((p, p))
    for a in range(p):
        for bb in range(p):
            s = 0.0
            for t in range(max(a, bb), p):
                s += Li[t, a] * TL[t, bb]
            M1[a, bb] = s
    Kbar = np.empty((p, p))
    for a in range(p):
        for bb in range(p):
            sinv = 0.0
            for t in range(max(a, bb), p):
                sinv += Li[t, a] * Li[t, bb]
            sb = -0.5 * (s1[a] * mb[bb] + s1[bb] * mb[a]) - 0.5 * (M1[a, bb] + M1[bb, a]) - 0.5 * sinv
            Kbar[a, bb] = -lam * sb
    dbar = np.empty(p)
    for a in range(p):
        dbar[a] = lam * s1[a]
    # ---- pass over the levels: K and delta depend on the variance parameters (forward mode)
    Y = np.empty((kmax, p))
    E = np.empty((kmax, p))
    EY = np.empty((kmax, kmax))
    y0 = np.empty(kmax)
    gd = np.empty(kmax)
    for j in range(J):
        base = 8 + 9 * j
        k, G, xoff, hoff, coff = meta[base], meta[base + 1], meta[base + 2], meta[base + 5], meta[base + 6]
        if meta[base + 8] == 0:
            continue
        nm = k * (k + 1) // 2
        for mm in range(nm):
            gth[mm] = 0.0
        if k == 1:
            dsd = dFs[j, 0, 0, 0]
            for g in range(G):
                r0 = coff + g
                Rg = R_all[hoff + g]
                y0s = t0_all[r0] / Rg  # P^{-1} F' c
                gds = 0.0
                eys = 0.0
                dA = 0.0
                rowa = r0 * p
                for col in range(p):
                    yc = At_all[rowa + col] / Rg  # Y = P^{-1} F' A
                    q = 0.0
                    for col2 in range(p):
                        q += At_all[rowa + col2] * Kbar[col2, col]
                    ec = q / Rg  # E = Y Kbar
                    gds += yc * dbar[col]
                    eys += ec * yc
                    dA += A[rowa + col] * (2.0 * ec - y0s * dbar[col])
                dPg = 2.0 * dsd * HF_all[hoff + g]
                gth[0] += -dPg * (eys - gds * y0s) - gds * dsd * c[r0] + dsd * dA
            grad[xoff] += gth[0]
            continue
        for g in range(G):
            h0 = hoff + g * k * k
            r0 = coff + g * k
            for a in range(k):
                for bb in range(k):
                    R[a, bb] = R_all[h0 + a * k + bb]
                    HF[a, bb] = HF_all[h0 + a * k + bb]
                y0[a] = t0_all[r0 + a]
            _lower_inverse(R, Ri, k)
            _solve_upper_t(R, y0, k)  # y0 = P^{-1} F' c
            for col in range(p):  # Y = R^{-T} At = P^{-1} F' A
                for a in range(k):
                    ct[a] = At_all[(r0 + a) * p + col]
                _solve_upper_t(R, ct, k)
                for a in range(k):
                    Y[a, col] = ct[a]
            for a in range(k):
                s = 0.0
                for col in range(p):
                    q = 0.0
                    for col2 in range(p):
                        q += Y[a, col2] * Kbar[col2, col]
                    E[a, col] = q
                    s += Y[a, col] * dbar[col]
                gd[a] = s
            for a in range(k):
                for bb in range(k):
                    s = 0.0
                    for col in range(p):
                        s += E[a, col] * Y[bb, col]
                    EY[a, bb] = s
            for mm in range(nm):
                dF = dFs[j, mm, :k, :k]
                for a in range(k):  # dP = dF' H F + F' H dF
                    for bb in range(k):
                        s = 0.0
                        for t in range(k):
                            s += dF[t, a] * HF[t, bb]
                        Tm[a, bb] = s
                total = 0.0
                for a in range(k):
                    for bb in range(k):
                        dPab = Tm[a, bb] + Tm[bb, a]
                        total -= dPab * (EY[a, bb] - gd[a] * y0[bb])
                for a in range(k):
                    s = 0.0
                    for t in range(k):
                        s += dF[t, a] * c[r0 + t]
                    total -= gd[a] * s  # - gd' dv0
                    for col in range(p):
                        s = 0.0
                        for t in range(k):
                            s += dF[t, a] * A[(r0 + t) * p + col]
                        total += s * (2.0 * E[a, col] - y0[a] * dbar[col])  # 2 <dG, E> - y0' dG dbar
                gth[mm] += total
        for mm in range(nm):
            grad[xoff + mm] += gth[mm]
    return logp


@njit(cache=True, nogil=True)
def evaluate_many(xs, mode, outs, values, y, trials, offset, X, Zv, H, c, A, cval, bhat, bref, beta_par, fixed_par,
                  prior_par, eta_lkj, ytab, gidx, cptr, ccol, meta):
    """``values[i]`` = log density at ``xs[i]``; mode 2 also fills ``outs[i]`` with ``(beta_c, b)``."""
    grad = np.zeros(xs.shape[1])
    for i in range(xs.shape[0]):
        values[i] = evaluate(xs[i], mode, grad, outs[i], y, trials, offset, X, Zv, H, c, A, cval, bhat, bref,
                             beta_par, fixed_par, prior_par, eta_lkj, ytab, gidx, cptr, ccol, meta)


# ----------------------------------------------------------------------------------- C callbacks
N_FLOAT = 16  # y, trials, offset, X, Zv, H, c, A, cval, bhat, bref, beta_par, fixed_par, prior_par, eta_lkj, ytab
N_INT = 4  # gidx, cptr, ccol, meta

@njit(cache=True)
def _header_arrays(hdr):
    """The kernel's arrays, in :func:`evaluate`'s order, from the (address, length) pairs in ``hdr``
    (the float64 arrays, then the int64 ones: :meth:`CallbackDensity.over_arrays`)."""
    f64, i64 = np.float64, np.int64
    return (
        carray(_as_void_pointer(hdr[0]), (hdr[1],), dtype=f64),
        carray(_as_void_pointer(hdr[2]), (hdr[3],), dtype=f64),
        carray(_as_void_pointer(hdr[4]), (hdr[5],), dtype=f64),
        carray(_as_void_pointer(hdr[6]), (hdr[7],), dtype=f64),
        carray(_as_void_pointer(hdr[8]), (hdr[9],), dtype=f64),
        carray(_as_void_pointer(hdr[10]), (hdr[11],), dtype=f64),
        carray(_as_void_pointer(hdr[12]), (hdr[13],), dtype=f64),
        carray(_as_void_pointer(hdr[14]), (hdr[15],), dtype=f64),
        carray(_as_void_pointer(hdr[16]), (hdr[17],), dtype=f64),
        carray(_as_void_pointer(hdr[18]), (hdr[19],), dtype=f64),
        carray(_as_void_pointer(hdr[20]), (hdr[21],), dtype=f64),
        carray(_as_void_pointer(hdr[22]), (hdr[23],), dtype=f64),
        carray(_as_void_pointer(hdr[24]), (hdr[25],), dtype=f64),
        carray(_as_void_pointer(hdr[26]), (hdr[27],), dtype=f64),
        carray(_as_void_pointer(hdr[28]), (hdr[29],), dtype=f64),
        carray(_as_void_pointer(hdr[30]), (hdr[31],), dtype=f64),
        carray(_as_void_pointer(hdr[32]), (hdr[33],), dtype=i64),
        carray(_as_void_pointer(hdr[34]), (hdr[35],), dtype=i64),
        carray(_as_void_pointer(hdr[36]), (hdr[37],), dtype=i64),
        carray(_as_void_pointer(hdr[38]), (hdr[39],), dtype=i64),
    )


@njit(cache=True)
def _evaluate_at(x, mode, grad, out, hdr):
    """:func:`evaluate` on the arrays in ``hdr`` (star arguments: numba refuses them inside ``try``)."""
    return evaluate(x, mode, grad, out, *_header_arrays(hdr))


@njit(cache=True)
def _evaluate_many_at(xs, mode, outs, values, hdr):
    """:func:`evaluate_many` on the arrays in ``hdr``."""
    evaluate_many(xs, mode, outs, values, *_header_arrays(hdr))


def _c_logp(dim, x_, out_, logp_, user_data):
    """nutpie's C log-density callback: ``user_data`` points to (address, length) pairs of the arrays."""
    try:
        hdr = carray(user_data, (2 * (N_FLOAT + N_INT),), dtype=np.uint64)
        x = carray(x_, (dim,))
        grad = carray(out_, (dim,))
        logp = carray(logp_, (1,))
        empty = np.zeros(0)
        # a runtime int, not the literal MODE_GRAD: a literal argument makes numba compile evaluate a
        # second time (its other caller, evaluate_many, passes an int64)
        mode = x.size * 0 + MODE_GRAD
        value = _evaluate_at(x, mode, grad, empty, hdr)
        logp[0] = value
        if not np.isfinite(value):
            return 4
        for i in range(dim):
            if not np.isfinite(grad[i]):
                return 3
    except Exception:  # noqa: BLE001 -- an invalid point is a rejected point, not a crash
        return 1
    return 0


def _c_evaluate_many(mode, shape_, xs_, outs_, unused_, values_, user_data):
    """:func:`evaluate_many` as a C function (``bayeslmm.engines.native``): ``shape_`` points to
    (rows, n_dim, columns of outs, 0), ``user_data`` as for :func:`_c_logp`; returns 1 if it raised."""
    shape = carray(shape_, (4,), dtype=np.int64)
    n, d, n_out = shape[0], shape[1], shape[2]
    try:
        hdr = carray(user_data, (2 * (N_FLOAT + N_INT),), dtype=np.uint64)
        _evaluate_many_at(carray(xs_, (n, d)), mode, carray(outs_, (n, n_out)), carray(values_, (n,)), hdr)
    except Exception:  # noqa: BLE001 -- reported to the caller by the return value
        return 1
    return 0


_CALLBACKS: dict = {}
# the C functions: name -> (signature, Python function)
_C_FUNCTIONS = {
    "logp": (_LOGP_SIG, _c_logp), "expand": (_EXPAND_SIG, _c_expand), "evaluate_many": (_MANY_SIG, _c_evaluate_many),
}


def c_function(name: str):
    """The numba ``CFunc`` ``name`` (``"logp"``, ``"expand"`` or ``"evaluate_many"``), compiled or loaded
    from numba's disk cache on first use rather than at import."""
    if name not in _CALLBACKS:
        signature, function = _C_FUNCTIONS[name]
        _CALLBACKS[name] = cfunc(signature, cache=True)(function)
    return _CALLBACKS[name]


def compile_kernels() -> None:
    """Compile (or load from numba's disk cache) every kernel a GLMM fit uses, without running any.

    The signatures are those :mod:`bayeslmm.engines.glmm.packing` calls with: every array is packed
    one-dimensional and C-contiguous (float64, then int64), so one compiled version serves every model.
    """
    f1, i1, f2 = types.float64[::1], types.int64[::1], types.float64[:, ::1]
    arrays = (f1,) * N_FLOAT + (i1,) * N_INT
    for name in _C_FUNCTIONS:
        c_function(name)
    evaluate.compile((f1, types.int64, f1, f1) + arrays)
    evaluate_many.compile((f2, types.int64, f2, f1) + arrays)
