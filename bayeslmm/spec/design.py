"""Design: from a parsed formula and a data frame to the model matrices a mixed model is built from.

formulae (Bambi's formula engine) builds every model matrix (the fixed part and each random block's
expression); this module checks the data first so that mistakes surface as clear
:class:`~bayeslmm.errors.DataError` messages, drops incomplete rows as lme4's ``na.omit`` does, lets
the family validate and encode the response, and codes the grouping factors. The matrices themselves
live in :mod:`bayeslmm.spec.random_effects`.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError, UnsupportedSyntaxError
from bayeslmm.spec import expressions
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.formula import ParsedFormula, RandomTerm
from bayeslmm.spec.random_effects import (
    INTERCEPT,
    FixedEffects,
    RandomBlock,
    RandomEffects,
    group_codes,
)

__all__ = ["INTERCEPT", "RandomBlock", "Design", "build_design", "to_pandas"]


@dataclass(frozen=True)
class Design:
    """Everything a mixed model needs from the formula and the data.

    Attributes
    ----------
    formula : ParsedFormula
    y : ndarray, shape (n,)
        The response as the family encodes it (finite floats; 0/1 or successes for binomial).
    fixed : FixedEffects
        ``X`` and its column names.
    random : RandomEffects
        The random-effects blocks, in formula order.
    data : pandas.DataFrame
        A copy of the rows used (incomplete rows dropped), with the caller's index.
    n_dropped : int
        How many rows were dropped for missing values.
    trials : ndarray, shape (n,), optional
        Binomial trials per row (None for other families).
    offset : ndarray, shape (n,), optional
        A known term added to the linear predictor: the formula's ``offset(...)`` terms plus the
        ``offset=`` argument (None when there is none).
    weights, offset_argument : ndarray, shape (n,), optional
        The ``weights=`` and ``offset=`` arguments on the rows used (kept to rebuild the model).
    response_note : str
        How the response was read (e.g. which level of a binary factor is the success); "" if plainly.
    """

    formula: ParsedFormula
    y: np.ndarray
    fixed: FixedEffects
    random: RandomEffects
    data: pd.DataFrame
    n_dropped: int = 0
    trials: np.ndarray | None = None
    offset: np.ndarray | None = None
    weights: np.ndarray | None = None
    offset_argument: np.ndarray | None = None
    response_note: str = ""

    # -- shortcuts to the matrices ------------------------------------------------------------------
    @property
    def X(self) -> np.ndarray:
        """Fixed-effects model matrix, shape (n, p)."""
        return self.fixed.X

    @property
    def fixed_terms(self) -> tuple[str, ...]:
        """Names of the columns of ``X``."""
        return self.fixed.terms

    @property
    def blocks(self) -> tuple[RandomBlock, ...]:
        """The random-effects blocks in formula order."""
        return self.random.blocks

    @property
    def n_obs(self) -> int:
        """Number of rows used."""
        return len(self.y)

    @property
    def factors(self) -> dict[str, pd.Index]:
        """Levels of each grouping factor, in formula order (pymer4's ``grps``)."""
        return self.random.factors

    def blocks_of(self, factor: str) -> tuple[RandomBlock, ...]:
        """The blocks whose grouping factor is ``factor``."""
        return self.random.blocks_of(factor)

    def predictor_columns(self) -> list[str]:
        """Data columns used by the fixed part or a random block's expression, in formula order.

        The response and the grouping factors' columns are not predictors.
        """
        import formulae

        formula = self.formula
        columns = set(map(str, self.data.columns))
        excluded = {formula.response} | {part for factor in self.factors for part in factor.split(":")}
        found: list[str] = []
        for expression in [f"{formula.response} ~ {formula.fixed}"] + [term.expr for term in formula.random]:
            for term in formulae.model_description(expression).terms:
                found += sorted(v for v in getattr(term, "var_names", set()) if v in columns and v not in excluded)
        return list(dict.fromkeys(found))

    @property
    def offset_or_zero(self) -> np.ndarray:
        """The offset, or zeros."""
        return np.zeros(self.n_obs) if self.offset is None else self.offset

    # -- linear predictor ------------------------------------------------------------------------
    def linear_predictor(self, beta: np.ndarray, effects: list[np.ndarray] | None = None) -> np.ndarray:
        """``X beta + Z b + offset``, the one place it is computed.

        Parameters
        ----------
        beta : ndarray, shape (p,) or (draws, p)
        effects : list of ndarray, optional
            Group effects per block, (G, k) or (draws, G, k); None for the fixed part only.

        Returns
        -------
        ndarray, shape (n,) or (draws, n)
        """
        eta = self.fixed.predictor(beta)
        if effects is not None and self.random.blocks:
            eta = eta + self.random.predictor(effects)
        if self.offset is not None:
            eta = eta + self.offset
        return eta

    # -- subsets and new data ------------------------------------------------------------------------
    def subset(self, rows: np.ndarray) -> "Design":
        """The design restricted to ``rows`` (positions or a boolean mask); group levels unchanged."""
        return replace(
            self,
            y=self.y[rows],
            fixed=self.fixed.subset(rows),
            random=self.random.subset(rows),
            data=self.data.iloc[rows] if not _is_mask(rows) else self.data.loc[rows],
            trials=None if self.trials is None else self.trials[rows],
            offset=None if self.offset is None else self.offset[rows],
            weights=None if self.weights is None else self.weights[rows],
            offset_argument=None if self.offset_argument is None else self.offset_argument[rows],
        )

    def evaluate(self, data: Any, offset: Any = None) -> "Design":
        """The model matrices on new rows, for predictions.

        Fixed-effect columns are evaluated as in the fit (same categorical levels and transformations);
        grouping factors are coded against the fitted levels, and rows of levels the model has not seen
        get the code :data:`~bayeslmm.spec.random_effects.UNSEEN` (see
        :meth:`~bayeslmm.spec.random_effects.RandomEffects.unseen_levels`). The response is not needed:
        ``y`` holds NaN where it is absent.

        Raises
        ------
        DataError
            A needed column is missing or has missing values, or a categorical predictor has a level
            the model was not fitted to.
        """
        frame = to_pandas(data)
        if len(frame) == 0:
            raise DataError("the new data has no rows")
        argument = _per_row(offset, frame, "offset")
        if argument is None and self.offset_argument is not None:
            raise DataError("the model was fitted with offset=; give the offset of the new rows too (offset=...)")
        if self.formula.offsets and not all(
            c in frame.columns for e in self.formula.offsets for c in _expression_columns(e)
        ):
            raise DataError(f"the new data needs the columns of the formula's offset(s): {list(self.formula.offsets)}")
        new_offset = _offsets(self.formula, frame, argument)
        fixed = self.fixed.evaluate(frame)
        random = self.random.evaluate(frame) if self.random.blocks else self.random
        if self.formula.response in frame.columns and pd.api.types.is_numeric_dtype(frame[self.formula.response]):
            y = frame[self.formula.response].to_numpy(dtype=float)
        else:
            y = np.full(len(frame), np.nan)
        return replace(
            self, y=y, fixed=fixed, random=random, data=frame, n_dropped=0, trials=None, offset=new_offset,
            weights=None, offset_argument=argument,
        )


def _expression_columns(expression: str) -> set[str]:
    return expressions.columns(expression)


def _is_mask(rows: np.ndarray) -> bool:
    return np.asarray(rows).dtype == bool


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


def build_design(
    formula: ParsedFormula,
    data: Any,
    family: Family | None = None,
    weights: Any = None,
    offset: Any = None,
    namespace: dict | None = None,
) -> Design:
    """Evaluate ``formula`` on ``data``.

    Parameters
    ----------
    formula : ParsedFormula
        From :func:`bayeslmm.spec.formula.parse_formula`.
    data : pandas.DataFrame or polars.DataFrame
        Not modified.
    family : Family, optional
        Validates and encodes the response (default: gaussian).
    weights : array-like or str, optional
        Binomial trials of a proportion response (glmer's ``weights``): one per row of ``data``, or
        the name of a column.
    offset : array-like or str, optional
        A known term added to the linear predictor (glmer's ``offset``; it adds to any
        ``offset(...)`` term of the formula): one per row of ``data``, or the name of a column.
    namespace : dict, optional
        Objects the formula's expressions refer to by name besides the data's columns (the factor
        codings of :func:`bayeslmm.spec.contrasts.apply_codings`, called as ``bayeslmm_code_<i>(x)``).

    Returns
    -------
    Design

    Raises
    ------
    DataError
        Empty data, unknown columns, a response the family cannot use, non-finite predictors or offsets,
        a grouping factor with a single level, or (where the family requires it) as many groups as
        observations.
    """
    if family is None:
        family = get_family("gaussian")
    frame = to_pandas(data)
    if len(frame) == 0:
        raise DataError("data has no rows; a mixed model needs observations to fit")
    weights = _per_row(weights, frame, "weights")
    offset = _per_row(offset, frame, "offset")

    used = _columns_used(formula, frame, namespace)
    extra = {name: values for name, values in (("weights", weights), ("offset", offset)) if values is not None}
    frame, n_dropped, kept = _drop_incomplete(frame, used, extra)
    weights = None if weights is None else weights[kept]
    offset = None if offset is None else offset[kept]

    name = formula.response
    if formula.binomial is not None:
        if weights is not None:
            raise DataError("give the trials either by cbind(successes, failures) or by weights=, not both")
        successes = expressions.evaluate(formula.binomial[0], frame)
        trials = successes + expressions.evaluate(formula.binomial[1], frame)
        y, trials, note = family.encode_response(successes, frame, name, trials)
    else:
        response = _evaluate(f"{name} ~ 1", frame, "response")
        raw = np.asarray(response.response.design_matrix)
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim == 2 and name in frame.columns:  # a categorical response: the family reads the column
            raw = frame[name].to_numpy()
        y, trials, note = family.encode_response(raw, frame, name, weights)

    fixed_matrices = _evaluate(formula.fixed, frame, "fixed part", namespace)
    if fixed_matrices.common is None:
        X, terms, evaluator = np.zeros((len(frame), 0)), (), None
    else:
        X = np.asarray(fixed_matrices.common.design_matrix, dtype=float)
        terms, evaluator = tuple(_term_names(fixed_matrices.common)), fixed_matrices.common
    _check_finite(X, "fixed-effects predictors")
    X, terms, kept = _drop_aliased(X, terms)
    fixed = FixedEffects(X=X, terms=terms, evaluator=evaluator, kept=kept)

    random = RandomEffects(_build_blocks(formula.random, frame, namespace))
    if not family.allows_one_group_per_row:
        for block in random.blocks:
            if block.n_levels >= len(y):
                raise DataError(
                    f"grouping factor {block.factor!r} has {block.n_levels} levels for {len(y)} "
                    f"observations; a {family.name} mixed model needs fewer groups than observations, or "
                    "the group effects cannot be told apart from the residual"
                )
    total_offset = _offsets(formula, frame, offset)
    return Design(
        formula=formula, y=y, fixed=fixed, random=random, data=frame, n_dropped=n_dropped, trials=trials,
        offset=total_offset, weights=weights, offset_argument=offset, response_note=note,
    )


def _drop_aliased(X: np.ndarray, terms: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...], tuple[int, ...] | None]:
    """Drop fixed-effect columns that are linear combinations of earlier ones, as lme4 does, with its message.

    A column is aliased when what is left of it after projecting out the columns before it is below
    1e-7 of its length (the diagonal of an unpivoted QR decomposition, R's ``qr`` tolerance): the
    earlier column is kept and the later one dropped, as lme4's ``chkRank.drop.cols`` does.
    """
    if X.shape[1] == 0:
        return X, terms, None
    r = np.linalg.qr(X, mode="r")
    lengths = np.linalg.norm(X, axis=0)
    aliased = np.abs(np.diag(r)) <= 1e-7 * np.where(lengths > 0, lengths, 1.0)
    if not aliased.any():
        return X, terms, None
    kept = tuple(int(i) for i in np.flatnonzero(~aliased))
    dropped = [terms[i] for i in np.flatnonzero(aliased)]
    plural = "s" if len(dropped) > 1 else ""
    warnings.warn(
        f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} column{plural} / "
        f"coefficient{plural}: {listing(dropped)} (a linear combination of the columns before, e.g. a "
        "constant next to the intercept or a copy of a predictor; lme4 drops them too)",
        UserWarning,
        stacklevel=4,
    )
    return X[:, list(kept)], tuple(terms[i] for i in kept), kept


