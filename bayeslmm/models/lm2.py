"""Lm2: no pooling, one Bayesian regression per group (pymer4's ``Lm2``)."""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.engines import regression
from bayeslmm.engines.sampling import SamplerSettings
from bayeslmm.errors import DataError, FormulaError
from bayeslmm.results import summaries
from bayeslmm.results.fitted import FittedModel
from bayeslmm.results.report import SummaryParts
from bayeslmm.spec.contrasts import build_coded_design
from bayeslmm.spec.design import Design, to_pandas
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.priors import default_priors
from bayeslmm.spec.random_effects import RandomBlock, RandomEffects

__all__ = ["Lm2"]


class Lm2(FittedModel):
    """No pooling: a separate Bayesian regression for every level of ``group`` (pymer4's ``Lm2``).

    Every group ``g`` has its own coefficients ``beta[g]`` and residual SD ``sigma[g]``, with the
    default priors of :mod:`bayeslmm.spec.priors` computed from that group's rows alone (``mean(y_g)``,
    ``sd(y_g)``, ``sd(x_g)``), so each group's posterior is the one its own regression would give; the
    groups share nothing. With Normal coefficient priors (the defaults) every group's posterior is drawn
    exactly by :mod:`bayeslmm.engines.regression`, without compiling anything; other priors sample one
    PyMC model holding all groups.

    Parameters
    ----------
    formula : str
        A formula without random-effects terms, e.g. ``"Reaction ~ Days"``.
    data : pandas.DataFrame or polars.DataFrame
        Never modified. Rows with a missing value in the formula's columns or in ``group`` are dropped
        with a warning.
    group : str
        The column whose levels get their own regression, e.g. ``"Subject"``.
    family : str
        ``"gaussian"``.
    priors : dict, optional
        Overrides keyed by fixed term or ``"sigma"``, applied to every group, e.g.
        ``{"Days": Prior("Normal", mu=0, sigma=100)}``.

    Attributes
    ----------
    coefs : pandas.DataFrame, shape (p, 7)
        Population summary across groups, as pymer4's Lm2: ``Estimate`` is the mean over groups of the
        group coefficients (posterior means), ``SE`` their SD over groups divided by ``sqrt(G)``, the
        95% interval ``Estimate +- t(0.975, G - 1) SE``, ``DF = G - 1``, ``T-stat``, two-sided
        ``P-val`` (a one-sample t-test of the group estimates, the "summary statistics" approach).
    fixef : pandas.DataFrame, shape (G, p)
        Posterior mean of each group's coefficients; :meth:`fixef_summary` has their intervals.
    sigma : pandas.DataFrame, shape (G, 8)
        Posterior summary of each group's residual SD.
    data : pandas.DataFrame
        The rows used, with ``fits`` and ``residuals``.
    excluded : list
        Levels of ``group`` left out because their regression is not identified (see Warns).
    levels : pandas.Index, length G
        The groups fitted.

    Raises
    ------
    FormulaError
        The formula has random-effects terms.
    DataError
        ``group`` is not a column, or fewer than two groups can be fitted.

    Warns
    -----
    UserWarning
        A group with no more rows than coefficients (``n_g <= p``: no residual left to estimate its
        SD) or with a predictor constant within it (its slope is not identified) cannot have its own
        regression: it is excluded, listed in :attr:`excluded`, and the warning names it.

    Examples
    --------
    >>> from bayeslmm import load_dataset
    >>> model = Lm2("Reaction ~ Days", load_dataset("sleepstudy"), group="Subject")
    >>> model.fit(random_seed=1)  # doctest: +SKIP
    >>> model.coefs.loc["Days", "Estimate"]  # doctest: +SKIP
    10.46...
    """

    _cached: ClassVar[tuple[str, ...]] = ("coefs", "fixef", "sigma", "data")
    per_group: ClassVar[bool] = True

    def __init__(
        self, formula: str, data: Any, group: str, family: str | Family = "gaussian", priors: dict | None = None
    ) -> None:
        family = get_family(family)
        if family.name != "gaussian":
            raise FormulaError(f"Lm2 fits linear (gaussian) regressions; family {family.name!r} is not available for it")
        parsed = parse_formula(formula)
        if parsed.random:
            raise FormulaError(
                f"Lm2 takes a formula without random-effects terms (the grouping is the group= argument), "
                f"got {formula!r}; use Lmer for partial pooling"
            )
        self.group = group
        frame = _drop_missing_groups(to_pandas(data), group)
        design = build_coded_design(parsed, frame, family)
        codes, levels = _group_codes(design.data[group], group)
        keep, self.excluded = _identified_groups(design.X, codes, levels, group)
        rows = keep[codes]
        design = design.subset(rows)
        self.levels: pd.Index = pd.Index(levels[keep], name=group)
        self._codes = np.cumsum(keep)[codes[rows]] - 1  # renumbered 0 .. G-1 over the kept groups
        group_priors = [default_priors(design.subset(self._codes == g), priors, family) for g in range(len(self.levels))]
        super().__init__(formula, design, family, group_priors, priors)

    @property
    def init_arguments(self) -> dict:
        """``group``: what rebuilds this model with the formula, data, family and priors."""
        return {"group": self.group}

    @property
    def group_index(self) -> np.ndarray:
        """For each row used, the position of its group in :attr:`levels`, shape (n,)."""
        return self._codes

    @property
    def grouped_design(self) -> Design:
        """The design with the grouping as a random-effects block in which every term varies by group.

        The no-pooling least-squares reference (:func:`bayeslmm.engines.least_squares.no_pooling`) of
        this design is one regression per group.
        """
        design = self.design
        block = RandomBlock(
            name=self.group, factor=self.group, terms=design.fixed_terms, Z=design.X, group_index=self._codes,
            levels=self.levels,
        )
        return dataclasses.replace(design, random=RandomEffects((block,)))

    @property
    def priors(self) -> pd.DataFrame:
        """The priors of every group, one row per (group, parameter)."""
        rows = [(level, name, prior) for level, p in zip(self.levels, self.model_priors) for name, prior in p.table()]
        return pd.DataFrame(rows, columns=[self.group, "parameter", "prior"]).set_index([self.group, "parameter"])

    # ------------------------------------------------------------------------------------ fitting
    def _sample(self, *, draws, tune, chains, random_seed, progressbar, **options) -> tuple[xr.DataTree, SamplerSettings]:
        design = self.design
        exact = all(regression.supports(p) for p in self.model_priors) and options.get("nuts_sampler", "nutpie") == "nutpie"
        if exact:
            return regression.sample_tree(
                design, self.model_priors, self._codes, self.levels,
                draws=draws, tune=tune, chains=chains, random_seed=random_seed, progressbar=progressbar,
            )
        from bayeslmm.engines.pymc_model import (  # PyMC loads only here
            build_group_regressions,
            sample_pymc,
        )

        options.pop("method", None)
        model = build_group_regressions(design, self._codes, self.levels, self.model_priors, self.family)
        return sample_pymc(
            model, draws=draws, tune=tune, chains=chains, random_seed=random_seed, keep=["beta", "sigma"],
            progressbar=progressbar, **options,
        )

    def _diagnosed_variables(self) -> list[str]:
        return ["beta", "sigma"]

    def _pointwise_log_likelihood(self, posterior: xr.Dataset) -> np.ndarray:
        beta = summaries.stack_draws(posterior, "beta")  # (chain, draw, G, p)
        sigma = summaries.stack_draws(posterior, "sigma")  # (chain, draw, G)
        chains, draws, groups, p = beta.shape
        mu = self.grouped_design.linear_predictor(np.zeros(p), [beta.reshape(-1, groups, p)])
        return self.family.log_likelihood(
            self.design.y, mu.reshape(chains, draws, -1), {"sigma": sigma[:, :, self._codes]}
        )

    # ------------------------------------------------------------------------------------ results
    @cached_property
    def fixef(self) -> pd.DataFrame:
        """Posterior mean of each group's coefficients, shape (G, p), indexed by group."""
        self._require_fit("fixef")
        means = summaries.stack_draws(self.posterior, "beta").mean(axis=(0, 1))
        return pd.DataFrame(means, index=self.levels, columns=list(self.design.fixed_terms))

    def fixef_summary(self, prob: float = 0.95, hdi: bool = False) -> pd.DataFrame:
        """Tidy posterior summary of every group coefficient.

        Parameters
        ----------
        prob : float
            Interval probability.
        hdi : bool
            Highest-density instead of equal-tailed interval.

        Returns
        -------
        pandas.DataFrame, shape (G * p, 3 + 8)
            Columns ``factor``, ``level``, ``term`` and those of :func:`bayeslmm.results.summaries.summarize`.
        """
        self._require_fit("fixef_summary")
        draws = summaries.stack_draws(self.posterior, "beta")
        chains, n_draws, G, p = draws.shape
        index = pd.MultiIndex.from_product([list(self.levels), list(self.design.fixed_terms)], names=["level", "term"])
        table = summaries.summarize(draws.reshape(chains, n_draws, G * p), index, prob, hdi).reset_index()
        table.insert(0, "factor", self.group)
        return table

    @cached_property
    def sigma(self) -> pd.DataFrame:
        """Posterior summary of each group's residual SD, shape (G, 8), indexed by group."""
        self._require_fit("sigma")
        return summaries.summarize(summaries.stack_draws(self.posterior, "sigma"), self.levels)

    @cached_property
    def coefs(self) -> pd.DataFrame:
        """Population summary of the group coefficients (pymer4's Lm2 ``coefs``); see the class docstring."""
        self._require_fit("coefs")
        return self.population_summary()

    def population_summary(self, prob: float = 0.95) -> pd.DataFrame:
        """:attr:`coefs` with another interval probability.

        Returns
        -------
        pandas.DataFrame, shape (p, 7)
            ``Estimate``, ``<lo>_ci``, ``<hi>_ci``, ``SE``, ``DF``, ``T-stat``, ``P-val``, by term.
        """
        self._require_fit("population_summary")
        return _summary_statistics(self.fixef, prob)

    @cached_property
    def data(self) -> pd.DataFrame:
        """A copy of the rows used, with ``fits`` (posterior mean of ``X beta[g]``) and ``residuals``."""
        self._require_fit("data")
        frame = self.design.data.copy()
        frame["fits"] = self.grouped_design.linear_predictor(np.zeros(self.fixef.shape[1]), [self.fixef.to_numpy()])
        frame["residuals"] = self.design.y - frame["fits"].to_numpy()
        return frame

    def _summary_parts(self) -> SummaryParts:
        excluded = f"; excluded: {', '.join(map(str, self.excluded))}" if self.excluded else ""
        header = [
            f"Bayesian regressions per group, no pooling (bayeslmm) fit by {self.sampler}"
            if self.fitted
            else "Bayesian regressions per group, no pooling (bayeslmm), not fitted yet: call .fit()",
            f"Formula: {self.formula}, one regression per level of {self.group!r}",
            f"Number of obs: {self.design.n_obs}; groups: {len(self.levels)}{excluded}",
        ]
        if not self.fitted:
            return SummaryParts(header, [])
        tables = [
            (
                "Population summary (mean of the group posterior means; SE = SD across groups / sqrt(G); "
                "t interval and test on G - 1 df):",
                self.coefs,
            ),
            ("Group coefficients (posterior means):", self.fixef),
        ]
        return SummaryParts(header, tables, diagnostics=list(self.warnings))

    def __repr__(self) -> str:
        return (
            f"Lm2({self.formula!r}, group={self.group!r}, n={self.design.n_obs}, "
            f"{len(self.levels)} groups; {self._fit_state()})"
        )


