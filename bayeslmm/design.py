"""Design: from a parsed formula and a data frame to the arrays a mixed model is built from.

formulae builds every model matrix (fixed part and each random block's expression); this module
checks the data first so that mistakes surface as clear :class:`~bayeslmm.errors.DataError` messages,
drops incomplete rows as lme4's ``na.omit`` does, and indexes the grouping factors.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any

import formulae
import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError, UnsupportedSyntaxError
from bayeslmm.formula import ParsedFormula, RandomTerm

__all__ = ["RandomBlock", "Design", "build_design", "to_pandas"]

INTERCEPT = "(Intercept)"


@dataclass(frozen=True)
class RandomBlock:
    """One random-effects block ``(expr | factor)`` evaluated on the data.

    Attributes
    ----------
    name : str
        Unique label of the block: the factor name, with ``.1``, ``.2`` appended for a second and third
        block on the same factor (lme4's convention), e.g. ``"Subject"``, ``"Subject.1"``.
    factor : str
        The grouping factor, e.g. ``"Subject"`` or ``"g1:g2"``.
    terms : tuple of str
        Names of the block's ``k`` columns, e.g. ``("(Intercept)", "Days")``.
    Z : ndarray, shape (n, k)
        The block's model matrix: its columns evaluated on every row.
    group_index : ndarray of int, shape (n,)
        For each row, the position of its level in ``levels``.
    levels : pandas.Index, length G
        The levels of ``factor`` present in the data, sorted.
    """

    name: str
    factor: str
    terms: tuple[str, ...]
    Z: np.ndarray
    group_index: np.ndarray
    levels: pd.Index

    @property
    def n_levels(self) -> int:
        """Number of groups ``G``."""
        return len(self.levels)

    @property
    def n_terms(self) -> int:
        """Number of columns ``k``."""
        return len(self.terms)


@dataclass(frozen=True)
class Design:
    """Everything a mixed model needs from the formula and the data.

    Attributes
    ----------
    formula : ParsedFormula
    y : ndarray, shape (n,)
        The response, finite floats.
    X : ndarray, shape (n, p)
        Fixed-effects model matrix.
    fixed_terms : tuple of str
        Names of the ``p`` columns of ``X``; the intercept is ``"(Intercept)"`` as in lme4.
    blocks : tuple of RandomBlock
        One per random-effects block, in formula order.
    data : pandas.DataFrame
        A copy of the rows used (incomplete rows dropped), with the caller's index.
    n_dropped : int
        How many rows were dropped for missing values.
    """

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    fixed_terms: tuple[str, ...]
    blocks: tuple[RandomBlock, ...]
    data: pd.DataFrame
    n_dropped: int = 0
    _fixed_matrices: Any = field(default=None, repr=False, compare=False)

    @property
    def n_obs(self) -> int:
        return len(self.y)

    @property
    def factors(self) -> dict[str, pd.Index]:
        """Levels of each grouping factor, in formula order (pymer4's ``grps``)."""
        return {block.factor: block.levels for block in self.blocks}

    def blocks_of(self, factor: str) -> tuple[RandomBlock, ...]:
        """The blocks whose grouping factor is ``factor``."""
        return tuple(block for block in self.blocks if block.factor == factor)


def to_pandas(data: Any) -> pd.DataFrame:
    """Return a pandas copy of ``data`` (a pandas or polars DataFrame); the input is never modified."""
    if isinstance(data, pd.DataFrame):
        return data.copy()
    module = type(data).__module__.split(".")[0]
    if module == "polars" and hasattr(data, "to_pandas"):
        return data.to_pandas()
    raise DataError(
        f"data must be a pandas or polars DataFrame, got {type(data).__name__}; "
        "build one with pandas.DataFrame(...) or pandas.read_csv(...)"
    )


def build_design(formula: ParsedFormula, data: Any) -> Design:
    """Evaluate ``formula`` on ``data``.

    Parameters
    ----------
    formula : ParsedFormula
        From :func:`bayeslmm.formula.parse_formula`.
    data : pandas.DataFrame or polars.DataFrame
        Not modified.

    Returns
    -------
    Design

    Raises
    ------
    DataError
        Empty data, unknown columns, a non-numeric or infinite response, non-finite predictors, a
        grouping factor with a single level, or more groups than observations.
    """
    frame = to_pandas(data)
    if len(frame) == 0:
        raise DataError("data has no rows; a mixed model needs observations to fit")

    used = _columns_used(formula, frame)
    frame, n_dropped = _drop_incomplete(frame, used)

    response_column = formula.response if formula.response in frame.columns else None
    if response_column is not None and not pd.api.types.is_numeric_dtype(frame[response_column]):
        raise DataError(
            f"response {response_column!r} has dtype {frame[response_column].dtype}, but a gaussian "
            "model needs a numeric response; convert it with pandas.to_numeric first"
        )

    fixed = _evaluate(f"{formula.response} ~ {formula.fixed}", frame, "fixed part")
    y = np.asarray(fixed.response.design_matrix, dtype=float).reshape(-1)
    if not np.all(np.isfinite(y)):
        bad = int(np.sum(~np.isfinite(y)))
        raise DataError(
            f"response {formula.response!r} has {bad} infinite or undefined value(s); "
            "remove those rows or choose a transformation that is finite on all of them"
        )
    X = np.asarray(fixed.common.design_matrix, dtype=float)
    fixed_terms = tuple(_term_names(fixed.common))
    _check_finite(X, "fixed-effects predictors")

    blocks = _build_blocks(formula.random, frame)
    for block in blocks:
        if block.n_levels >= len(y):
            raise DataError(
                f"grouping factor {block.factor!r} has {block.n_levels} levels for {len(y)} "
                "observations; a gaussian mixed model needs fewer groups than observations, or the "
                "group effects cannot be told apart from the residual"
            )
    return Design(
        formula=formula,
        y=y,
        X=X,
        fixed_terms=fixed_terms,
        blocks=blocks,
        data=frame,
        n_dropped=n_dropped,
        _fixed_matrices=fixed,
    )


def _columns_used(formula: ParsedFormula, frame: pd.DataFrame) -> list[str]:
    """Columns named anywhere in the formula; raise DataError for unknown ones."""
    names: set[str] = set()
    expressions = [f"{formula.response} ~ {formula.fixed}"] + [term.expr for term in formula.random]
    for expression in expressions:
        try:
            names |= formulae.model_description(expression).var_names
        except Exception as exc:  # formulae raises several unrelated types for bad syntax
            raise FormulaError(f"cannot parse {expression!r}: {exc}") from None
    for term in formula.random:
        names |= set(term.factor.split(":"))
    names.discard("")  # formulae lists an empty name for literal-only pieces such as I(x**2)
    unknown = sorted(name for name in names if name not in frame.columns)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, [str(c) for c in frame.columns], n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DataError(
            f"column(s) {', '.join(hints)} used in the formula are not in the data; "
            f"available columns: {', '.join(map(str, frame.columns))}"
        )
    return [column for column in frame.columns if column in names]


def _drop_incomplete(frame: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, int]:
    complete = frame[columns].notna().all(axis=1)
    n_dropped = int((~complete).sum())
    if n_dropped == len(frame):
        raise DataError(
            f"every row has a missing value in at least one of {columns}; no data left to fit"
        )
    if n_dropped:
        warnings.warn(
            f"{n_dropped} of {len(frame)} rows dropped because of missing values in "
            f"{', '.join(columns)} (as lme4's na.omit)",
            UserWarning,
            stacklevel=4,
        )
        frame = frame.loc[complete].copy()
    return frame, n_dropped


def _evaluate(expression: str, frame: pd.DataFrame, what: str):
    try:
        # log(0) and the like become -inf here; the finiteness checks afterwards report them clearly
        with np.errstate(all="ignore"):
            return formulae.design_matrices(expression, frame, na_action="error")
    except (DataError, FormulaError):
        raise
    except Exception as exc:
        raise FormulaError(f"cannot evaluate the {what} {expression!r}: {exc}") from None


def _term_names(common) -> list[str]:
    columns = common.as_dataframe().columns
    return [INTERCEPT if column == "Intercept" else str(column) for column in columns]


def _check_finite(matrix: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(matrix)):
        raise DataError(
            f"{what} contain {int(np.sum(~np.isfinite(matrix)))} infinite or undefined value(s); "
            "remove those rows or transform the predictor"
        )


def _build_blocks(terms: tuple[RandomTerm, ...], frame: pd.DataFrame) -> tuple[RandomBlock, ...]:
    blocks: list[RandomBlock] = []
    seen: dict[str, int] = {}
    for term in terms:
        matrices = _evaluate(term.expr, frame, f"random-effects expression of '({term.expr} | {term.factor})'")
        if matrices.common is None:
            raise UnsupportedSyntaxError(f"random-effects expression {term.expr!r} has no columns")
        Z = np.asarray(matrices.common.design_matrix, dtype=float)
        _check_finite(Z, f"random-effects predictors of ({term.expr} | {term.factor})")
        group_index, levels = _index_factor(term.factor, frame)
        count = seen.get(term.factor, 0)
        seen[term.factor] = count + 1
        blocks.append(
            RandomBlock(
                name=term.factor if count == 0 else f"{term.factor}.{count}",
                factor=term.factor,
                terms=tuple(_term_names(matrices.common)),
                Z=Z,
                group_index=group_index,
                levels=levels,
            )
        )
    return tuple(blocks)


def _index_factor(factor: str, frame: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """Integer codes and sorted levels of a grouping factor (a column or an interaction ``a:b``)."""
    columns = factor.split(":")
    if len(columns) == 1:
        values = frame[columns[0]]
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.cat.remove_unused_categories()
            codes, levels = values.cat.codes.to_numpy(), pd.Index(values.cat.categories)
        else:
            codes, levels = pd.factorize(values, sort=True)
    else:
        labels = frame[columns].astype(str).agg(":".join, axis=1)
        codes, levels = pd.factorize(labels, sort=True)
    levels = pd.Index(levels, name=factor)
    if len(levels) < 2:
        raise DataError(
            f"grouping factor {factor!r} has a single level ({levels[0]}); a random effect needs "
            "at least two groups (ideally five or more); drop the term or model it as a fixed effect"
        )
    return np.asarray(codes, dtype=np.int64), levels