def _per_row(values: Any, frame: pd.DataFrame, what: str) -> np.ndarray | None:
    """``weights=`` / ``offset=`` as one float per row of the user's data (a column name or an array)."""
    if values is None:
        return None
    if isinstance(values, str):
        if values not in frame.columns:
            raise DataError(f"{what}={values!r} is not a column of the data")
        values = frame[values]
    try:
        array = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numbers, one per row of the data") from None
    if len(array) != len(frame):
        raise DataError(f"{what} has {len(array)} values for {len(frame)} rows of data; give one per row")
    return array


def _offsets(formula: ParsedFormula, frame: pd.DataFrame, argument: np.ndarray | None) -> np.ndarray | None:
    """The formula's ``offset(...)`` terms plus the ``offset=`` argument; None when there are none."""
    parts = []
    for expression in formula.offsets:
        values = expressions.evaluate(expression, frame)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            hint = " (a log of a zero or negative exposure?)" if "log" in expression else ""
            raise DataError(
                f"offset({expression}) is infinite or undefined in {bad.size} row(s){hint}: rows "
                f"{_row_labels(frame, bad)}; an exposure must be positive"
            )
        parts.append(values)
    if argument is not None:
        bad = np.flatnonzero(~np.isfinite(argument))
        if bad.size:
            raise DataError(f"offset= is infinite or undefined in rows {_row_labels(frame, bad)}")
        parts.append(argument)
    return None if not parts else np.sum(parts, axis=0)


