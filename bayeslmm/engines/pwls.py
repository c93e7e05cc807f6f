"""Penalised weighted least squares: the sparse Cholesky factor both frequentist engines share.

The random effects are ``b = Lambda_theta u`` with spherical ``u``; ``Lambda_theta`` is block diagonal
with one lower-triangular ``k x k`` factor ``T_b`` per random-effects block, repeated for each level of
its grouping factor (Bates, Maechler, Bolker & Walker 2015, J. Stat. Softw. 67(1), section 3). For a
given ``theta`` and row weights ``W``, the penalised weighted least-squares problem

    minimise over (u, beta):  || W^(1/2) (z - X beta - Z Lambda u) ||^2 + ||u||^2

is solved through the Cholesky factor ``L`` of ``Lambda' Z' W Z Lambda + I``. The REML engine
(:mod:`bayeslmm.engines.reml`) solves it once per ``theta`` with unit weights; the Laplace engine
(:mod:`bayeslmm.engines.laplace`) solves it at every step of penalised iteratively reweighted least
squares (PIRLS), with the GLM weights of the current linear predictor.

``L`` is not computed with a general sparse Cholesky (scipy has none). The random effects are ordered
with the largest block first: its part of ``Lambda' Z' W Z Lambda + I`` is block diagonal (one ``k x k``
block per level, because each row belongs to one level), so its Cholesky factor is a batch of tiny
factorisations; the remaining blocks go through a dense Schur complement of size ``q - q_largest``.
With crossed factors of 1000 and 50 levels, a factorisation is that of a 50 x 50 matrix.

Every quantity is a weighted cross-product (``Z'WZ``, ``Z'WX``, ``Z'Wz``, ``X'WX``, ``X'Wz``, ``z'Wz``):
:meth:`PenalizedLeastSquares.crossproducts` computes them in one pass over the rows, and everything
after that works on matrices of the size of the random and fixed effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import linalg

from bayeslmm.spec.random_effects import RandomEffects

__all__ = ["Crossproducts", "Factor", "Solution", "PenalizedLeastSquares"]

# W (the off-diagonal part of L) is multiplied as a dense matrix above this fill ratio.
_DENSE_FILL = 0.15


@dataclass
class Crossproducts:
    """Weighted cross-products of ``Z`` (largest block first), ``X`` and a response ``z``.

    Attributes
    ----------
    M1 : ndarray, shape (G1, k1, k1)
        Diagonal blocks of ``Z1' W Z1`` (largest block).
    ZtXY1 : ndarray, shape (G1, k1, p + 1)
        ``Z1' W [X z]`` per level.
    XtX : ndarray, shape (p, p)
    Xty : ndarray, shape (p,)
    yty : float
        ``z' W z``.
    C12 : scipy.sparse.csr_array or None, shape (q1, q2)
        ``Z1' W Z2`` (the other blocks); None when there is one block.
    M22 : ndarray or None, shape (q2, q2)
        ``Z2' W Z2``.
    ZtXY2 : ndarray or None, shape (q2, p + 1)
        ``Z2' W [X z]``.
    """

    M1: np.ndarray
    ZtXY1: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    C12: sp.csr_array | None = None
    M22: np.ndarray | None = None
    ZtXY2: np.ndarray | None = None


@dataclass
class Factor:
    """The Cholesky factor ``L = [[L1, 0], [W', LS]]`` of ``Lambda' Z' W Z Lambda + I`` at one theta.

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
class Solution:
    """Penalised least-squares solution at one theta, ``beta`` profiled out."""

    factor: Factor
    x: np.ndarray  # (q, p + 1): L^-1 Lambda' Z' W [X z], internal order; [:, :p] is R_ZX, [:, p] c_u
    RX: np.ndarray  # (p, p) upper: RX'RX = X'WX - R_ZX'R_ZX
    beta: np.ndarray  # (p,)
    pwrss: float  # penalised weighted residual sum of squares
    log_det_RX: float  # log |RX|^2


class PenalizedLeastSquares:
    """The structure of ``Z`` and the penalised weighted least-squares solution for given theta.

    The random effects are held in an internal order: the largest block first (level by level), then
    the others in formula order. :meth:`effects` maps spherical effects ``u`` in that order to the
    group effects ``b = Lambda u`` of each block in formula order.

    Parameters
    ----------
    random : RandomEffects
        At least one block.
    """

    def __init__(self, random: RandomEffects):
        self.random = random
        self.blocks = random.blocks
        sizes = [block.n_effects for block in self.blocks]
        self.big = random.largest
        self.others = [i for i in range(len(self.blocks)) if i != self.big]
        big = self.blocks[self.big]
        self.G1, self.k1 = big.n_levels, big.n_terms
        self.q1, self.q2 = sizes[self.big], sum(sizes[i] for i in self.others)
        self.Z1 = big.sparse()
        self.Z2 = random.sparse(self.others) if self.others else None
        if self.others:
            self._build_lambda2_pattern()
            self.offsets2 = np.concatenate([[0], np.cumsum([sizes[i] for i in self.others])])

    @property
    def q(self) -> int:
        """Number of random effects."""
        return self.q1 + self.q2

    # -- cross-products ----------------------------------------------------------------------------

    def crossproducts(self, X: np.ndarray, z: np.ndarray, weights: np.ndarray | None = None) -> Crossproducts:
        """Weighted cross-products of ``Z``, ``X`` (n, p; p may be 0) and ``z`` (n,); unit weights by default."""
        XY = np.column_stack([X, z])
        WXY = XY if weights is None else XY * weights[:, None]
        p = X.shape[1]
        M1 = self.blocks[self.big].crossprod_per_level(weights)
        ZtXY1 = np.asarray(self.Z1.T @ WXY).reshape(self.G1, self.k1, p + 1)
        XtWXY = X.T @ WXY
        cp = Crossproducts(M1, ZtXY1, XtWXY[:, :p], XtWXY[:, p], float(z @ WXY[:, p]))
        if self.others:
            W2 = self.Z2 if weights is None else sp.csr_array(self.Z2.multiply(weights[:, None]))
            cp.C12 = sp.csr_array(self.Z1.T @ W2)
            cp.M22 = (self.Z2.T @ W2).toarray()
            cp.ZtXY2 = np.asarray(self.Z2.T @ WXY)
        return cp

    # -- Lambda for the non-largest blocks ---------------------------------------------------------

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

    # -- factorisation and solution ----------------------------------------------------------------

    def factorize(self, theta: np.ndarray, cp: Crossproducts) -> Factor:
        """Cholesky factor of ``Lambda' Z' W Z Lambda + I`` at ``theta``.

        Raises
        ------
        numpy.linalg.LinAlgError
            The matrix is not numerically positive definite.
        """
        T1 = self.random.relative_factor(theta, self.big)
        A11 = T1.T @ cp.M1 @ T1 + np.eye(self.k1)
        L1 = np.linalg.cholesky(A11)
        L1inv = np.linalg.inv(L1)
        log_det = 2.0 * float(np.sum(np.log(np.diagonal(L1, axis1=1, axis2=2))))
        P = L1inv @ T1.T
        if not self.others:
            return Factor(T1, L1inv, P, None, None, None, log_det)
        lam2 = self._lambda2(theta)
        if self._lam2_is_diagonal:
            # Only single-term blocks besides the largest: Lambda_2 is diagonal, so scale instead of
            # two sparse-times-dense products (the difference matters when q2 is in the thousands).
            scale = theta[self._lam2_theta]
            A22 = cp.M22 * np.outer(scale, scale)
        else:
            A22 = lam2.T @ np.asarray(lam2.T @ cp.M22).T
        A22[np.diag_indices_from(A22)] += 1.0
        block_P = sp.bsr_array((P, np.arange(self.G1), np.arange(self.G1 + 1)), shape=(self.q1, self.q1))
        W = sp.csr_array(block_P @ (cp.C12 @ lam2))
        if W.nnz > _DENSE_FILL * self.q1 * self.q2:
            W = W.toarray()
            S = A22 - W.T @ W
        else:
            S = A22 - (W.T @ W).toarray()
        LS = linalg.cholesky(S, lower=True, check_finite=False)
        log_det += 2.0 * float(np.sum(np.log(np.diag(LS))))
        return Factor(T1, L1inv, P, lam2, W, LS, log_det)

    def forward(self, factor: Factor, cp: Crossproducts) -> np.ndarray:
        """``L^-1 Lambda' Z' W [X z]``, shape (q, p + 1), internal order."""
        x1 = (factor.P @ cp.ZtXY1).reshape(self.q1, -1)
        if not self.others:
            return x1
        rhs = np.asarray(factor.lam2.T @ cp.ZtXY2) - np.asarray(factor.W.T @ x1)
        return np.vstack([x1, linalg.solve_triangular(factor.LS, rhs, lower=True, check_finite=False)])

    def backward(self, factor: Factor, r: np.ndarray) -> np.ndarray:
        """``u = L'^-1 r`` for ``r`` of shape (q,), internal order."""
        r1 = r[: self.q1]
        parts = []
        if self.others:
            u2 = linalg.solve_triangular(factor.LS, r[self.q1 :], lower=True, trans="T", check_finite=False)
            r1 = r1 - np.asarray(factor.W @ u2)
            parts.append(u2)
        u1 = np.einsum("gji,gj->gi", factor.L1inv, r1.reshape(self.G1, self.k1)).reshape(-1)
        return np.concatenate([u1] + parts)

    def solve(self, theta: np.ndarray, cp: Crossproducts) -> Solution:
        """Solve the penalised weighted least-squares problem at ``theta``, profiling out beta."""
        factor = self.factorize(theta, cp)
        x = self.forward(factor, cp)
        p = x.shape[1] - 1
        RZX, cu = x[:, :p], x[:, p]
        RX = linalg.cholesky(cp.XtX - RZX.T @ RZX, lower=False, check_finite=False)
        c_beta = linalg.solve_triangular(RX, cp.Xty - RZX.T @ cu, trans="T", check_finite=False)
        beta = linalg.solve_triangular(RX, c_beta, check_finite=False)
        # Penalised RSS ||W^(1/2)(z - X beta - Z b)||^2 + ||u||^2 from the cross-products.
        pwrss = cp.yty - float(cu @ cu) - float(c_beta @ c_beta)
        log_det_RX = 2.0 * float(np.sum(np.log(np.abs(np.diag(RX)))))
        return Solution(factor, x, RX, beta, pwrss, log_det_RX)

    def spherical(self, solution: Solution) -> np.ndarray:
        """The spherical effects ``u`` (q,) of a solution, internal order: ``L' u = c_u - R_ZX beta``."""
        p = len(solution.beta)
        return self.backward(solution.factor, solution.x[:, p] - solution.x[:, :p] @ solution.beta)

    def unscaled_covbeta(self, solution: Solution) -> np.ndarray:
        """``(RX' RX)^-1``, shape (p, p)."""
        RXinv = linalg.solve_triangular(solution.RX, np.eye(len(solution.beta)), check_finite=False)
        return RXinv @ RXinv.T

    # -- from spherical to group effects -----------------------------------------------------------

    def effects(self, theta: np.ndarray, u: np.ndarray) -> list[np.ndarray]:
        """Group effects ``b = Lambda u``, one array of shape (G, k) per block in formula order."""
        out: list[np.ndarray | None] = [None] * len(self.blocks)
        T1 = self.random.relative_factor(theta, self.big)
        out[self.big] = u[: self.q1].reshape(self.G1, self.k1) @ T1.T
        if self.others:
            b2 = np.asarray(self._lambda2(theta) @ u[self.q1 :])
            for position, block_index in enumerate(self.others):
                chunk = b2[self.offsets2[position] : self.offsets2[position + 1]]
                out[block_index] = chunk.reshape(self.blocks[block_index].n_levels, -1)
        return out
