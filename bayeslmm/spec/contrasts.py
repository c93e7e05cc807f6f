"""Factor codings: the contrasts a categorical predictor gets (pymer4's ``factors=`` and ``ordered=``).

By default formulae codes a categorical predictor with treatment contrasts against its first level
(levels sorted, or in category order for an ordered pandas categorical). This module lets the user
choose, per column, as pymer4 does:

===============================================  ==================================================
``factors={"x": ["b", "a", "c"]}``               treatment coding in that order, the first level the
                                                 reference: coefficients ``x[a]``, ``x[c]`` (each
                                                 level minus ``b``)
``factors={"x": ["lo", "mid", "hi"]}, ordered``  orthogonal polynomial contrasts over that order (R's
                                                 ``contr.poly``): ``x[.L]``, ``x[.Q]``, ``x[.C]``,
                                                 ``x[^4]``, ...
``factors={"x": {"a": 1, "b": -1, "c": 0}}``     one custom contrast (weights summing to 0) whose
                                                 coefficient estimates ``sum_l w_l mu_l`` (here
                                                 ``mu_a - mu_b``), named ``x[a - b]``; the remaining
                                                 ``k - 2`` columns are orthonormal contrasts
                                                 orthogonal to it (pymer4's ``con2R``, gmodels'
                                                 ``make.contrasts``), named ``x[orth1]``, ...
``C(x, levels=["b", "a", "c"])`` in a formula    the same as the first row, for that column
===============================================  ==================================================

Mechanics: :func:`apply_codings` rewrites every occurrence of a coded column ``x`` in the formula's
expressions to ``bayeslmm_code_<i>(x)`` and returns the namespace that holds that function, which
hands formulae the column's values as text with a formulae ``Encoding`` of the coding (formulae's
``C()``, used directly, refuses new data that lacks some levels of an ordered categorical);
:func:`bayeslmm.spec.design.build_design` evaluates the rewritten formula in that namespace, so
formulae builds every model matrix (interactions included) and evaluates new data with the same
coding. :func:`display_name` turns formulae's labels back into ``x[...]``. Levels are matched by their
text, so ``175`` and ``"175"`` name the same level (as in pymer4, which converts the column to
strings).
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError
from bayeslmm.spec.design import build_design, to_pandas
from bayeslmm.spec.formula import ParsedFormula, RandomTerm

__all__ = [
    "FactorCoding",
    "treatment_coding",
    "polynomial_coding",
    "custom_coding",
    "sum_coding",
    "codings_from_factors",
    "apply_codings",
    "display_name",
    "rename_design_terms",
    "build_coded_design",
]

_PREFIX = "bayeslmm_code_"
_CALL = re.compile(rf"{_PREFIX}\d+\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*\)")
_LEVELS_CALL = re.compile(r"C\(\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*,\s*levels\s*=\s*(\[[^\]]*\])\s*\)")
_FACTORS_HELP = (
    "factors must be a dict keyed by column, each value either a list of the column's levels in the "
    "wanted order (treatment coding against the first, or polynomial contrasts with ordered=True) or a "
    "dict {level: weight} giving one contrast whose weights sum to 0"
)


@dataclass(frozen=True, eq=False)
class FactorCoding:
    """The contrast matrix of one categorical column.

    Attributes
    ----------
    column : str
    levels : tuple
        The column's levels in the coding's order (values as in the data).
    matrix : ndarray, shape (k, k - 1)
        Row ``i`` codes ``levels[i]``; used where formulae codes the factor with an intercept in the
        model (reduced rank). Where it codes it at full rank (no intercept, or an interaction without
        its margins) every level gets its own indicator, as in R.
    labels : tuple of str, length k - 1
        Column labels: coefficient ``x[label]``.
    kind : str
        ``"treatment"``, ``"polynomial"``, ``"custom"`` or ``"sum"``.
    """

    column: str
    levels: tuple
    matrix: np.ndarray
    labels: tuple[str, ...]
    kind: str

    def rows_for(self, levels: list) -> np.ndarray:
        """Rows of :attr:`matrix` for ``levels`` (formulae's order), matched by text."""
        return self.matrix[self._positions(levels)]

    def indicators_for(self, levels: list) -> np.ndarray:
        """Full-rank coding: one indicator column per level in this coding's order, rows for ``levels``."""
        return np.eye(len(self.levels))[self._positions(levels)]

    def _positions(self, levels: list) -> list[int]:
        lookup = {str(level): i for i, level in enumerate(self.levels)}
        missing = [level for level in levels if str(level) not in lookup]
        if missing:
            raise DataError(
                f"column {self.column!r} has level(s) {missing} that its coding does not list "
                f"({list(self.levels)}); list every level"
            )
        return [lookup[str(level)] for level in levels]


# ----------------------------------------------------------------------------------------- codings
def treatment_coding(column: str, levels: list) -> FactorCoding:
    """Treatment (dummy) coding with ``levels[0]`` the reference (R's ``contr.treatment``)."""
    k = len(levels)
    matrix = np.vstack([np.zeros((1, k - 1)), np.eye(k - 1)])
    return FactorCoding(column, tuple(levels), matrix, tuple(str(level) for level in levels[1:]), "treatment")


def sum_coding(column: str, levels: list) -> FactorCoding:
    """Sum-to-zero coding, the last level coded ``-1`` (R's ``contr.sum``)."""
    k = len(levels)
    matrix = np.vstack([np.eye(k - 1), -np.ones((1, k - 1))])
    return FactorCoding(column, tuple(levels), matrix, tuple(str(level) for level in levels[:-1]), "sum")


def polynomial_coding(column: str, levels: list) -> FactorCoding:
    """Orthonormal polynomial contrasts over equally spaced scores 1..k (R's ``contr.poly``).

    Column ``j`` is the degree-``j`` orthogonal polynomial evaluated at the levels in order, scaled to
    unit length; labels ``.L``, ``.Q``, ``.C``, ``^4``, ... as R prints them.
    """
    k = len(levels)
    scores = np.arange(1, k + 1, dtype=float)
    powers = np.power.outer(scores - scores.mean(), np.arange(k))
    q, r = np.linalg.qr(powers)
    raw = q * np.diag(r)  # R's qr.qy(QR, diag(R)): the sign of each column follows R's diagonal
    matrix = raw / np.linalg.norm(raw, axis=0)
    names = [".L", ".Q", ".C"] + [f"^{degree}" for degree in range(4, k)]
    return FactorCoding(column, tuple(levels), matrix[:, 1:], tuple(names[: k - 1]), "polynomial")


def custom_coding(column: str, weights: dict) -> FactorCoding:
    """One custom contrast ``sum_l w_l mu_l`` and orthonormal contrasts orthogonal to it (pymer4's ``con2R``).

    The first column is ``w / (w'w)``, so that its coefficient estimates ``w' mu`` (the other columns
    and the intercept are orthogonal to it); the remaining ``k - 2`` columns complete an orthonormal
    basis of the contrasts orthogonal to ``w`` (from a QR decomposition, signs fixed so that the first
    non-zero entry of each is positive).
    """
    levels = list(weights)
    w = np.array([weights[level] for level in levels], dtype=float)
    k = len(levels)
    value = w / float(w @ w)
    q, _ = np.linalg.qr(np.column_stack([np.ones(k), value]), mode="complete")
    rest = q[:, 2:]
    for j in range(rest.shape[1]):
        first = rest[np.flatnonzero(np.abs(rest[:, j]) > 1e-12)[0], j]
        rest[:, j] *= np.sign(first)
    matrix = np.column_stack([value, rest])
    labels = (_contrast_label(levels, w),) + tuple(f"orth{j}" for j in range(1, k - 1))
    return FactorCoding(column, tuple(levels), matrix, labels, "custom")


def _contrast_label(levels: list, w: np.ndarray) -> str:
    """``"a - b"``, ``"a - 0.5 b - 0.5 c"``: the contrast as it reads."""
    parts = []
    for level, weight in zip(levels, w):
        if weight == 0:
            continue
        size = abs(weight)
        text = f"{level}" if size == 1 else f"{size:g} {level}"
        if not parts:
            parts.append(text if weight > 0 else f"-{text}")
        else:
            parts.append(("+ " if weight > 0 else "- ") + text)
    return " ".join(parts)


# ----------------------------------------------------------------------------------------- user input
def codings_from_factors(factors: Any, ordered: bool, data: pd.DataFrame) -> dict[str, FactorCoding]:
    """The codings of pymer4's ``factors=`` and ``ordered=`` arguments, checked against the data.

    Parameters
    ----------
    factors : dict or None
        ``{column: [levels in order]}`` or ``{column: {level: weight}}``.
    ordered : bool
        Polynomial contrasts for the columns given as lists.
    data : pandas.DataFrame

    Returns
    -------
    dict of str to FactorCoding

    Raises
    ------
    TypeError
        ``factors`` is not such a dict.
    DataError
        A column that is not in the data, levels that do not match the column's, weights that are not
        a contrast.
    ValueError
        ``ordered=True`` without ``factors``.
    """
    if factors is None:
        if ordered:
            raise ValueError(
                "ordered=True gives polynomial contrasts to the factors named in factors=; pass "
                "factors={'column': [levels in order]} as well"
            )
        return {}
    if not isinstance(factors, dict):
        raise TypeError(f"{_FACTORS_HELP}; got {type(factors).__name__}")
    codings = {}
    for column, spec in factors.items():
        if column not in data.columns:
            raise DataError(f"factors: {column!r} is not a column of the data; columns: {list(map(str, data.columns))}")
        observed = _observed_levels(data[column])
        if isinstance(spec, dict):
            levels = _match_levels(column, list(spec), observed)
            weights = _weights(column, spec)
            codings[column] = custom_coding(column, dict(zip(levels, weights)))
        elif isinstance(spec, list | tuple):
            levels = _match_levels(column, list(spec), observed)
            if len(levels) < 2:
                raise DataError(f"factors: column {column!r} needs at least two levels to be coded")
            codings[column] = polynomial_coding(column, levels) if ordered else treatment_coding(column, levels)
        else:
            raise TypeError(f"{_FACTORS_HELP}; the value for {column!r} is a {type(spec).__name__}")
    return codings


def _observed_levels(series: pd.Series) -> list:
    values = series.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        return list(values.cat.remove_unused_categories().cat.categories)
    return list(pd.unique(values))


def _match_levels(column: str, given: list, observed: list) -> list:
    """The data's level values in the order given (matched by text); every level exactly once."""
    texts = [str(level) for level in given]
    duplicated = sorted({t for t in texts if texts.count(t) > 1})
    if duplicated:
        raise DataError(f"factors: level(s) {duplicated} of {column!r} are listed more than once")
    by_text = {str(level): level for level in observed}
    unknown = [level for level in given if str(level) not in by_text]
    missing = [level for level in observed if str(level) not in set(texts)]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"{unknown} are not levels of the column")
        if missing:
            problems.append(f"the column's level(s) {missing} are not listed")
        raise DataError(
            f"factors: the levels given for {column!r} do not match its data: {'; '.join(problems)}. "
            f"List each of its levels once: {[str(level) for level in observed]}"
        )
    return [by_text[text] for text in texts]