def _row_labels(frame: pd.DataFrame, positions: np.ndarray, limit: int = 5) -> str:
    labels = [repr(label) for label in frame.index[positions[:limit]]]
    return ", ".join(labels) + (f" and {len(positions) - limit} more" if len(positions) > limit else "")


def _columns_used(formula: ParsedFormula, frame: pd.DataFrame, namespace: dict | None = None) -> list[str]:
    """Columns named anywhere in the formula (not the names of ``namespace``); raise DataError for unknown ones."""
    import formulae

    names: set[str] = set()
    parts = [formula.fixed] if formula.binomial is not None else [f"{formula.response} ~ {formula.fixed}"]
    parts += [term.expr for term in formula.random]
    for expression in list(formula.binomial or ()) + list(formula.offsets):
        names |= expressions.columns(expression)
    for expression in parts:
        try:
            names |= formulae.model_description(expression).var_names
        except Exception as exc:  # formulae raises several unrelated types for bad syntax
            reason = "too many terms for the formula engine" if isinstance(exc, RecursionError) else _short(str(exc))
            raise FormulaError(f"cannot parse {_short(expression)!r}: {reason}") from None
    for term in formula.random:
        names |= set(term.factor.split(":"))
    names.discard("")  # formulae lists an empty name for literal-only pieces such as I(x**2)
    names -= set(namespace or ())
    unknown = sorted(name for name in names if name not in frame.columns)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, [str(c) for c in frame.columns], n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DataError(
            f"column(s) {listing(hints)} used in the formula are not in the data; "
            f"available columns: {listing(map(str, frame.columns))}"
        )
    used = [column for column in frame.columns if column in names]
    _check_columns(formula, frame, used)
    return used


