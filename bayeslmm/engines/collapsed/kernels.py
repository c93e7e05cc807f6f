"""numba kernels of the collapsed Gaussian sampler: one compiled version (cached on disk) for every model.

Everything here takes only flat NumPy arrays. Array layout (``meta``, int64):

    meta[0:4] = p, n_blocks, e (the eliminated block), R (size of the dense Schur part)
    meta[4 + 5 j : 9 + 5 j] = k_j, G_j, roff_j (offset in the r-set, -1 for e), xoff_j, prior row

Parameter vector x: log sigma, then per block k_j SD parameters (log sd, or sd = scale softplus(x) for
light-tailed priors: :func:`_sd_transform`) and k_j (k_j - 1) / 2 unconstrained correlation parameters
(Stan's canonical partial correlations through tanh). Prior rows in ``prior_par`` are (kind, a, b,
scale of the SD's softplus transform, 0 for exp); row 0 is sigma's, always on the log scale. The mathematics is in the
docstring of :mod:`bayeslmm.engines.collapsed`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from bayeslmm.engines.collapsed.codes import (  # noqa: F401 -- the kernels compile these in
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

LOG_2PI = math.log(2.0 * math.pi)


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
def _sd_transform(x, scale):
    """An SD from its unconstrained parameter: ``exp(x)`` when ``scale`` is 0, else
    ``scale * softplus(x)``; returns the SD, its derivative, the log-Jacobian and the latter's derivative.

    ``exp`` suits priors with heavy upper tails; for light-tailed priors (half-normal, exponential) the
    log density in ``log sd`` falls doubly exponentially (its curvature grows like ``sd^2``), which no
    fixed NUTS step survives, while in ``x`` with ``sd = scale softplus(x)`` it is linear below the
    scale (``sd ~ scale e^x``) and Gaussian or linear above it.
    """
    if scale == 0.0:
        sd = math.exp(x)
        return sd, sd, x, 1.0
    if x > 0.0:
        e = math.exp(-x)
        softplus = x + math.log(1.0 + e)
        sig = 1.0 / (1.0 + e)
        log_sig = -math.log(1.0 + e)
    else:
        e = math.exp(x)
        softplus = math.log1p(e)  # once per SD and evaluation: full relative precision is cheap here
        sig = e / (1.0 + e)
        log_sig = x - softplus
    return scale * softplus, scale * sig, math.log(scale) + log_sig, 1.0 - sig


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
    scal : [r'r, n, sum log fixed_prec].    prior_par : (n_priors * 4,).    eta : (n_blocks,).
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
    dsds = np.zeros((nb, kmax))
    mmax = kmax * (kmax - 1) // 2
    dLs = np.zeros((nb, max(mmax, 1), kmax, kmax))
    dlogjs = np.zeros((nb, max(mmax, 1)))
    logp = 0.0
    kind0 = int(prior_par[0])  # sigma: x[0] = log sigma
    lp, dlp = _positive_logp(kind0, prior_par[1], prior_par[2], sig)
    logp += lp + x[0]
    if mode == MODE_GRAD:
        grad[:] = 0.0
        grad[0] = sig * dlp + 1.0
    logdetP_total = 0.0
    for j in range(nb):
        k, G, xoff, prow = meta[4 + 5 * j], meta[5 + 5 * j], meta[7 + 5 * j], meta[8 + 5 * j]
        for t in range(k):
            row = prow + t
            sd, dsd, logj, dlogj_sd = _sd_transform(x[xoff + t], prior_par[4 * row + 3])
            sds[j, t] = sd
            dsds[j, t] = dsd
            lp, dlp = _positive_logp(int(prior_par[4 * row]), prior_par[4 * row + 1], prior_par[4 * row + 2], sd)
            logp += lp + logj
            if mode == MODE_GRAD:
                grad[xoff + t] += dsd * dlp + dlogj_sd
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
    _gradient(grad, sig, s2, n, rr, quad, mu_r, mu_e, LS, Minv, W, Aer_ptr, Aer_col, fixed_prec, Ps, Sig, Ls, sds, dsds, dLs, meta)
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
def _gradient(grad, sig, s2, n, rr, quad, mu_r, mu_e, LS, Minv, W, Aer_ptr, Aer_col, fixed_prec, Ps, Sig, Ls, sds, dsds, dLs, meta):
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
            grad[xoff + a] += dsds[j, a] * s  # d sd / d x times d logp / d sd
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


_LOGP_SIG = types.int64(
    types.uint64, types.CPointer(types.double), types.CPointer(types.double), types.CPointer(types.double), types.voidptr
)
_EXPAND_SIG = types.int64(
    types.uint64, types.uint64, types.CPointer(types.double), types.CPointer(types.double), types.voidptr
)
# int64 evaluate_many(int64 mode, int64* shape, double* xs, double* a, double* b, double* values, void* data)
_MANY_SIG = types.int64(
    types.int64, types.CPointer(types.int64), types.CPointer(types.double), types.CPointer(types.double),
    types.CPointer(types.double), types.CPointer(types.double), types.voidptr,
)


@njit(cache=True)
def _header_arrays(hdr):
    """The kernel's arrays, in :func:`evaluate`'s order, from the (address, length) pairs in ``hdr``
    (the float64 arrays, then the int64 ones: :meth:`CallbackDensity.over_arrays`)."""
    f64, i64 = np.float64, np.int64
    return (
        carray(_as_void_pointer(hdr[0]), (hdr[1],), dtype=f64),
        carray(_as_void_pointer(hdr[2]), (hdr[3],), dtype=f64),
        carray(_as_void_pointer(hdr[4]), (hdr[5],), dtype=f64),
        carray(_as_void_pointer(hdr[18]), (hdr[19],), dtype=i64),
        carray(_as_void_pointer(hdr[20]), (hdr[21],), dtype=i64),
        carray(_as_void_pointer(hdr[6]), (hdr[7],), dtype=f64),
        carray(_as_void_pointer(hdr[8]), (hdr[9],), dtype=f64),
        carray(_as_void_pointer(hdr[10]), (hdr[11],), dtype=f64),
        carray(_as_void_pointer(hdr[12]), (hdr[13],), dtype=f64),
        carray(_as_void_pointer(hdr[14]), (hdr[15],), dtype=f64),
        carray(_as_void_pointer(hdr[16]), (hdr[17],), dtype=f64),
        carray(_as_void_pointer(hdr[22]), (hdr[23],), dtype=i64),
    )


@njit(cache=True)
def _evaluate_at(x, mode, grad, z, gamma, hdr):
    """:func:`evaluate` on the arrays in ``hdr`` (star arguments: numba refuses them inside ``try``)."""
    return evaluate(x, mode, grad, z, gamma, *_header_arrays(hdr))


@njit(cache=True)
def _evaluate_many_at(xs, mode, zs, gammas, values, hdr):
    """:func:`evaluate_many` on the arrays in ``hdr``."""
    evaluate_many(xs, mode, zs, gammas, values, *_header_arrays(hdr))


def _c_logp(dim, x_, out_, logp_, user_data):
    """nutpie's C log-density callback: ``user_data`` points to (address, length) pairs of the arrays."""
    try:
        hdr = carray(user_data, (2 * (N_FLOAT + N_INT),), dtype=np.uint64)
        x = carray(x_, (dim,))
        out = carray(out_, (dim,))
        logp = carray(logp_, (1,))
        empty = np.zeros(0)
        mode = np.int64(MODE_GRAD)  # a typed value, not a literal: one compiled evaluate for every caller
        value = _evaluate_at(x, mode, out, empty, empty, hdr)
        logp[0] = value
        if not np.isfinite(value):
            return 4
        for i in range(dim):
            if not np.isfinite(out[i]):
                return 3
    except Exception:  # noqa: BLE001 -- a failed Cholesky is a rejected point, not a crash
        return 1
    return 0


