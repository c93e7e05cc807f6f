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

from bayeslmm.errors import DataError
from bayeslmm.spec.design import Design
from bayeslmm.spec.random_effects import RandomEffects

__all__ = [
    "Crossproducts",
    "Factor",
    "Solution",
    "PenalizedLeastSquares",
    "check_full_rank",
    "snap_to_bounds",
    "SINGULAR_TOLERANCE",
    "GRADIENT_TOLERANCE",
]

#: lme4's isSingular tolerance: a diagonal element of some T_b below this is a boundary (singular) fit.
SINGULAR_TOLERANCE = 1e-4
#: lme4's tolerance on the scaled gradient at the optimum (lmerControl's and glmerControl's check.conv.grad).
GRADIENT_TOLERANCE = 2e-3

# W (the off-diagonal part of L) is multiplied as a dense matrix above this fill ratio.
_DENSE_FILL = 0.15
# W'W is summed over the pairs of entries within rows when there are at most this many pairs.
_MAX_PAIRS = 2_000_000


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
    C12 : scipy.sparse.csr_array or ndarray or None, shape (q1, q2)
        ``Z1' W Z2`` (the other blocks), dense when most of it is filled; None when there is one block.
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
    C12: sp.csr_array | np.ndarray | None = None
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
    lam2: sp.csr_array | np.ndarray | None  # (q2, q2), or its diagonal (q2,) when it is diagonal
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
        # transposed once: Z' W [X z] is computed at every PIRLS step
        self._Z1t = sp.csr_array(self.Z1.T)
        self._Z2t = sp.csr_array(self.Z2.T) if self.others else None
        if self.others:
            self._build_lambda2_pattern()
            self.offsets2 = np.concatenate([[0], np.cumsum([sizes[i] for i in self.others])])
            self._build_crossproduct_patterns()

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
        ZtXY1 = np.asarray(self._Z1t @ WXY).reshape(self.G1, self.k1, p + 1)
        XtWXY = X.T @ WXY
        cp = Crossproducts(M1, ZtXY1, XtWXY[:, :p], XtWXY[:, p], float(z @ WXY[:, p]))
        if self.others:
            c12 = self._pair_sums(self._c12, weights)
            if self._c12_dense:
                cp.C12 = c12.reshape(self.q1, self.q2)
            else:
                cp.C12 = sp.csr_array((c12, self._c12_indices, self._c12_indptr), shape=(self.q1, self.q2))
            cp.M22 = self._pair_sums(self._m22, weights).reshape(self.q2, self.q2)
            cp.ZtXY2 = np.asarray(self._Z2t @ WXY)
        return cp

    # -- cross-products of Z as sums over rows ------------------------------------------------------

    def _row_entries(self, block_indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Column of ``Z`` (in the order of ``block_indices``) and value of each row's entries, (n, K) each."""
        columns, values, offset = [], [], 0
        for j in block_indices:
            block = self.blocks[j]
            for c in range(block.n_terms):
                columns.append(offset + block.group_index * block.n_terms + c)
                values.append(block.Z[:, c])
            offset += block.n_effects
        return np.column_stack(columns), np.column_stack(values)

    def _build_crossproduct_patterns(self) -> None:
        """Where each row's products land in ``Z1'WZ2`` and ``Z2'WZ2``, so that a weighting is a bincount.

        ``Z1'WZ2`` is dense when more than ``_DENSE_FILL`` of it is filled, else CSR with a fixed pattern.
        """
        columns1, values1 = self._row_entries([self.big])
        columns2, values2 = self._row_entries(self.others)
        rows = np.arange(columns1.shape[0])
        keys, products, sources = [], [], []
        for a in range(columns1.shape[1]):
            for e in range(columns2.shape[1]):
                keys.append(columns1[:, a] * self.q2 + columns2[:, e])
                products.append(values1[:, a] * values2[:, e])
                sources.append(rows)
        keys, products, sources = map(np.concatenate, (keys, products, sources))
        unique, position = np.unique(keys, return_inverse=True)
        self._c12_dense = len(unique) > _DENSE_FILL * self.q1 * self.q2
        if self._c12_dense:
            self._c12 = (keys, products, sources, self.q1 * self.q2)
        else:
            self._c12 = (position, products, sources, len(unique))
            self._c12_indices = (unique % self.q2).astype(np.int32)
            self._c12_indptr = np.searchsorted(unique // self.q2, np.arange(self.q1 + 1)).astype(np.int32)
            self._c12_rows = np.repeat(np.arange(self.q1), np.diff(self._c12_indptr))
            self._wtw_pairs = self._pairs_within_rows()
        keys, products, sources = [], [], []
        for e in range(columns2.shape[1]):
            for f in range(columns2.shape[1]):
                keys.append(columns2[:, e] * self.q2 + columns2[:, f])
                products.append(values2[:, e] * values2[:, f])
                sources.append(rows)
        self._m22 = (np.concatenate(keys), np.concatenate(products), np.concatenate(sources), self.q2 * self.q2)

    def _pairs_within_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every pair of stored entries of ``Z1'WZ2`` in one row, and its position in a (q2, q2) matrix.

        ``W'W`` is then one bincount. None when there are more than ``_MAX_PAIRS`` pairs.
        """
        counts = np.diff(self._c12_indptr)
        if int(np.sum(counts.astype(np.int64) ** 2)) > _MAX_PAIRS:
            return None
        first = np.concatenate([np.repeat(np.arange(a, b), b - a) for a, b in zip(self._c12_indptr[:-1], self._c12_indptr[1:])])
        second = np.concatenate([np.tile(np.arange(a, b), b - a) for a, b in zip(self._c12_indptr[:-1], self._c12_indptr[1:])])
        return first, second, self._c12_indices[first].astype(np.int64) * self.q2 + self._c12_indices[second]

    @staticmethod
    def _pair_sums(pattern: tuple, weights: np.ndarray | None) -> np.ndarray:
        """``sum over rows of w_i z_ia z_ib`` at every position of a pattern."""
        positions, products, sources, size = pattern
        values = products if weights is None else products * weights[sources]
        return np.bincount(positions, weights=values, minlength=size)

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

    def _lambda2(self, theta: np.ndarray) -> sp.csr_array | np.ndarray:
        """``Lambda_2``: its diagonal (q2,) when only single-term blocks are besides the largest, else CSR."""
        if self._lam2_is_diagonal:
            return theta[self._lam2_theta]
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
        if self.k1 == 1:  # a scalar largest block: its Cholesky factors are square roots
            L1 = np.sqrt(T1[0, 0] ** 2 * cp.M1 + 1.0)
            L1inv = 1.0 / L1
        else:
            L1 = np.linalg.cholesky(T1.T @ cp.M1 @ T1 + np.eye(self.k1))
            L1inv = np.linalg.inv(L1)
        log_det = 2.0 * float(np.sum(np.log(np.diagonal(L1, axis1=1, axis2=2))))
        P = L1inv @ T1.T
        if not self.others:
            return Factor(T1, L1inv, P, None, None, None, log_det)
        lam2 = self._lambda2(theta)
        scale = lam2 if self._lam2_is_diagonal else None
        if self._lam2_is_diagonal:
            # Only single-term blocks besides the largest: Lambda_2 is diagonal, so scale instead of
            # two sparse-times-dense products (the difference matters when q2 is in the thousands).
            A22 = cp.M22 * np.outer(scale, scale)
        else:
            A22 = lam2.T @ np.asarray(lam2.T @ cp.M22).T
        A22[np.diag_indices_from(A22)] += 1.0
        if isinstance(cp.C12, np.ndarray):
            W = (P @ cp.C12.reshape(self.G1, self.k1, self.q2)).reshape(self.q1, self.q2)
            W = W * scale[None, :] if self._lam2_is_diagonal else np.asarray(lam2.T @ W.T).T
            S = A22 - W.T @ W
        elif self.k1 == 1 and self._lam2_is_diagonal and self._wtw_pairs is not None:
            # W = diag(P) C12 diag(scale): scale its entries, and sum W'W over the pairs within rows
            values = cp.C12.data * P[self._c12_rows, 0, 0] * scale[self._c12_indices]
            W = sp.csr_array((values, self._c12_indices, self._c12_indptr), shape=(self.q1, self.q2))
            first, second, keys = self._wtw_pairs
            S = A22 - np.bincount(keys, weights=values[first] * values[second], minlength=self.q2**2).reshape(
                self.q2, self.q2
            )
        else:
            block_P = sp.bsr_array((P, np.arange(self.G1), np.arange(self.G1 + 1)), shape=(self.q1, self.q1))
            scaled = sp.csr_array(cp.C12.multiply(lam2[None, :])) if self._lam2_is_diagonal else cp.C12 @ lam2
            W = sp.csr_array(block_P @ scaled)
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
        rhs = _times(factor.lam2, cp.ZtXY2, transpose=True) - np.asarray(factor.W.T @ x1)
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
            b2 = _times(self._lambda2(theta), u[self.q1 :])
            for position, block_index in enumerate(self.others):
                chunk = b2[self.offsets2[position] : self.offsets2[position + 1]]
                out[block_index] = chunk.reshape(self.blocks[block_index].n_levels, -1)
        return out


def _times(lam2: sp.csr_array | np.ndarray, x: np.ndarray, transpose: bool = False) -> np.ndarray:
    """``Lambda_2 x`` (or ``Lambda_2' x``) for ``Lambda_2`` as a diagonal (q2,) or a sparse matrix; x (q2,) or (q2, r)."""
    if isinstance(lam2, np.ndarray):
        return lam2 * x if x.ndim == 1 else lam2[:, None] * x
    return np.asarray((lam2.T if transpose else lam2) @ x)


def snap_to_bounds(theta: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """``theta`` with its diagonal elements clipped into [0, inf), and those within 1e-10 of 0 set to 0."""
    theta = np.array(theta, dtype=float)
    theta[diagonal] = np.where(theta[diagonal] < 1e-10, 0.0, theta[diagonal])
    return theta


def check_full_rank(design: Design) -> None:
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