def _weights(column: str, spec: dict) -> list[float]:
    try:
        weights = [float(value) for value in spec.values()]
    except (TypeError, ValueError):
        raise DataError(f"factors: the contrast weights for {column!r} must be numbers, got {list(spec.values())}") from None
    if not all(np.isfinite(weights)) or not any(weights):
        raise DataError(f"factors: the contrast weights for {column!r} must be finite and not all 0")
    if abs(sum(weights)) > 1e-9 * max(map(abs, weights)):
        raise DataError(
            f"factors: the weights for {column!r} sum to {sum(weights):g}; a contrast's weights sum to 0 "
            "(e.g. {'a': 1, 'b': -0.5, 'c': -0.5} compares a with the mean of b and c)"
        )
    return weights


# ----------------------------------------------------------------------------------------- formulas
def apply_codings(
    formula: ParsedFormula, data: pd.DataFrame, codings: dict[str, FactorCoding]
) -> tuple[ParsedFormula, dict[str, Any]]:
    """Rewrite the formula's expressions so that formulae codes the columns as ``codings`` say.

    ``C(x, levels=[...])`` in the formula becomes a treatment coding of ``x`` in that order (formulae
    itself cannot parse a list); every occurrence of a coded column ``x`` becomes
    ``bayeslmm_code_<i>(x)``.

    Returns
    -------
    ParsedFormula
        The same formula text; the fixed part and the random expressions rewritten.
    dict
        The namespace to evaluate them in (:func:`bayeslmm.spec.design.build_design`'s ``namespace``).

    Raises
    ------
    FormulaError
        ``C(x, levels=[...])`` whose list cannot be read, or a column coded both there and in ``factors``.
    DataError
        Levels in ``C(x, levels=[...])`` that do not match the column's.
    """
    codings = dict(codings)
    expressions = [formula.fixed] + [term.expr for term in formula.random]
    for expression in expressions:
        for match in _LEVELS_CALL.finditer(expression):
            column, listed = match.group(1), match.group(2)
            try:
                levels = list(ast.literal_eval(listed))
            except (ValueError, SyntaxError):
                raise FormulaError(f"{match.group(0)!r}: levels must be a list of literals such as ['b', 'a', 'c']") from None
            if column not in data.columns:
                raise DataError(f"{match.group(0)!r}: {column!r} is not a column of the data")
            coding = treatment_coding(column, _match_levels(column, levels, _observed_levels(data[column])))
            if column in codings:
                raise FormulaError(
                    f"column {column!r} is coded twice, in the formula ({match.group(0)}) and in factors=; keep one"
                )
            codings[column] = coding
    if not codings:
        return formula, {}
    names = {column: f"{_PREFIX}{i}" for i, column in enumerate(codings)}
    namespace = {names[column]: _coder(coding) for column, coding in codings.items()}

    def rewrite(expression: str) -> str:
        expression = _LEVELS_CALL.sub(lambda m: m.group(1), expression)
        for column, name in names.items():
            expression = re.sub(rf"(?<![\w.]){re.escape(column)}(?![\w.(\[])", f"{name}({column})", expression)
        return expression

    rewritten = replace(
        formula,
        fixed=rewrite(formula.fixed),
        random=tuple(RandomTerm(expr=rewrite(term.expr), factor=term.factor) for term in formula.random),
    )
    return rewritten, namespace


