"""Linear hypotheses about the fixed effects: ANOVA terms (Type III) and estimated marginal means.

Everything here is a matrix ``L`` (rows x fixed effects) that turns the coefficients ``beta`` into the
quantities a test or a table is about; the engines supply ``L beta`` and its uncertainty (REML:
:func:`bayeslmm.engines.reml.contrast_f_test`, posterior: the draws of ``beta`` times ``L'``).

Terms
-----
:func:`fixed_structure` reads formulae's terms of the fixed part: each term (``recipe``,
``recipe:temperature``, ``Days``; a factor with ``k`` levels is one term) with its columns in ``X`` and
its components (categorical columns with their levels, numeric expressions).

Type III hypotheses (:func:`type3_hypotheses`)
----------------------------------------------
The hypothesis of a term is that its coefficients are zero when every factor of the model is coded
with sum-to-zero contrasts (R's ``contr.sum``), whatever coding the model itself uses: for a factor, the
equally weighted marginal means of its levels are equal (averaging over the levels of the other
factors); for an interaction, every interaction contrast is zero; numeric covariates enter at 0. This
is the hypothesis lmerTest's ``anova(type = 3)`` tests (SAS's Type III), and it does not depend on the
coding of the model. It is computed by evaluating the fixed part once more with sum coding (``X_s``,
the same column space as ``X``): ``beta_s = B beta`` with ``X_s B = X``, and the term's ``L`` holds the
rows of ``B`` of its sum-coded columns.

Estimated marginal means (:func:`reference_grid`, :func:`marginal_means`)
-------------------------------------------------------------------------
As emmeans: the reference grid crosses the levels of every factor of the fixed part, numeric
predictors held at their means; the marginal mean of a level (or combination of levels) of the
chosen factors is the equally weighted average of the grid's predictions over the levels of the other
factors, a linear function of ``beta``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError
from bayeslmm.spec import contrasts
from bayeslmm.spec.design import Design, build_design
from bayeslmm.spec.random_effects import INTERCEPT

__all__ = [
    "Component",
    "FixedTerm",
    "fixed_structure",
    "factor_levels",
    "sum_coded",
    "type3_hypotheses",
    "without_term",
    "reference_grid",
    "MarginalMeans",
    "marginal_means",
    "numeric_predictors",
    "trend_grid",
    "marginal_trends",
]


@dataclass(frozen=True)
class Component:
    """One factor of a fixed term: a categorical column, or a numeric expression.

    Attributes
    ----------
    expression : str
        formulae's text of it, e.g. ``"Days"``, ``"np.log(temp)"``.
    columns : tuple of str
        The data columns it reads.
    categorical : bool
    levels : tuple
        For a categorical component: the column's levels (data values) in the model's order.
    """

    expression: str
    columns: tuple[str, ...]
    categorical: bool
    levels: tuple = ()

    @property
    def column(self) -> str:
        """The data column (a categorical component reads one)."""
        return self.columns[0]


@dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed part (not the intercept).

    Attributes
    ----------
    label : str
        As it reads in the formula, e.g. ``"recipe:temperature"``.
    columns : ndarray of int
        Its columns in ``X``.
    components : tuple of Component
    """

    label: str
    columns: np.ndarray
    components: tuple[Component, ...]


def fixed_structure(design: Design) -> tuple[FixedTerm, ...]:
    """The terms of the fixed part, without the intercept, in formula order.

    Raises
    ------
    DataError
        The design was not built from a formula.
    """
    evaluator = design.fixed.evaluator
    if evaluator is None:
        raise DataError("this design has no formula terms (it was not built from a formula)")
    terms = []
    # columns lme4 would drop as aliased are not in X (FixedEffects.kept): map formulae's positions
    kept = design.fixed.kept
    position = {full: i for i, full in enumerate(kept)} if kept is not None else None
    for name, term in evaluator.terms.items():
        components = getattr(term, "components", None)
        if not components:  # the intercept
            continue
        parts = tuple(_component(component, design, evaluator) for component in components)
        label = ":".join(contrasts.display_name(part.expression) for part in parts)
        full = np.arange(evaluator.slices[name].start, evaluator.slices[name].stop)
        columns = full if position is None else np.array([position[i] for i in full if i in position], dtype=int)
        if columns.size:
            terms.append(FixedTerm(label=label, columns=columns, components=parts))
    return tuple(terms)


