"""Simulating responses from a mixed model, and designs with more (or fewer) groups.

Two pieces that the parametric bootstrap, power analysis and simulation-based calibration share:

- :class:`TrueParameters` and :func:`simulate_response`: new responses from known fixed effects,
  covariances of the group effects and family parameters. Each block's group effects are drawn from
  ``N(0, Sigma_b)`` (one row per level), the linear predictor is ``X beta + Z b + offset``, and the
  response is drawn by the family (:meth:`~bayeslmm.spec.families.Family.random`: Gaussian noise with
  SD ``sigma``, binomial or Poisson counts), as lme4's ``simulate()`` does with new group effects.
- :func:`extend_data`: the rows of a data set with a grouping factor grown (or cut) to ``n`` levels, as
  simr's ``extend(along=...)``: levels are added by copying the rows of existing levels under new labels,
  or the first ``n`` levels are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError
from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family, get_family

__all__ = ["TrueParameters", "simulate_response", "extend_data", "extend_within", "draw_parameters", "lkj_correlation"]


@dataclass(frozen=True)
class TrueParameters:
    """The parameters data are simulated from.

    Attributes
    ----------
    beta : ndarray, shape (p,)
        Fixed effects, in the order of the design's columns.
    covariances : tuple of ndarray
        Covariance ``Sigma_b`` (k_b, k_b) of each random-effects block's terms, in formula order.
    aux : dict of str to float
        The family's parameters, e.g. ``{"sigma": 25.6}`` (Gaussian residual SD).
    """

    beta: np.ndarray
    covariances: tuple[np.ndarray, ...]
    aux: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_reml(
        cls, design: Design, beta: np.ndarray, theta: np.ndarray, sigma: float | None, aux: dict | None = None
    ) -> "TrueParameters":
        """From an lme4-style fit: ``Sigma_b = sigma^2 T_b T_b'`` of the relative factors ``theta`` (``sigma``
        None for a GLMM: ``T_b T_b'``); ``aux`` the family's parameters (default ``{"sigma": sigma}``)."""
        covariances = tuple(design.random.covariances(theta, 1.0 if sigma is None else sigma))
        aux = {"sigma": float(sigma)} if aux is None else {name: float(value) for name, value in aux.items()}
        return cls(np.asarray(beta, dtype=float), covariances, aux)

    def with_fixed(self, position: int, value: float) -> "TrueParameters":
        """The same parameters with fixed effect ``position`` set to ``value``."""
        beta = self.beta.copy()
        beta[position] = value
        return TrueParameters(beta, self.covariances, dict(self.aux))


def simulate_response(
    design: Design,
    parameters: TrueParameters,
    rng: np.random.Generator,
    family: Family | None = None,
    effects: list[np.ndarray] | None = None,
) -> np.ndarray:
    """A response simulated from ``parameters`` on the rows of ``design``, shape (n,).

    The group effects are drawn first (block by block, ``standard_normal((G, k)) @ L'`` with
    ``L L' = Sigma_b``), unless given, then the response given them (lme4's ``simulate`` with
    ``use.u = FALSE``, or ``TRUE`` with the conditional modes as ``effects``).

    Parameters
    ----------
    design : Design
    parameters : TrueParameters
        Sizes must match the design (``p`` fixed effects, one covariance per block).
    rng : numpy.random.Generator
    family : Family, optional
        Default gaussian.
    effects : list of ndarray, optional
        Group effects (G, k) per block to use instead of drawing new ones.

    Returns
    -------
    ndarray, shape (n,)
        On the scale :attr:`Design.y <bayeslmm.spec.design.Design.y>` uses (successes for binomial).

    Raises
    ------
    ValueError
        Parameters of the wrong size, or a covariance that is not positive semi-definite.
    """
    family = family or get_family("gaussian")
    beta = np.asarray(parameters.beta, dtype=float)
    if beta.shape != (design.X.shape[1],):
        raise ValueError(f"beta has {beta.size} values for {design.X.shape[1]} fixed effects {list(design.fixed_terms)}")
    if len(parameters.covariances) != len(design.blocks):
        raise ValueError(f"{len(parameters.covariances)} covariance matrices for {len(design.blocks)} random-effects blocks")
    if effects is None:
        effects = []
        for block, covariance in zip(design.blocks, parameters.covariances):
            root = covariance_root(covariance, block.n_terms, block.name)
            effects.append(rng.standard_normal((block.n_levels, block.n_terms)) @ root.T)
    mu = family.inverse_link(design.linear_predictor(beta, effects))
    aux = {name: np.array([value]) for name, value in parameters.aux.items()}  # one "draw" of each
    return np.asarray(family.random(mu[None, :], aux, rng, design.trials)[0], dtype=float)


def covariance_root(covariance: Any, k: int, name: str) -> np.ndarray:
    """``L`` (k, k) with ``L L' = covariance``: its Cholesky factor, or a symmetric root when it is singular.

    Raises
    ------
    ValueError
        Not a symmetric positive semi-definite (k, k) matrix.
    """
    matrix = np.atleast_2d(np.asarray(covariance, dtype=float))
    if matrix.shape != (k, k) or not np.all(np.isfinite(matrix)) or not np.allclose(matrix, matrix.T):
        raise ValueError(f"the covariance of block {name!r} must be a symmetric {k} x {k} matrix, got {matrix.tolist()}")
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(matrix)
        if values.min() < -1e-8 * max(1.0, values.max()):
            raise ValueError(f"the covariance of block {name!r} is not positive semi-definite: {matrix.tolist()}") from None
        return vectors * np.sqrt(np.clip(values, 0.0, None))


def extend_within(data: pd.DataFrame, columns: list[str], n_rows: int) -> pd.DataFrame:
    """The rows of ``data`` with ``n_rows`` rows per combination of ``columns`` (simr's ``extend(within=)``).

    Each combination's rows are repeated in turn (row ``i`` of the result is row ``i mod m`` of the
    combination's ``m``), or cut to the first ``n_rows``: with ``["Subject", "Days"]`` and 2, every
    subject is measured twice on every day; with ``["Subject"]`` and 20, each subject's 10 days are
    measured twice.

    Parameters
    ----------
    data : pandas.DataFrame
    columns : list of str
        Columns of ``data`` whose combinations are kept, each with ``n_rows`` rows.
    n_rows : int
        At least 1.

    Returns
    -------
    pandas.DataFrame
        A new frame with a fresh RangeIndex, the combinations in their order of appearance.

    Raises
    ------
    DataError
        A column that is not in ``data``, or ``n_rows`` below 1.
    """
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise DataError(f"{missing} not columns of the data; columns: {list(map(str, data.columns))}")
    if isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer) or n_rows < 1:
        raise DataError(f"within: the number of rows per combination must be a positive integer, got {n_rows!r}")
    positions = data.groupby(list(columns), sort=False, observed=True, dropna=False).indices
    order = [rows for rows in positions.values()]
    order.sort(key=lambda rows: rows[0])
    take = np.concatenate([rows[np.arange(n_rows) % len(rows)] for rows in order])
    return data.iloc[take].reset_index(drop=True)


def extend_data(data: pd.DataFrame, factor: str, n_levels: int, nested: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows of ``data`` with grouping factor ``factor`` at ``n_levels`` levels (simr's ``extend``).

    With fewer levels than ``data`` has, the rows of the first ``n_levels`` levels (in sorted order) are
    kept. With more, the levels are copied in turn, every row of a copied level under a new label,
    until there are ``n_levels``: each new group has the design of an existing one (its predictor
    values and numbers of rows). New labels continue an integer factor (``max + 1``, ...) and add
    ``".2"``, ``".3"`` to other labels. Columns in ``nested`` (grouping factors whose levels each lie
    within one level of ``factor``, e.g. classes within schools) get new labels in a copy too, so a
    copied school has new classes; other grouping factors (crossed ones, e.g. items shared by every
    subject) keep theirs.

    Parameters
    ----------
    data : pandas.DataFrame
    factor : str
        A column of ``data``.
    n_levels : int
        At least 2.
    nested : tuple of str
        Columns relabelled in copies, as described above.

    Returns
    -------
    pandas.DataFrame
        A new frame; its index is a fresh RangeIndex when rows were added.

    Raises
    ------
    DataError
        ``factor`` is not a column, or ``n_levels`` is below 2.
    """
    if factor not in data.columns:
        raise DataError(f"{factor!r} is not a column of the data; columns: {list(map(str, data.columns))}")
    if isinstance(n_levels, bool) or not isinstance(n_levels, int | np.integer) or n_levels < 2:
        raise DataError(f"a grouping factor needs at least 2 levels, got {n_levels!r} for {factor!r}")
    values = data[factor]
    levels = sorted(pd.unique(values.dropna()), key=_sort_key)
    if n_levels <= len(levels):
        return data.loc[values.isin(levels[:n_levels]).to_numpy()].copy()
    pieces = [data]
    taken = {column: set(data[column].dropna().tolist()) for column in (factor, *nested)}
    for copy in range(len(levels), n_levels):
        level = levels[copy % len(levels)]
        rows = data.loc[(values == level).to_numpy()].copy()
        for column in (factor, *nested):
            mapping = {old: _new_label(old, taken[column]) for old in pd.unique(rows[column].dropna())}
            rows[column] = _relabel(rows[column], mapping)
        pieces.append(rows)
    return pd.concat(pieces, ignore_index=True)


def _sort_key(value: Any) -> tuple:
    return (type(value).__name__, value) if not isinstance(value, str) else ("str", value)


def _new_label(old: Any, taken: set) -> Any:
    """An unused label for a copy of level ``old``: the next integer for integers, ``old.2`` otherwise."""
    if isinstance(old, int | np.integer) and not isinstance(old, bool):
        label = max((v for v in taken if isinstance(v, int | np.integer)), default=old) + 1
    else:
        count, label = 2, f"{old}.2"
        while label in taken:
            count += 1
            label = f"{old}.{count}"
    taken.add(label)
    return label


def _relabel(column: pd.Series, mapping: dict) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        new = [label for label in mapping.values() if label not in column.cat.categories]
        column = column.cat.add_categories(new)
        return column.map(mapping).astype(column.dtype)
    return column.map(mapping)


def draw_parameters(design: Design, priors: Any, rng: np.random.Generator) -> TrueParameters:
    """One draw of every parameter from the model's priors (for simulation-based calibration).

    Fixed effects are drawn on the centred scale the priors are written for, then put on the scale of
    ``X`` (:meth:`~bayeslmm.spec.random_effects.FixedEffects.uncentre`); each block's covariance is
    ``diag(sd) R diag(sd)`` with the SDs from their priors and ``R`` from the LKJ prior (onion method).

    Parameters
    ----------
    design : Design
    priors : ModelPriors
        Resolved priors of a Gaussian model (with ``sigma``).
    rng : numpy.random.Generator

    Returns
    -------
    TrueParameters
    """
    beta_c = np.array([priors.fixed[term].sample(1, rng)[0] for term in design.fixed_terms])
    covariances = []
    for block in design.blocks:
        sd = np.array([priors.group_sd[block.name][term].sample(1, rng)[0] for term in block.terms])
        correlation = lkj_correlation(block.n_terms, priors.eta.get(block.name, 1.0), rng)
        covariances.append(correlation * np.outer(sd, sd))
    aux = {name: float(prior.sample(1, rng)[0]) for name, prior in priors.aux.items()}
    return TrueParameters(design.fixed.uncentre(beta_c), tuple(covariances), aux)


def lkj_correlation(k: int, eta: float, rng: np.random.Generator) -> np.ndarray:
    """A correlation matrix (k, k) from the LKJ(eta) distribution (Lewandowski, Kurowicka & Joe 2009, onion method)."""
    if k == 1:
        return np.ones((1, 1))
    shape = eta + (k - 2) / 2
    r = 2 * rng.beta(shape, shape) - 1
    correlation = np.array([[1.0, r], [r, 1.0]])
    for m in range(2, k):
        shape -= 0.5
        y = rng.beta(m / 2, shape)
        z = rng.standard_normal(m)
        w = np.sqrt(y) * z / np.linalg.norm(z)
        q = np.linalg.cholesky(correlation) @ w
        correlation = np.block([[correlation, q[:, None]], [q[None, :], np.ones((1, 1))]])
    return correlation