def _check_columns(formula: ParsedFormula, frame: pd.DataFrame, used: list) -> None:
    """Refuse columns formulae would misread: duplicated names, 'Intercept', dates, one-level factors."""
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()] if c in used})
    if duplicated:
        raise DataError(f"column(s) {listing(map(repr, duplicated))} appear more than once in the data; rename them")
    if "Intercept" in used:
        raise DataError(
            "a column named 'Intercept' would be read as the intercept by the formula engine (formulae); "
            "rename it, e.g. data.rename(columns={'Intercept': 'intercept_x'})"
        )
    grouping = {part for term in formula.random for part in term.factor.split(":")}
    for column in used:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
            raise DataError(
                f"column {column!r} holds dates or times ({values.dtype}), which a model cannot use directly; "
                f"convert it to a number first, e.g. (data[{column!r}] - data[{column!r}].min()).dt.days"
            )
        categorical = isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or pd.api.types.is_string_dtype(values)
        if categorical and column not in grouping and column != formula.response and values.nunique(dropna=True) < 2:
            raise DataError(
                f"predictor {column!r} has a single level ({values.dropna().iloc[0]!r} on every row): a factor needs "
                "at least two levels to have an effect (lme4: 'contrasts can be applied only to factors with 2 or "
                "more levels'); drop it from the formula"
            )