def _component(component, design: Design, evaluator) -> Component:
    columns = tuple(sorted(v for v in getattr(component, "var_names", set()) if v in design.data.columns))
    if component.kind != "categoric":
        return Component(component.name, columns, False)
    column = columns[0]
    coder = evaluator.env.namespace.get(component.name.split("(")[0]) if "(" in component.name else None
    coding = getattr(coder, "coding", None)
    if coding is not None:
        levels = coding.levels
    else:
        observed = {str(value): value for value in _observed(design.data[column])}
        levels = tuple(observed.get(str(level), level) for level in component.levels)
    return Component(component.name, columns, True, tuple(levels))


def _observed(series: pd.Series) -> list:
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.remove_unused_categories().cat.categories)
    return list(pd.unique(series))


def factor_levels(design: Design) -> dict[str, tuple]:
    """The categorical columns of the fixed part and their levels in the model's order."""
    out: dict[str, tuple] = {}
    for term in fixed_structure(design):
        for part in term.components:
            if part.categorical and part.column not in out:
                out[part.column] = part.levels
    return out


def sum_coded(design: Design, family=None) -> tuple[Design, np.ndarray]:
    """The fixed part evaluated again with every factor sum-to-zero coded (R's ``contr.sum``).

    Parameters
    ----------
    design : Design
    family : Family, optional
        The model's family, to rebuild the design (default: gaussian).

    Returns
    -------
    summed : Design
        Same rows and terms, no random effects; ``X_s`` spans the same column space as ``X``.
    B : ndarray, shape (p, p)
        ``beta_s = B beta``: the coefficients of ``X_s`` that give the same fit (``X_s B = X``).

    Raises
    ------
    DataError
        The sum-coded design does not span the model's column space (should not happen for a
        full-rank design).
    """
    terms = fixed_structure(design)
    codings = {
        column: contrasts.sum_coding(column, list(levels)) for column, levels in factor_levels(design).items()
    }
    pieces = [":".join(part.column if part.categorical else part.expression for part in term.components) for term in terms]
    intercept = "1" if INTERCEPT in design.fixed_terms else "0"
    parsed = replace(design.formula, fixed=" + ".join([intercept] + pieces), random=())
    rewritten, namespace = contrasts.apply_codings(parsed, design.data, codings)
    summed = build_design(rewritten, design.data, family, namespace=namespace)
    if summed.X.shape != design.X.shape:
        raise DataError(
            f"the sum-coded fixed part has {summed.X.shape[1]} columns but the model has {design.X.shape[1]}; "
            "Type III hypotheses need the formula's terms to be coded the same way under any contrasts"
        )
    B, *_ = np.linalg.lstsq(summed.X, design.X, rcond=None)
    scale = max(float(np.abs(design.X).max()), 1.0)
    if float(np.abs(summed.X @ B - design.X).max()) > 1e-8 * scale * design.X.shape[0]:
        raise DataError("the sum-coded fixed part does not span the model's columns; Type III tests are undefined")
    return summed, B


def type3_hypotheses(design: Design, family=None) -> dict[str, np.ndarray]:
    """Type III hypothesis matrices of the fixed terms (see the module docstring).

    Parameters
    ----------
    design : Design
    family : Family, optional
        The model's family, to rebuild the design (default: gaussian).

    Returns
    -------
    dict of str to ndarray
        For each term label, ``L`` with shape (q, p): the hypothesis is ``L beta = 0``; ``q`` is the
        number of the term's columns.
    """
    terms = fixed_structure(design)
    if not terms:
        return {}
    summed, B = sum_coded(design, family)
    return {term.label: B[other.columns] for term, other in zip(terms, fixed_structure(summed))}


def without_term(design: Design, term: str, family=None) -> Design:
    """The model without one fixed term under its Type III hypothesis: the sum-coded fixed part minus
    the term's columns (random part unchanged).

    The result's fixed columns are named as formulae names the sum-coded ones; it cannot be evaluated
    on new data.

    Raises
    ------
    DataError
        ``term`` is not a fixed term of the model.
    """
    terms = fixed_structure(design)
    labels = [t.label for t in terms]
    if term not in labels:
        raise DataError(f"{term!r} is not a fixed term; terms: {labels}")
    summed, _ = sum_coded(design, family)
    drop = fixed_structure(summed)[labels.index(term)].columns
    keep = np.setdiff1d(np.arange(summed.X.shape[1]), drop)
    fixed = replace(
        summed.fixed, X=summed.X[:, keep], terms=tuple(summed.fixed_terms[i] for i in keep), evaluator=None
    )
    return replace(design, fixed=fixed)


