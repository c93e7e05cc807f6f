"""Least-squares references: complete pooling (one regression) and no pooling (one per group).

For a mixed model's factor ``g``, no pooling gives every term that varies by ``g`` its own coefficient
per level and estimates the other fixed terms once, in one least-squares fit: the limit of the mixed
model as the group variances grow without bound. With ``(Days | Subject)`` this is a separate regression
per subject (lme4's ``lmList``); with ``(1 | Subject)`` one intercept per subject and a common ``Days``
slope. Coefficients that the data cannot identify are NaN, as R's ``lm`` reports aliased ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from bayeslmm.spec.design import Design

__all__ = ["least_squares", "complete_pooling", "no_pooling", "group_least_squares"]


def least_squares(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS coefficients, shape (p,), with NaN for columns aliased with earlier ones (as R's ``lm``)."""
    from scipy import linalg

    if X.shape[1] == 0:
        return np.zeros(0)
    _, r, pivot = linalg.qr(X, mode="economic", pivoting=True)
    diagonal = np.abs(np.diag(r))
    tolerance = diagonal[0] * max(X.shape) * np.finfo(float).eps * 10 if diagonal.size and diagonal[0] > 0 else np.inf
    kept = np.sort(pivot[: int(np.sum(diagonal > tolerance))])
    coef = np.full(X.shape[1], np.nan)
    if kept.size:
        coef[kept] = np.linalg.lstsq(X[:, kept], y, rcond=None)[0]
    return coef


def complete_pooling(design: Design) -> pd.Series:
    """OLS of the response on the fixed part ``X``, indexed by fixed term (NaN for aliased columns)."""
    coef = least_squares(design.X, design.y)
    return pd.Series(coef, index=pd.Index(design.fixed_terms, name="term"), name="complete_pooling")


def no_pooling(design: Design, factor: str | None = None) -> pd.DataFrame:
    """No-pooling least-squares coefficients of every level of ``factor`` (see the module docstring).

    Parameters
    ----------
    design : Design
    factor : str, optional
        The grouping factor; the formula's first by default.

    Returns
    -------
    pandas.DataFrame, shape (G, number of terms)
        Indexed by the factor's levels; columns as lme4's ``coef()``: group-only terms first, then the
        fixed terms (common terms repeat their single estimate). Coefficients a group cannot identify
        (fewer rows than its terms, or a constant predictor) are NaN, with a warning.

    Raises
    ------
    DataError
        The design has no grouping factor, or ``factor`` is not one of them.
    """
    factor = design.random.resolve_factor(factor)
    blocks = design.blocks_of(factor)
    varying_terms, columns = [], []
    for block in blocks:
        for j, term in enumerate(block.terms):
            if term not in varying_terms:
                varying_terms.append(term)
                columns.append(block.Z[:, j])
    common = [j for j, term in enumerate(design.fixed_terms) if term not in varying_terms]
    group_only = [term for term in varying_terms if term not in design.fixed_terms]
    levels = blocks[0].levels
    varying, common_coef = group_least_squares(
        design.y, np.column_stack(columns), design.X[:, common], blocks[0].group_index, len(levels)
    )
    frame = pd.DataFrame(varying, index=levels, columns=varying_terms)
    for j, position in enumerate(common):
        frame[design.fixed_terms[position]] = common_coef[j]
    unidentified = frame.index[frame[varying_terms].isna().any(axis=1)]
    if len(unidentified):
        warnings.warn(
            f"no pooling: {len(unidentified)} group(s) of {factor!r} cannot identify their own "
            f"{', '.join(varying_terms)} (too few rows or a predictor constant within the "
            f"group); their no-pooling estimates are NaN: {', '.join(map(str, unidentified))}",
            UserWarning,
            stacklevel=3,
        )
    return frame[group_only + list(design.fixed_terms)]


def group_least_squares(
    y: np.ndarray, V: np.ndarray, C: np.ndarray, codes: np.ndarray, G: int
) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``y`` on group-specific columns ``V`` and common columns ``C``.

    The common coefficients come from the within-group residuals of ``y`` and ``C`` on ``V``
    (Frisch-Waugh-Lovell), the group coefficients from each group's regression of ``y - C b`` on ``V``.

    Parameters
    ----------
    y : ndarray, shape (n,)
    V : ndarray, shape (n, k)
    C : ndarray, shape (n, c)
    codes : ndarray of int, shape (n,)
        Group of each row, in ``0 .. G-1``.
    G : int

    Returns
    -------
    varying : ndarray, shape (G, k)
        NaN for groups whose ``V`` rows have rank below ``k``.
    common : ndarray, shape (c,)
        NaN for aliased columns.
    """
    rows_of = [np.flatnonzero(codes == g) for g in range(G)]
    common = np.zeros(C.shape[1])
    if C.shape[1]:
        y_within, C_within = y.copy(), C.copy()
        for rows in rows_of:
            target = np.column_stack([y[rows], C[rows]])
            fitted = V[rows] @ np.linalg.lstsq(V[rows], target, rcond=None)[0]
            y_within[rows], C_within[rows] = (target - fitted)[:, 0], (target - fitted)[:, 1:]
        common = least_squares(C_within, y_within)
    adjusted = y - C @ np.nan_to_num(common)
    varying = np.full((G, V.shape[1]), np.nan)
    for g, rows in enumerate(rows_of):
        if len(rows) >= V.shape[1] and np.linalg.matrix_rank(V[rows]) == V.shape[1]:
            varying[g] = np.linalg.lstsq(V[rows], adjusted[rows], rcond=None)[0]
    return varying, common