def _c_evaluate_many(mode, shape_, xs_, zs_, gammas_, values_, user_data):
    """:func:`evaluate_many` as a C function (``bayeslmm.engines.native``): ``shape_`` points to
    (rows, n_dim, columns of zs, columns of gammas), ``user_data`` as for :func:`_c_logp`."""
    shape = carray(shape_, (4,), dtype=np.int64)
    n, d, nz, ng = shape[0], shape[1], shape[2], shape[3]
    hdr = carray(user_data, (2 * (N_FLOAT + N_INT),), dtype=np.uint64)
    _evaluate_many_at(carray(xs_, (n, d)), mode, carray(zs_, (n, nz)), carray(gammas_, (n, ng)), carray(values_, (n,)), hdr)
    return 0


def _c_expand(dim, expanded, x_, out_, user_data):
    """nutpie's expand callback: keep the unconstrained point; everything else is derived afterwards."""
    x = carray(x_, (dim,))
    out = carray(out_, (expanded,))
    for i in range(dim):
        out[i] = x[i]
    return 0


@njit(cache=True, nogil=True)
def evaluate_many(xs, mode, zs, gammas, out, Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta):
    """``out[i]`` = log density at ``xs[i]`` (-inf where invalid); mode 2 also draws ``gammas[i]`` from ``zs[i]``.

    ``zs`` and ``gammas`` have zero columns in mode 0. One call of :func:`evaluate` with ``mode`` a
    variable: constant modes would make numba compile one copy of ``evaluate`` per value. Releases the
    GIL, so that threads can evaluate different rows at once.
    """
    grad = np.zeros(xs.shape[1])
    for i in range(xs.shape[0]):
        try:
            out[i] = evaluate(xs[i], mode, grad, zs[i], gammas[i], Arr, Aee, Aer_val, Aer_ptr, Aer_col, ce, cr, fixed_prec, scal, prior_par, eta, meta)
        except Exception:  # noqa: BLE001 -- a failed Cholesky is a point of zero density
            out[i] = -np.inf
        if not np.isfinite(out[i]):
            out[i] = -np.inf


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
    """Compile (or load from numba's disk cache) every kernel a fit uses, without running any of them."""
    from numba import types as nt

    f1, i1 = nt.float64[::1], nt.int64[::1]
    f2 = nt.float64[:, ::1]
    for name in _C_FUNCTIONS:
        c_function(name)
    evaluate_many.compile((f2, nt.int64, f2, f2, f1, f1, f1, f1, i1, i1, f1, f1, f1, f1, f1, f1, i1))
    evaluate.compile((f1, nt.int64, f1, f1, f1, f1, f1, f1, i1, i1, f1, f1, f1, f1, f1, f1, i1))