def listing(items, limit: int = 20) -> str:
    """``a, b, c, ... and 17 more``: lists in messages stay short whatever the data."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def _drop_incomplete(
    frame: pd.DataFrame, columns: list[str], extra: dict[str, np.ndarray] | None = None
) -> tuple[pd.DataFrame, int, np.ndarray]:
    """Drop rows with a missing value in ``columns`` (or in the per-row arrays ``extra``), as na.omit.

    Returns the rows kept, how many were dropped, and the boolean mask of kept rows.
    """
    complete = frame[columns].notna().all(axis=1).to_numpy().copy()  # pandas 3 hands out read-only arrays
    for values in (extra or {}).values():
        complete &= ~np.isnan(values)
    columns = columns + list(extra or {})
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
    return frame, n_dropped, complete


def _evaluate(expression: str, frame: pd.DataFrame, what: str, namespace: dict | None = None):
    import formulae

    try:
        # log(0) and the like become -inf here; the finiteness checks afterwards report them clearly
        with np.errstate(all="ignore"):
            return formulae.design_matrices(
                expression, frame, na_action="error", extra_namespace={**expressions.FUNCTIONS, **(namespace or {})}
            )
    except (DataError, FormulaError):
        raise
    except KeyError as exc:
        name = str(exc).strip("'\"")
        raise FormulaError(
            f"cannot evaluate the {what} {_short(expression)!r}: {name!r} is neither a column nor a function "
            f"bayeslmm knows; R's {', '.join(expressions.FUNCTIONS)} work as in R, numpy's functions as "
            "np.<name>(...), and anything else can be computed as a column first"
        ) from None
    except Exception as exc:
        raise FormulaError(f"cannot evaluate the {what} {_short(expression)!r}: {_short(str(exc))}") from None


def _short(text: str, limit: int = 300) -> str:
    """Long formulas and messages cut to ``limit`` characters in error messages."""
    return text if len(text) <= limit else text[: limit - 20] + f" ... ({len(text)} characters)"


def _term_names(common) -> list[str]:
    columns = common.as_dataframe().columns
    return [INTERCEPT if column == "Intercept" else str(column) for column in columns]


def _check_finite(matrix: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(matrix)):
        raise DataError(
            f"{what} contain {int(np.sum(~np.isfinite(matrix)))} infinite or undefined value(s); "
            "remove those rows or transform the predictor"
        )


def _block_names(terms: tuple[RandomTerm, ...]) -> list[str]:
    """A unique label per block: the factor for its first block, then ``factor.1``, ``factor.2`` (lme4),
    skipping labels that are another factor's name (a column called ``Subject.1``)."""
    factors = {term.factor for term in terms}
    used: set[str] = set()
    names = []
    for term in terms:
        name, count = term.factor, 0
        while name in used or (count and name in factors):
            count += 1
            name = f"{term.factor}.{count}"
        used.add(name)
        names.append(name)
    return names