def reference_grid(design: Design) -> tuple[pd.DataFrame, np.ndarray, dict[str, float]]:
    """emmeans' reference grid: every combination of factor levels, numeric predictors at their means.

    Returns
    -------
    grid : pandas.DataFrame
        One row per combination, one column per factor (levels as in the data), the first factor
        varying fastest (emmeans' order).
    X : ndarray, shape (len(grid), p)
        The fixed-effects rows of the grid.
    covariates : dict of str to float
        The numeric columns of the fixed part and the means they are held at.
    """
    grid, frame, covariates = _grid_frame(design)
    return grid, design.fixed.evaluate(frame).X, covariates


def _grid_frame(design: Design) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """The reference grid's factor columns, the data frame that evaluates it, the covariates' means."""
    levels = factor_levels(design)
    data = design.data
    combos = list(itertools.product(*[levels[c] for c in reversed(list(levels))])) if levels else [()]
    grid = pd.DataFrame([tuple(reversed(combo)) for combo in combos], columns=list(levels))
    frame = pd.DataFrame(index=range(len(grid)))
    for column in levels:
        frame[column] = _like(data[column], grid[column].tolist())
    covariates = {column: float(data[column].mean()) for column in sorted(numeric_predictors(design) - set(levels))}
    for column, value in covariates.items():
        frame[column] = value
    return grid, frame, covariates


def numeric_predictors(design: Design) -> set[str]:
    """The data columns that enter the fixed part as numbers (not as factors)."""
    return {c for term in fixed_structure(design) for part in term.components if not part.categorical for c in part.columns}


def trend_grid(design: Design, var: str) -> tuple[pd.DataFrame, np.ndarray, dict[str, float]]:
    """The reference grid's rows of the slope in ``var``: ``(X(var + h) - X(var)) / h``, as emmeans'
    ``emtrends`` (``h = 0.001 * range(var)``; exact for terms linear in ``var``, interactions included).

    Returns
    -------
    grid, D, covariates
        As :func:`reference_grid`, with ``D`` (len(grid), p) in place of ``X``: ``D beta`` is the slope
        of the linear predictor in ``var`` at each grid row.

    Raises
    ------
    DataError
        ``var`` is not a numeric predictor of the fixed part.
    """
    grid, frame, covariates = _grid_frame(design)
    if var not in covariates:
        raise DataError(
            f"{var!r} is not a numeric predictor of the fixed effects; numeric predictors: {list(covariates) or 'none'}"
        )
    h = 0.001 * float(np.ptp(design.data[var].to_numpy(dtype=float))) or 1e-3
    X = design.fixed.evaluate(frame).X
    shifted = design.fixed.evaluate(frame.assign(**{var: frame[var] + h})).X
    return grid, (shifted - X) / h, covariates


def _like(template: pd.Series, values: list) -> pd.Series:
    if isinstance(template.dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical(values, categories=template.cat.categories, ordered=template.cat.ordered))
    return pd.Series(values, dtype=template.dtype if template.dtype != object else object)


@dataclass(frozen=True)
class MarginalMeans:
    """Estimated marginal means and their pairwise differences as linear functions of ``beta``.

    Attributes
    ----------
    means : pandas.DataFrame
        One row per combination of the ``by`` and ``specs`` levels (columns named after the factors).
    L : ndarray, shape (len(means), p)
        ``L beta`` are the marginal means.
    contrasts : pandas.DataFrame
        ``Contrast`` (``"a - b"``) and the ``by`` columns, one row per pair within each ``by`` group.
    C : ndarray, shape (len(contrasts), p)
    family_size : ndarray of int, shape (len(contrasts),)
        The number of means compared in the contrast's ``by`` group (the Tukey family).
    group : ndarray of int, shape (len(contrasts),)
        Which ``by`` group each contrast belongs to (for p-value adjustments within groups).
    averaged_over : tuple of str
        The factors averaged over with equal weights.
    covariates : dict of str to float
        Numeric predictors and the means they are held at.
    """

    means: pd.DataFrame
    L: np.ndarray
    contrasts: pd.DataFrame
    C: np.ndarray
    family_size: np.ndarray
    group: np.ndarray
    averaged_over: tuple[str, ...] = ()
    covariates: dict = None


