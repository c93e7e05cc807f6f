"""Model matrices of a mixed model: the fixed part ``X`` and the random-effects terms ``Z``.

Every engine (REML, the collapsed sampler, the PyMC model, the Laplace engine), the results and the
plots read the model matrices through this module, so that each piece of the structure is computed in
one place, as MixedModels.jl's ``remat.jl`` does:

- :class:`FixedEffects`: ``X`` (n, p), its column names and the centring rule;
- :class:`RandomBlock`: one term ``(expr | factor)``: ``Z`` (n, k), group codes, levels, the sparse
  (n, G k) matrix, per-level crossproducts and the block's covariance factor from ``theta``;
- :class:`RandomEffects`: all blocks, the ``theta`` layout (lme4's order), the block eliminated first
  (the one with most columns), and the linear predictor of given effects.

Both can be evaluated on new rows (:meth:`FixedEffects.evaluate`, :meth:`RandomEffects.evaluate`): the
basis of predictions. Levels of a grouping factor that the model has not seen get the code ``-1``
(:data:`UNSEEN`); what a prediction does with them (population level, a draw from the fitted
distribution, or an error) is the caller's choice, never a silent guess here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = ["INTERCEPT", "UNSEEN", "FixedEffects", "RandomBlock", "RandomEffects", "group_codes"]

#: Name of the intercept column, as lme4 prints it.
INTERCEPT = "(Intercept)"
#: Group code of a level the model was not fitted to (in designs evaluated on new rows).
UNSEEN = -1


# ----------------------------------------------------------------------------------------- fixed part
@dataclass(frozen=True)
class FixedEffects:
    """The fixed-effects model matrix.

    Attributes
    ----------
    X : ndarray, shape (n, p)
        One column per fixed term.
    terms : tuple of str
        Column names; the intercept is ``"(Intercept)"``.
    evaluator : object, optional
        formulae's ``CommonEffectsMatrix`` that built ``X``; evaluates the same columns on new rows.
    kept : tuple of int, optional
        Positions of the evaluator's columns that ``X`` keeps (all when None): columns aliased with others
        are dropped, as lme4 does.
    """

    X: np.ndarray
    terms: tuple[str, ...]
    evaluator: Any = field(default=None, repr=False, compare=False)
    kept: tuple[int, ...] | None = None

    @property
    def n_terms(self) -> int:
        """Number of columns ``p``."""
        return len(self.terms)

    @property
    def intercept(self) -> int | None:
        """Position of the intercept column, or None."""
        return self.terms.index(INTERCEPT) if INTERCEPT in self.terms else None

    def centring(self) -> tuple[np.ndarray, int | None]:
        """Column means subtracted from ``X`` by the samplers, and the intercept they are folded into.

        With an intercept and at least one other column, every other column is centred (as brms and
        Bambi do), so that the sampled intercept is nearly uncorrelated with the slopes; the intercept
        on the original scale is ``intercept_c - means @ beta_c``. Otherwise nothing is centred.

        Returns
        -------
        means : ndarray, shape (p,)
            0 for the intercept and when nothing is centred.
        intercept : int or None
            Position of the intercept when centred, else None.
        """
        p = self.n_terms
        intercept = self.intercept
        if intercept is None or p == 1:
            return np.zeros(p), None
        means = self.X.mean(axis=0)
        means[intercept] = 0.0
        return means, intercept

    def uncentre(self, beta_c: np.ndarray) -> np.ndarray:
        """Coefficients on the original scale from coefficients of the centred matrix, shape (..., p)."""
        means, intercept = self.centring()
        beta = np.array(beta_c, dtype=float, copy=True)
        if intercept is not None:
            beta[..., intercept] -= beta_c @ means
        return beta

    def predictor(self, beta: np.ndarray) -> np.ndarray:
        """``X beta``: shape (n,) for beta (p,), or (draws, n) for beta (draws, p)."""
        return np.asarray(beta) @ self.X.T

    def evaluate(self, data: pd.DataFrame) -> "FixedEffects":
        """The same columns on new rows (categorical levels and transformations as in the fit).

        Raises
        ------
        DataError
            A column is missing, or a categorical column has a level the model was not fitted to.
        """
        if self.evaluator is None:
            raise DataError("this design cannot be evaluated on new data (it was not built from a formula)")
        X = _evaluate_new(self.evaluator, data, "fixed-effects part")
        return replace(self, X=X if self.kept is None else X[:, list(self.kept)])

    def subset(self, rows: np.ndarray) -> "FixedEffects":
        """The matrix restricted to ``rows`` (positions or a boolean mask)."""
        return replace(self, X=self.X[rows])


# ----------------------------------------------------------------------------------------- random part
@dataclass(frozen=True)
class RandomBlock:
    """One random-effects term ``(expr | factor)`` evaluated on the data.

    The ``k`` columns of ``Z`` get a full ``k x k`` covariance across the ``G`` levels of ``factor``.

    Attributes
    ----------
    name : str
        Unique label: the factor, with ``.1``, ``.2`` for further blocks on the same factor (lme4).
    factor : str
        The grouping factor, a column or an interaction such as ``"g1:g2"``.
    terms : tuple of str
        The block's ``k`` column names, e.g. ``("(Intercept)", "Days")``.
    Z : ndarray, shape (n, k)
        The block's columns evaluated on every row.
    group_index : ndarray of int, shape (n,)
        Position of each row's level in ``levels``; :data:`UNSEEN` for a level not in ``levels``.
    levels : pandas.Index, length G
        Levels of ``factor`` in the data the model was fitted to, sorted.
    expr : str
        The expression of the columns, e.g. ``"1 + Days"``.
    evaluator : object, optional
        formulae's matrix that built ``Z``; evaluates it on new rows.
    level_keys : tuple, optional
        What identifies each level when rows are coded (see :attr:`keys`); for an interaction the
        tuples of the columns' values, so that ``("s:t", "0")`` and ``("s", "t:0")`` stay distinct
        even though ``levels`` labels them for display.
    """

    name: str
    factor: str
    terms: tuple[str, ...]
    Z: np.ndarray
    group_index: np.ndarray
    levels: pd.Index
    expr: str = ""
    evaluator: Any = field(default=None, repr=False, compare=False)
    level_keys: tuple = field(default=(), repr=False, compare=False)

    @property
    def keys(self) -> tuple:
        """The identity of each level used to code rows: the values, or tuples of values for ``a:b``."""
        return self.level_keys or tuple(self.levels)

    @property
    def n_levels(self) -> int:
        """Number of groups ``G``."""
        return len(self.levels)

    @property
    def n_terms(self) -> int:
        """Number of columns ``k``."""
        return len(self.terms)

    @property
    def n_effects(self) -> int:
        """Number of group effects ``G k``."""
        return self.n_levels * self.n_terms

    @property
    def n_theta(self) -> int:
        """Number of covariance parameters: ``k (k + 1) / 2``."""
        return self.n_terms * (self.n_terms + 1) // 2

    def lower_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each covariance parameter in the lower triangle, column by column (lme4)."""
        k = self.n_terms
        rows = np.array([i for j in range(k) for i in range(j, k)], dtype=np.int64)
        cols = np.array([j for j in range(k) for _ in range(j, k)], dtype=np.int64)
        return rows, cols

    def relative_factor(self, theta_block: np.ndarray) -> np.ndarray:
        """Lower-triangular ``T`` (k, k) from this block's ``theta``; ``sigma^2 T T'`` is its covariance."""
        out = np.zeros((self.n_terms, self.n_terms))
        rows, cols = self.lower_pairs()
        out[rows, cols] = theta_block
        return out

    def sparse(self) -> "sp.csc_array":
        """``Z`` as a sparse (n, G k) matrix, columns group-major: column ``g k + j`` is term ``j`` of level ``g``.

        Rows of unseen levels are all zero.
        """
        import scipy.sparse as sp

        n, k = self.Z.shape
        seen = self.group_index != UNSEEN
        rows = np.repeat(np.arange(n)[seen], k)
        cols = (self.group_index[seen, None] * k + np.arange(k)[None, :]).reshape(-1)
        matrix = sp.csc_array((self.Z[seen].reshape(-1), (rows, cols)), shape=(n, self.n_effects))
        matrix.eliminate_zeros()
        return matrix

    def crossprod_per_level(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``sum over the rows of level g of w z z'``, shape (G, k, k): the diagonal blocks of ``Z' W Z``."""
        k = self.n_terms
        out = np.empty((self.n_levels, k, k))
        for i in range(k):
            for j in range(i + 1):
                products = self.Z[:, i] * self.Z[:, j]
                if weights is not None:
                    products = products * weights
                values = np.bincount(self.group_index, weights=products, minlength=self.n_levels)
                out[:, i, j] = values
                out[:, j, i] = values
        return out

    def counts(self) -> np.ndarray:
        """Number of rows of each level, shape (G,)."""
        return np.bincount(self.group_index[self.group_index != UNSEEN], minlength=self.n_levels)

    def contribution(self, effects: np.ndarray) -> np.ndarray:
        """``sum_j Z[i, j] effects[..., g_i, j]``: shape (n,) for effects (G, k), (draws, n) for (draws, G, k).

        Rows of unseen levels contribute 0.
        """
        effects = np.asarray(effects)
        index = np.where(self.group_index == UNSEEN, 0, self.group_index)
        seen = (self.group_index != UNSEEN).astype(float)
        if effects.ndim == 2:
            return np.einsum("nk,nk->n", effects[index], self.Z) * seen
        return np.einsum("snk,nk->sn", effects[:, index, :], self.Z) * seen

    def subset(self, rows: np.ndarray) -> "RandomBlock":
        """The block restricted to ``rows`` (positions or a boolean mask), levels unchanged."""
        return replace(self, Z=self.Z[rows], group_index=self.group_index[rows])


@dataclass(frozen=True)
class RandomEffects:
    """All random-effects blocks of a model, and the layout of their covariance parameters.

    ``theta`` (lme4's relative covariance factors) holds, block by block in formula order, the lower
    triangle of each block's ``T`` column by column; the diagonal elements are bounded below by 0.

    Attributes
    ----------
    blocks : tuple of RandomBlock
        In formula order.
    """

    blocks: tuple[RandomBlock, ...]

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> RandomBlock:
        return self.blocks[index]

    # -- structure -------------------------------------------------------------------------------
    @property
    def factors(self) -> dict[str, pd.Index]:
        """Levels of each grouping factor, in formula order (pymer4's ``grps``)."""
        return {block.factor: block.levels for block in self.blocks}

    def blocks_of(self, factor: str) -> tuple[RandomBlock, ...]:
        """The blocks whose grouping factor is ``factor``."""
        return tuple(block for block in self.blocks if block.factor == factor)

    def resolve_factor(self, factor: str | None) -> str:
        """``factor`` checked against the model's grouping factors; the first one when None.

        Raises
        ------
        DataError
            The model has no grouping factor, or ``factor`` is not one of them.
        """
        factors = list(self.factors)
        if not factors:
            raise DataError("the model has no grouping factor; this needs a random-effects term such as '(1 | group)'")
        if factor is None:
            return factors[0]
        if factor not in factors:
            raise DataError(f"{factor!r} is not a grouping factor of the model; its factors are {factors}")
        return factor

    @property
    def n_effects(self) -> int:
        """Total number of group effects ``q``."""
        return sum(block.n_effects for block in self.blocks)

    @property
    def largest(self) -> int:
        """Index of the block with most group effects: the one the engines eliminate level by level."""
        return int(np.argmax([block.n_effects for block in self.blocks]))

    # -- theta layout ------------------------------------------------------------------------------
    @property
    def theta_offsets(self) -> np.ndarray:
        """Start of each block's parameters in ``theta``, and the total, shape (n_blocks + 1,)."""
        return np.concatenate([[0], np.cumsum([block.n_theta for block in self.blocks])]).astype(np.int64)

    @property
    def n_theta(self) -> int:
        """Length of ``theta``."""
        return int(self.theta_offsets[-1])

    def relative_factor(self, theta: np.ndarray, block: int) -> np.ndarray:
        """``T_b`` (k, k) of block ``block`` from the full ``theta``."""
        offsets = self.theta_offsets
        return self.blocks[block].relative_factor(theta[offsets[block] : offsets[block + 1]])

    def diagonal_mask(self) -> np.ndarray:
        """Boolean, shape (n_theta,): which elements of ``theta`` are diagonal elements of some ``T_b``."""
        return np.concatenate([rows == cols for rows, cols in (b.lower_pairs() for b in self.blocks)])

    def theta_start(self) -> np.ndarray:
        """lme4's starting value: every ``T_b`` the identity."""
        return self.diagonal_mask().astype(float)

    def covariances(self, theta: np.ndarray, sigma: float = 1.0) -> list[np.ndarray]:
        """Covariance ``sigma^2 T_b T_b'`` (k, k) of every block."""
        factors = [self.relative_factor(theta, j) for j in range(len(self.blocks))]
        return [sigma**2 * T @ T.T for T in factors]

    # -- matrices ----------------------------------------------------------------------------------
    def sparse(self, order: list[int] | None = None) -> "sp.csc_array":
        """All blocks side by side, shape (n, q), in ``order`` (default: formula order)."""
        import scipy.sparse as sp

        order = list(range(len(self.blocks))) if order is None else order
        return sp.hstack([self.blocks[j].sparse() for j in order], format="csc")

    def predictor(self, effects: list[np.ndarray]) -> np.ndarray:
        """``Z b``: the random part of the linear predictor.

        Parameters
        ----------
        effects : list of ndarray
            One per block, shape (G, k) or (draws, G, k).

        Returns
        -------
        ndarray, shape (n,) or (draws, n)
        """
        total = None
        for block, values in zip(self.blocks, effects):
            part = block.contribution(values)
            total = part if total is None else total + part
        return total

    def subset(self, rows: np.ndarray) -> "RandomEffects":
        """Every block restricted to ``rows``."""
        return RandomEffects(tuple(block.subset(rows) for block in self.blocks))

    def evaluate(self, data: pd.DataFrame) -> "RandomEffects":
        """The blocks on new rows: ``Z`` from each block's expression, levels coded against the fit's.

        A level of a grouping factor that the model was not fitted to gets the code :data:`UNSEEN`;
        :meth:`unseen_levels` lists them.

        Raises
        ------
        DataError
            A column is missing from ``data``.
        """
        blocks = []
        for block in self.blocks:
            if block.evaluator is None:
                raise DataError("this design cannot be evaluated on new data (it was not built from a formula)")
            Z = _evaluate_new(block.evaluator, data, f"random-effects expression of ({block.expr} | {block.factor})")
            codes = group_codes(data, block.factor, block.keys)
            blocks.append(replace(block, Z=Z, group_index=codes))
        return RandomEffects(tuple(blocks))

    def unseen_levels(self, data: pd.DataFrame) -> dict[str, list]:
        """For rows evaluated by :meth:`evaluate`: the levels of each factor that the fit has not seen."""
        out: dict[str, list] = {}
        for block in self.blocks:
            unseen = block.group_index == UNSEEN
            if unseen.any() and block.factor not in out:
                labels = _factor_labels(data, block.factor)
                out[block.factor] = list(pd.unique(labels[unseen]))
        return out


# ----------------------------------------------------------------------------------------- helpers
def _factor_labels(data: pd.DataFrame, factor: str) -> np.ndarray:
    """The value of ``factor`` on every row: the column, or tuples of the columns of an interaction."""
    columns = factor.split(":")
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise DataError(f"grouping column(s) {missing} are not in the new data; columns: {list(data.columns)}")
    if len(columns) == 1:
        return data[columns[0]].to_numpy(dtype=object)
    # tuples of the original values: ("s:t", "0") and ("s", "t:0") stay distinct, and so do 1 and "1"
    return np.array(list(zip(*(data[c].tolist() for c in columns))) + [None], dtype=object)[:-1]


def group_codes(data: pd.DataFrame, factor: str, levels) -> np.ndarray:
    """Code of every row's level of ``factor`` in ``levels`` (level keys); :data:`UNSEEN` for others.

    Rows of data without the factor's columns (a grid of predictor values) are all :data:`UNSEEN`;
    callers that need the groups check for the columns first.
    """
    if any(column not in data.columns for column in factor.split(":")):
        return np.full(len(data), UNSEEN, dtype=np.int64)
    labels = _factor_labels(data, factor)
    lookup = {_level_key(level): position for position, level in enumerate(levels)}
    return np.array([lookup.get(_level_key(label), UNSEEN) for label in labels], dtype=np.int64)


def _level_key(value: Any) -> Any:
    """A hashable key that keeps 1 and "1" apart but treats numpy and Python scalars alike."""
    if isinstance(value, tuple):
        return tuple(_level_key(v) for v in value)
    if isinstance(value, np.generic):
        value = value.item()
    return (type(value).__name__ if not isinstance(value, bool | int | float) else "number", value)


def _evaluate_new(evaluator: Any, data: pd.DataFrame, what: str) -> np.ndarray:
    """Evaluate a formulae matrix on new rows, with errors that say what is wrong."""
    try:
        with np.errstate(all="ignore"):
            matrix = evaluator.evaluate_new_data(data)
    except KeyError as exc:
        raise DataError(f"cannot evaluate the {what} on the new data: column {exc} is missing") from None
    except ValueError as exc:
        raise DataError(f"cannot evaluate the {what} on the new data: {exc}") from None
    values = np.asarray(matrix.design_matrix, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    return values