def _build_blocks(
    terms: tuple[RandomTerm, ...], frame: pd.DataFrame, namespace: dict | None = None
) -> tuple[RandomBlock, ...]:
    blocks: list[RandomBlock] = []
    for term, name in zip(terms, _block_names(terms)):
        matrices = _evaluate(
            term.expr, frame, f"random-effects expression of '({term.expr} | {term.factor})'", namespace
        )
        if matrices.common is None:
            raise UnsupportedSyntaxError(f"random-effects expression {term.expr!r} has no columns")
        Z = np.asarray(matrices.common.design_matrix, dtype=float)
        _check_finite(Z, f"random-effects predictors of ({term.expr} | {term.factor})")
        levels, keys = _levels(term.factor, frame)
        blocks.append(
            RandomBlock(
                name=name,
                factor=term.factor,
                terms=tuple(_term_names(matrices.common)),
                Z=Z,
                group_index=group_codes(frame, term.factor, keys),
                levels=levels,
                expr=term.expr,
                evaluator=matrices.common,
                level_keys=keys,
            )
        )
    return tuple(blocks)


def _levels(factor: str, frame: pd.DataFrame) -> tuple[pd.Index, tuple]:
    """Sorted levels of a grouping factor present in the data (a column, or an interaction ``a:b``).

    Returns the levels for display and the keys that code the rows. The keys of an interaction are
    the combinations of the columns' values as tuples; they are labelled ``"a:b"`` when those labels
    are distinct, so two different combinations never share a level.
    """
    columns = factor.split(":")
    if len(columns) == 1:
        values = frame[columns[0]]
        if isinstance(values.dtype, pd.CategoricalDtype):
            levels = pd.Index(values.cat.remove_unused_categories().cat.categories)
        else:
            levels = pd.Index(_sorted_unique(values.to_numpy(dtype=object)))
    else:
        combos = list(zip(*(frame[c].tolist() for c in columns)))
        unique = _sorted_unique(np.array(combos + [None], dtype=object)[:-1])
        levels = pd.Index(unique, tupleize_cols=False)
    levels = levels.rename(factor)
    keys = tuple(levels)
    if len(levels) < 2:
        raise DataError(
            f"grouping factor {factor!r} has a single level ({_label(levels[0])}); a random effect needs "
            "at least two groups (ideally five or more); drop the term or model it as a fixed effect"
        )
    if len(columns) > 1:
        labels = [_label(level) for level in levels]
        if len(set(labels)) == len(labels):
            # readable labels ("308:1") when they are unambiguous; the codes were made from the tuples
            levels = pd.Index(labels, name=factor)
    return levels, keys


def _label(level: Any) -> str:
    return ":".join(map(str, level)) if isinstance(level, tuple) else str(level)


def _sorted_unique(values: np.ndarray) -> list:
    """Unique values (or tuples), sorted; mixed types sort by (type name, value) so 1 and "1" stay apart."""
    unique: dict = {}
    for value in values:
        key = value.item() if isinstance(value, np.generic) else value
        unique.setdefault((type(key).__name__, key) if not isinstance(key, tuple) else key, key)
    try:
        return sorted(unique.values())
    except TypeError:
        return [unique[k] for k in sorted(unique, key=lambda k: tuple(map(str, k)) if isinstance(k, tuple) else (k[0], str(k[1])))]