def marginal_means(design: Design, specs: list[str], by: list[str] | None = None) -> MarginalMeans:
    """Marginal means of ``specs`` within each level of ``by`` (emmeans' ``pairwise ~ specs | by``).

    Raises
    ------
    DataError
        A name that is not a factor of the fixed part, or a name in both lists.
    """
    by = list(by or [])
    levels = factor_levels(design)
    _check_factors(design, levels, specs + by)
    if set(specs) & set(by):
        raise DataError(f"{sorted(set(specs) & set(by))} appear both as marginal and as grouping variables")
    if not specs:
        raise DataError("name at least one factor whose marginal means to compute")
    grid, X, covariates = reference_grid(design)
    return _averages(grid, X, levels, specs, by, covariates)


def marginal_trends(design: Design, var: str, specs: list[str] | None = None) -> MarginalMeans:
    """Marginal slopes of the numeric predictor ``var`` at each level of ``specs`` and their pairwise
    differences (emmeans' ``emtrends(model, pairwise ~ specs, var = var)``); one overall slope without
    ``specs``. ``L`` holds the slopes' rows, ``covariates`` the values the other predictors are held at.

    Raises
    ------
    DataError
        ``var`` is not a numeric predictor, or a name in ``specs`` is not a factor of the fixed part.
    """
    specs = list(specs or [])
    levels = factor_levels(design)
    _check_factors(design, levels, specs)
    grid, D, covariates = trend_grid(design, var)
    return _averages(grid, D, levels, specs, [], covariates)


def _check_factors(design: Design, levels: dict, names: list[str]) -> None:
    numeric = sorted(numeric_predictors(design))
    for name in names:
        if name in numeric:
            raise DataError(
                f"{name!r} is a numeric predictor, not a factor: its slope is in coefs, and post_hoc({name!r}, "
                f"grouping_vars) compares its slopes across factor levels; factors: {list(levels) or 'none'}"
            )
        if name not in levels:
            raise DataError(
                f"{name!r} is not a predictor of the fixed effects; factors: {list(levels) or 'none'}, numeric "
                f"predictors: {numeric or 'none'}"
            )


def _averages(grid: pd.DataFrame, X: np.ndarray, levels: dict, specs: list[str], by: list[str],
              covariates: dict) -> MarginalMeans:
    """Equally weighted averages of the grid rows ``X`` per level of ``specs`` within ``by``, and their
    pairwise differences within each ``by`` group."""
    keys = {column: grid[column].map(str).to_numpy() for column in specs + by}
    mean_rows, L, contrast_rows, C, family, group = [], [], [], [], [], []
    by_combos = list(itertools.product(*[levels[c] for c in by])) if by else [()]
    spec_combos = [tuple(reversed(c)) for c in itertools.product(*[levels[c] for c in reversed(specs)])]
    for g, by_values in enumerate(by_combos):
        in_group = np.ones(len(grid), dtype=bool)
        for column, value in zip(by, by_values):
            in_group &= keys[column] == str(value)
        rows = []
        for spec_values in spec_combos:
            mask = in_group.copy()
            for column, value in zip(specs, spec_values):
                mask &= keys[column] == str(value)
            rows.append(X[mask].mean(axis=0))
            mean_rows.append(dict(zip(specs, spec_values)) | dict(zip(by, by_values)))
        L += rows
        labels = [" ".join(map(str, values)) for values in spec_combos]
        for i, j in itertools.combinations(range(len(rows)), 2):
            contrast_rows.append({"Contrast": f"{labels[i]} - {labels[j]}"} | dict(zip(by, by_values)))
            C.append(rows[i] - rows[j])
            family.append(len(rows))
            group.append(g)
    p = X.shape[1]
    return MarginalMeans(
        means=pd.DataFrame(mean_rows, columns=specs + by),
        L=np.array(L).reshape(-1, p),
        contrasts=pd.DataFrame(contrast_rows, columns=["Contrast"] + by),
        C=np.array(C).reshape(-1, p),
        family_size=np.array(family, dtype=int),
        group=np.array(group, dtype=int),
        averaged_over=tuple(c for c in levels if c not in specs + by),
        covariates=covariates,
    )