def _drop_missing_groups(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    """Check that ``group`` is a column; drop rows where it is missing, with a warning."""
    if not isinstance(group, str) or group not in frame.columns:
        close = difflib.get_close_matches(str(group), [str(c) for c in frame.columns], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"group column {group!r} is not in the data{hint}; available columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    missing = frame[group].isna()
    if missing.all():
        raise DataError(f"group column {group!r} has no values; every row is missing its group")
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} of {len(frame)} rows dropped because group {group!r} is missing",
            UserWarning,
            stacklevel=3,
        )
        frame = frame.loc[~missing].copy()
    return frame


def _group_codes(values: pd.Series, group: str) -> tuple[np.ndarray, pd.Index]:
    """Integer codes (n,) and sorted levels (G,) of a grouping column."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        codes, levels = values.cat.codes.to_numpy(), pd.Index(values.cat.categories)
    else:
        try:
            codes, levels = pd.factorize(values, sort=True)
        except TypeError:  # levels of mixed types cannot be sorted
            codes, levels = pd.factorize(values, sort=False)
    return np.asarray(codes, dtype=np.int64), pd.Index(levels, name=group)


def _identified_groups(X: np.ndarray, codes: np.ndarray, levels: pd.Index, group: str) -> tuple[np.ndarray, list]:
    """Which groups can have their own regression: more rows than columns and ``X_g`` of full rank.

    Returns
    -------
    keep : ndarray of bool, shape (G,)
    excluded : list
        The levels left out (a warning names them).
    """
    p = X.shape[1]
    counts = np.bincount(codes, minlength=len(levels))
    keep = np.array(
        [counts[g] > p and np.linalg.matrix_rank(X[codes == g]) == p for g in range(len(levels))], dtype=bool
    )
    excluded = list(levels[~keep])
    if excluded:
        detail = ", ".join(f"{level!r} ({counts[g]} rows)" for g, level in enumerate(levels) if not keep[g])
        warnings.warn(
            f"Lm2: {len(excluded)} group(s) of {group!r} excluded: a group's own regression needs more "
            f"rows than its {p} coefficient(s) and predictors that vary within the group: {detail}",
            UserWarning,
            stacklevel=3,
        )
    if keep.sum() < 2:
        raise DataError(
            f"Lm2 needs at least two groups of {group!r} that can have their own regression (more than "
            f"{p} rows each, predictors varying within the group); {int(keep.sum())} of {len(levels)} qualify"
        )
    return keep, excluded


def _summary_statistics(estimates: pd.DataFrame, prob: float) -> pd.DataFrame:
    """One-sample t summary of group estimates (G, p): mean, SE = sd / sqrt(G), t interval and test."""
    from scipy import stats

    low, high = summaries.interval_columns(prob)
    G = len(estimates)
    mean = estimates.mean(axis=0).to_numpy()
    se = estimates.std(axis=0, ddof=1).to_numpy() / np.sqrt(G)
    half = stats.t.ppf((1 + prob) / 2, G - 1) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stat = mean / se
    table = pd.DataFrame(
        {
            "Estimate": mean,
            low: mean - half,
            high: mean + half,
            "SE": se,
            "DF": float(G - 1),
            "T-stat": t_stat,
            "P-val": 2 * stats.t.sf(np.abs(t_stat), G - 1),
        },
        index=pd.Index(estimates.columns, name="term"),
    )
    return table