def build_coded_design(
    formula: ParsedFormula,
    data: Any,
    family: Any = None,
    factors: dict | None = None,
    ordered: bool = False,
    weights: Any = None,
    offset: Any = None,
):
    """:func:`bayeslmm.spec.design.build_design` with the factor codings of ``factors``/``ordered`` and of
    ``C(x, levels=[...])`` in the formula, coefficient names shown as ``x[level]`` (``weights`` and
    ``offset`` as ``build_design``'s).

    Raises
    ------
    TypeError, ValueError, DataError, FormulaError
        As :func:`codings_from_factors`, :func:`apply_codings` and ``build_design``.
    """
    frame = to_pandas(data)
    codings = codings_from_factors(factors, ordered, frame)
    rewritten, namespace = apply_codings(formula, frame, codings)
    design = build_design(rewritten, frame, family, weights=weights, offset=offset, namespace=namespace or None)
    return rename_design_terms(design) if namespace else design


def display_name(label: str) -> str:
    """formulae's label of a coded column, ``bayeslmm_code_0(x)[a]``, as ``x[a]``."""
    return _CALL.sub(lambda m: m.group(1), label)


def rename_design_terms(design):
    """The design with the fixed and random column names of coded columns shown as ``x[level]``."""
    fixed = replace(design.fixed, terms=tuple(display_name(term) for term in design.fixed.terms))
    blocks = tuple(replace(block, terms=tuple(display_name(t) for t in block.terms)) for block in design.random.blocks)
    return replace(design, fixed=fixed, random=replace(design.random, blocks=blocks))


def _coder(coding: FactorCoding):
    """The function a rewritten formula calls on the column: its values as text, with the coding."""
    from formulae.categorical import CategoricalBox

    encoding = _encoding_class()(coding)

    def code(values):
        return CategoricalBox(np.asarray(values).astype(str), encoding, None)

    code.coding = coding  # read back by bayeslmm.spec.hypotheses for the levels' order
    return code


@functools.cache
def _encoding_class():
    """formulae's ``Encoding`` for a :class:`FactorCoding` (formulae is imported only when a design is built)."""
    from formulae.categorical import ContrastMatrix, Encoding

    class CodingEncoding(Encoding):
        def __init__(self, coding: FactorCoding) -> None:
            self.coding = coding

        def code_with_intercept(self, levels):
            labels = [str(level) for level in self.coding.levels]
            return ContrastMatrix(self.coding.indicators_for(list(levels)), labels)

        def code_without_intercept(self, levels):
            return ContrastMatrix(self.coding.rows_for(list(levels)), list(self.coding.labels))

    return CodingEncoding
