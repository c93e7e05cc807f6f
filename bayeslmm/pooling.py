"""Pooling: complete pooling (:class:`Lm`), no pooling (:class:`Lm2`) and partial pooling (Lmer) side by side.

A mixed model sits between two extremes. *Complete pooling* fits one regression to every row and
ignores the groups; *no pooling* fits each group on its own; *partial pooling* (the mixed model)
shrinks every group's estimate from its own no-pooling value toward the population value, the more
the fewer rows the group has and the smaller the between-group variance.

Models
------
:class:`Lm`
    Bayesian regression with complete pooling: the :class:`~bayeslmm.Lmer` pipeline with a formula
    that has no random-effects terms, and the same ``coefs``, ``data`` and ``summary()``.
:class:`Lm2`
    No pooling: one Bayesian regression per level of a grouping column, each with its own
    coefficients and residual SD, sampled as one PyMC model (one compilation for all groups); its
    ``coefs`` summarise the group coefficients across groups as pymer4's ``Lm2`` does.

Least squares
-------------
:func:`no_pooling_ols` and :func:`complete_pooling_ols` are the closed-form references the tables
(and plots) use. For a mixed model's factor ``g``, no pooling gives every term that varies by ``g``
its own coefficient per level and estimates the other fixed terms once, in one least-squares fit:
the limit of the mixed model as the group variances grow without bound. With ``(Days | Subject)``
this is a separate regression per subject (lme4's ``lmList``); with ``(1 | Subject)`` it is one
intercept per subject and a common ``Days`` slope.

Comparison tables
-----------------
:func:`compare_group_estimates`, :func:`compare_fixed_effects` and :func:`compare_variance_components`
put the frequentist REML (or ML) fit of :func:`bayeslmm.frequentist.fit_frequentist` next to the
Bayesian posterior of a fitted :class:`~bayeslmm.Lmer`. Frequentist columns start with ``freq_``,
Bayesian ones with ``bayes_``.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from scipy import linalg, stats

from bayeslmm import report, results
from bayeslmm.design import INTERCEPT, Design, build_design, to_pandas
from bayeslmm.errors import BayeslmmError, ConvergenceWarning, DataError, FormulaError, NotFittedError
from bayeslmm.families import Family, get_family
from bayeslmm.formula import parse_formula
from bayeslmm.frequentist import FrequentistResult, fit_frequentist
from bayeslmm.inference import (
    SamplerSettings,
    check_diagnostics,
    check_sampler_arguments,
    resolve_progressbar,
    sample,
)
from bayeslmm.lmer import Lmer
from bayeslmm.model import prior_variable
from bayeslmm.priors import ModelPriors, Prior, default_priors

__all__ = [
    "Lm",
    "Lm2",
    "no_pooling_ols",
    "complete_pooling_ols",
    "compare_group_estimates",
    "compare_fixed_effects",
    "compare_variance_components",
]



# ================================================================================================
# Lm: complete pooling
# ================================================================================================


class _SummaryFromParts:
    """``summary()`` and the Jupyter display of a model that describes itself by ``_summary_parts()``."""

    def summary(self) -> str:
        """Summary: formula, data, sampler, estimates, diagnostics."""
        self._require_fit("summary")
        return report.layout_text(self._summary_parts())

    def _repr_html_(self) -> str:
        """The summary as HTML tables (or, before fitting, the description), for Jupyter."""
        return report.layout_html(self._summary_parts()) if self.fitted else report.text_html(repr(self))


class Lm(_SummaryFromParts, Lmer):
    """Bayesian linear regression with complete pooling: one set of coefficients for every row.

    The :class:`~bayeslmm.Lmer` pipeline (formula, design, priors, NUTS, tables) with a formula that has
    no random-effects terms; the priors are the same scaled defaults (see :mod:`bayeslmm.priors`).

    Parameters
    ----------
    formula : str
        A formula without random-effects terms, e.g. ``"Reaction ~ Days"``.
    data : pandas.DataFrame or polars.DataFrame
        Never modified; rows with missing values in the columns used are dropped with a warning.
    family : str
        ``"gaussian"``.
    priors : dict, optional
        Overrides keyed by fixed term or ``"sigma"``, as for :class:`~bayeslmm.Lmer`.

    Attributes
    ----------
    coefs : pandas.DataFrame, shape (p, 8)
        Posterior mean (``Estimate``), 95% interval, posterior SD (``SE``), ``pd``, R-hat, ESS.
    sigma : pandas.DataFrame, shape (1, 4)
        Residual SD: posterior median ``Std``, ``Var`` and the 95% interval of ``Std``.
    data : pandas.DataFrame, shape (n, columns + 2)
        The rows used, with ``fits`` and ``residuals``.

    Raises
    ------
    FormulaError
        The formula has random-effects terms (use :class:`~bayeslmm.Lmer` or :class:`Lm2`).

    Examples
    --------
    >>> from bayeslmm import load_dataset
    >>> model = Lm("Reaction ~ Days", load_dataset("sleepstudy"))
    >>> model.fit(random_seed=1)  # doctest: +SKIP
    """

    _needs_random_effects = False

    def __init__(self, formula: str, data: Any, family: str | Family = "gaussian", priors: dict | None = None) -> None:
        parsed = parse_formula(formula)
        if parsed.random:
            terms = ", ".join(f"({term.expr} | {term.factor})" for term in parsed.random)
            raise FormulaError(
                f"Lm fits one regression to all rows (complete pooling), but {formula!r} has "
                f"random-effects terms {terms}; use Lmer for partial pooling or "
                "Lm2(formula, data, group=...) for a separate regression per group"
            )
        super().__init__(formula, data, family=family, priors=priors)

    @property
    def sigma(self) -> pd.DataFrame:
        """Residual SD: posterior median ``Std`` (and ``Var = Std**2``) with its 95% interval."""
        self._require_fit("sigma")
        return results.ranef_var_table(self._design, self.posterior).drop(columns="Name").rename_axis(None)

    # The group-level results of Lmer do not exist for a model without groups.
    fixef = property(lambda self: self._no_groups("fixef"))
    ranef = property(lambda self: self._no_groups("ranef"))
    ranef_var = property(lambda self: self._no_groups("ranef_var"))
    ranef_corr = property(lambda self: self._no_groups("ranef_corr"))
    ranef_summary = property(lambda self: self._no_groups("ranef_summary"))

    def _no_groups(self, name: str):
        raise AttributeError(
            f"Lm has no {name}: a complete-pooling regression has no group effects "
            "(see .coefs and .sigma; for per-group coefficients use Lm2 or Lmer)"
        )

    def _summary_parts(self) -> report.SummaryParts:
        design = self._design
        low, high = results.interval_columns(0.95)
        sigma = self.sigma.iloc[0]
        header = [
            f"Bayesian linear regression, complete pooling (bayeslmm) fit by {self.sampler}",
            f"Formula: {self.formula}",
            f"Family: {self.family.name} ({self.family.link} link)",
            f"Number of obs: {design.n_obs}"
            + (f"; {design.n_dropped} rows dropped for missing values" if design.n_dropped else ""),
            "",
            f"Residual SD (posterior median, 95% interval): {sigma['Std']:.3f} [{sigma[low]:.3f}, {sigma[high]:.3f}]",
        ]
        coefficients = report.display_table(self.coefs.drop(columns=["ESS_tail"]))
        title = "Coefficients (posterior mean, 95% equal-tailed interval, posterior SD, probability of direction):"
        return report.SummaryParts(header, [(title, coefficients)], list(self.warnings))

    def __repr__(self) -> str:
        state = f"fitted: {self.sampler.chains}x{self.sampler.draws} draws" if self.fitted else "not fitted"
        return f"Lm({self.formula!r}, family={self.family.name!r}, n={self._design.n_obs}; {state})"


# ================================================================================================
# Lm2: no pooling
# ================================================================================================


class Lm2(_SummaryFromParts):
    """No pooling: a separate Bayesian regression for every level of ``group`` (pymer4's ``Lm2``).

    Every group ``g`` has its own coefficients ``beta[g]`` and residual SD ``sigma[g]``, with the
    default priors of :mod:`bayeslmm.priors` computed from that group's rows alone (``mean(y_g)``,
    ``sd(y_g)``, ``sd(x_g)``), so each group's posterior is the one its own regression would give. All
    groups are sampled together as one PyMC model, so there is one compilation however many groups
    there are; the groups share nothing.

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

    def __init__(
        self, formula: str, data: Any, group: str, family: str | Family = "gaussian", priors: dict | None = None
    ) -> None:
        parsed = parse_formula(formula)
        if parsed.random:
            raise FormulaError(
                f"Lm2 takes a formula without random-effects terms (the grouping is the group= argument), "
                f"got {formula!r}; use Lmer for partial pooling"
            )
        self.formula = formula
        self.group = group
        self.family = get_family(family)
        frame = _drop_missing_groups(to_pandas(data), group)
        design = build_design(parsed, frame)
        codes, levels = _group_codes(design.data[group], group)
        keep, self.excluded = _identified_groups(design.X, codes, levels, group)
        rows = keep[codes]
        self._design = dataclasses.replace(design, y=design.y[rows], X=design.X[rows], data=design.data.loc[rows])
        self.levels: pd.Index = pd.Index(levels[keep], name=group)
        self._codes = np.cumsum(keep)[codes[rows]] - 1  # renumbered 0 .. G-1 over the kept groups
        self._priors = [default_priors(self._group_design(g), priors) for g in range(len(self.levels))]
        self.idata: xr.DataTree | None = None
        self.sampler: SamplerSettings | None = None
        self.warnings: list[str] = []

    def _group_design(self, g: int) -> Design:
        """The design restricted to group ``g`` (used to scale that group's priors)."""
        rows = self._codes == g
        return dataclasses.replace(self._design, y=self._design.y[rows], X=self._design.X[rows])

    # ------------------------------------------------------------------------------------ fitting
    def fit(
        self,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        random_seed: int | None = None,
        summarize: bool = False,
        progressbar: bool | None = None,
        **sampler_options: Any,
    ) -> pd.DataFrame:
        """Sample every group's posterior with NUTS, in one model.

        Parameters
        ----------
        draws, tune, chains : int
            Kept draws per chain, tuning steps per chain, number of chains.
        random_seed : int, optional
        summarize : bool
            Print :meth:`summary` afterwards.
        progressbar : bool, optional
            None (default): on in terminals and notebooks, off under CI (as :meth:`Lmer.fit`).
        **sampler_options
            Passed to :func:`pymc.sample`.

        Returns
        -------
        pandas.DataFrame
            :attr:`coefs`.
        """
        check_sampler_arguments(draws, tune, chains)
        for name in ("coefs", "fixef", "sigma", "data"):
            self.__dict__.pop(name, None)
        model = _build_lm2_model(self._design, self._codes, self.levels, self._priors, self.family)
        self.idata, self.sampler = sample(
            model,
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=random_seed,
            keep=["beta", "sigma"],
            progressbar=resolve_progressbar(progressbar),
            **sampler_options,
        )
        self._add_log_likelihood()
        self.warnings = check_diagnostics(self.idata, ["beta", "sigma"])
        for message in self.warnings:
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
        if summarize:
            print(self.summary())
        return self.coefs

    def _add_log_likelihood(self) -> None:
        """Pointwise log-likelihood group (chain, draw, obs), computed in NumPy."""
        posterior = self.posterior
        beta = results.stack_draws(posterior, "beta")  # (chain, draw, G, p)
        sigma = results.stack_draws(posterior, "sigma")  # (chain, draw, G)
        mu = np.einsum("cdnp,np->cdn", beta[:, :, self._codes, :], self._design.X)
        values = stats.norm.logpdf(self._design.y, loc=mu, scale=sigma[:, :, self._codes])
        log_lik = xr.Dataset({"y": (("chain", "draw", "obs"), values)})
        self.idata["log_likelihood"] = xr.DataTree(log_lik.assign_coords(chain=posterior.chain, draw=posterior.draw))

    # ------------------------------------------------------------------------------------ results
    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.idata is not None

    @property
    def posterior(self) -> xr.Dataset:
        """Draws of ``beta`` (chain, draw, group, fixed_term) and ``sigma`` (chain, draw, group)."""
        self._require_fit("posterior")
        return self.idata["posterior"].to_dataset()

    @property
    def design(self) -> Design:
        """The design of the rows used (excluded groups removed)."""
        return self._design

    @property
    def group_index(self) -> np.ndarray:
        """For each row used, the position of its group in :attr:`levels`, shape (n,)."""
        return self._codes

    @property
    def priors(self) -> pd.DataFrame:
        """The priors of every group, one row per (group, parameter)."""
        rows = [(level, name, prior) for level, p in zip(self.levels, self._priors) for name, prior in p.table()]
        return pd.DataFrame(rows, columns=[self.group, "parameter", "prior"]).set_index([self.group, "parameter"])

    @cached_property
    def fixef(self) -> pd.DataFrame:
        """Posterior mean of each group's coefficients, shape (G, p), indexed by group."""
        self._require_fit("fixef")
        means = results.stack_draws(self.posterior, "beta").mean(axis=(0, 1))
        return pd.DataFrame(means, index=self.levels, columns=list(self._design.fixed_terms))

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
            Columns ``factor``, ``level``, ``term`` and those of :func:`bayeslmm.results.summarize`.
        """
        self._require_fit("fixef_summary")
        draws = results.stack_draws(self.posterior, "beta")
        chains, n_draws, G, p = draws.shape
        index = pd.MultiIndex.from_product([list(self.levels), list(self._design.fixed_terms)], names=["level", "term"])
        table = results.summarize(draws.reshape(chains, n_draws, G * p), index, prob, hdi).reset_index()
        table.insert(0, "factor", self.group)
        return table

    @cached_property
    def sigma(self) -> pd.DataFrame:
        """Posterior summary of each group's residual SD, shape (G, 8), indexed by group."""
        self._require_fit("sigma")
        return results.summarize(results.stack_draws(self.posterior, "sigma"), self.levels)

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
        frame = self._design.data.copy()
        frame["fits"] = np.sum(self._design.X * self.fixef.to_numpy()[self._codes], axis=1)
        frame["residuals"] = self._design.y - frame["fits"].to_numpy()
        return frame

    def _summary_parts(self) -> report.SummaryParts:
        excluded = f"; excluded: {', '.join(map(str, self.excluded))}" if self.excluded else ""
        header = [
            f"Bayesian regressions per group, no pooling (bayeslmm) fit by {self.sampler}",
            f"Formula: {self.formula}, one regression per level of {self.group!r}",
            f"Number of obs: {self._design.n_obs}; groups: {len(self.levels)}{excluded}",
        ]
        tables = [
            (
                "Population summary (mean of the group posterior means; SE = SD across groups / sqrt(G); "
                "t interval and test on G - 1 df):",
                self.coefs,
            ),
            ("Group coefficients (posterior means):", self.fixef),
        ]
        return report.SummaryParts(header, tables, list(self.warnings))

    def __repr__(self) -> str:
        state = f"fitted: {self.sampler.chains}x{self.sampler.draws} draws" if self.fitted else "not fitted"
        return (
            f"Lm2({self.formula!r}, group={self.group!r}, n={self._design.n_obs}, "
            f"{len(self.levels)} groups; {state})"
        )

    def _require_fit(self, what: str) -> None:
        if self.idata is None:
            raise NotFittedError(f"{what} is not available before the model is fitted: call .fit() first")


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


def _build_lm2_model(
    design: Design, codes: np.ndarray, levels: pd.Index, priors: list[ModelPriors], family: Family
) -> pm.Model:
    """One PyMC model holding G independent regressions.

    Variables: ``beta`` (group, fixed_term) on the original scale, ``sigma`` (group,). Predictors are
    centred within each group when there is an intercept, as :mod:`bayeslmm.model` does for one
    regression, so each group's intercept prior is at that group's means.
    """
    terms = list(design.fixed_terms)
    X, G = design.X, len(levels)
    coords = {"group": list(levels), "fixed_term": terms, "obs": np.arange(design.n_obs)}
    grid = [[group_priors.fixed[term] for term in terms] for group_priors in priors]
    with pm.Model(coords=coords) as model:
        if INTERCEPT in terms and len(terms) > 1:
            intercept = terms.index(INTERCEPT)
            means = _group_means(X, codes, G)
            means[:, intercept] = 0.0
            centred = _matrix_rv("beta_centered", grid, dims=("group", "fixed_term"))
            shift = (means * centred).sum(axis=1)
            pm.Deterministic(
                "beta",
                pt.set_subtensor(centred[:, intercept], centred[:, intercept] - shift),
                dims=("group", "fixed_term"),
            )
            eta = ((X - means[codes]) * centred[codes]).sum(axis=1)
        else:
            beta = _matrix_rv("beta", grid, dims=("group", "fixed_term"), name_as_deterministic=True)
            eta = (X * beta[codes]).sum(axis=1)
        sigma = prior_variable("sigma", [group_priors.sigma for group_priors in priors], dims="group")
        family.add_likelihood(eta, {"sigma": sigma[codes]}, design.y)
    return model


def _group_means(X: np.ndarray, codes: np.ndarray, G: int) -> np.ndarray:
    """Column means of ``X`` within each group, shape (G, p)."""
    sums = np.zeros((G, X.shape[1]))
    np.add.at(sums, codes, X)
    return sums / np.bincount(codes, minlength=G)[:, None]


def _matrix_rv(name: str, grid: list[list[Prior]], dims: tuple[str, str], name_as_deterministic: bool = False):
    """A (G, p) variable from a G x p grid of priors: one variable when they share a distribution,
    else one vector per column (``name[term]``) stacked."""
    families = {(prior.distribution, tuple(sorted(prior.params))) for row in grid for prior in row}
    if len(families) == 1:
        distribution, keys = families.pop()
        params = {key: np.array([[prior.params[key] for prior in row] for row in grid], dtype=float) for key in keys}
        return getattr(pm, distribution)(name, **params, dims=dims)
    terms = pm.modelcontext(None).coords[dims[1]]
    columns = [prior_variable(f"{name}[{term}]", [row[j] for row in grid], dims[0]) for j, term in enumerate(terms)]
    stacked = pt.stack(columns, axis=1)
    return pm.Deterministic(name, stacked, dims=dims) if name_as_deterministic else stacked


def _summary_statistics(estimates: pd.DataFrame, prob: float) -> pd.DataFrame:
    """One-sample t summary of group estimates (G, p): mean, SE = sd / sqrt(G), t interval and test."""
    low, high = results.interval_columns(prob)
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


# ================================================================================================
# Least-squares references
# ================================================================================================


def no_pooling_ols(model: Lmer | Lm2 | Design, factor: str | None = None) -> pd.DataFrame:
    """No-pooling least-squares coefficients of every group.

    For an :class:`~bayeslmm.Lmer` (or its :class:`~bayeslmm.design.Design`) and grouping factor ``g``,
    every term that varies by ``g`` in the formula gets its own coefficient per level; the other fixed
    terms are estimated once, jointly (a fixed-effects regression with group-by-term interactions:
    the mixed model with infinite group variances). With ``(Days | Subject)`` this is one OLS
    regression per subject (lme4's ``lmList``); with ``(1 | Subject)`` one intercept per subject and a
    common ``Days`` slope. Other grouping factors are ignored. For an :class:`Lm2`, every term varies by
    its group: one OLS regression per group.

    Parameters
    ----------
    model : Lmer, Lm2 or Design
        Fitted or not.
    factor : str, optional
        The grouping factor; the formula's first by default. Ignored for :class:`Lm2`.

    Returns
    -------
    pandas.DataFrame, shape (G, number of terms)
        Indexed by the factor's levels; columns as lme4's ``coef()``: group-only terms first, then the
        fixed terms in formula order (common terms repeat their single estimate). Coefficients that a
        group's rows cannot identify (fewer rows than its terms, or a constant predictor) are NaN,
        with a warning.

    Raises
    ------
    DataError
        The model has no grouping factor, or ``factor`` is not one of them.
    """
    problem = _no_pooling_problem(model, factor)
    varying, common = _group_least_squares(problem.y, problem.V, problem.C, problem.codes, len(problem.levels))
    frame = pd.DataFrame(varying, index=problem.levels, columns=problem.varying_terms)
    for j, term in enumerate(problem.common_terms):
        frame[term] = common[j]
    unidentified = frame.index[frame[problem.varying_terms].isna().any(axis=1)]
    if len(unidentified):
        warnings.warn(
            f"no pooling: {len(unidentified)} group(s) of {problem.factor!r} cannot identify their own "
            f"{', '.join(problem.varying_terms)} (too few rows or a predictor constant within the "
            f"group); their no-pooling estimates are NaN: {', '.join(map(str, unidentified))}",
            UserWarning,
            stacklevel=2,
        )
    return frame[problem.column_order]


def complete_pooling_ols(model: Lmer | Lm2 | Design) -> pd.Series:
    """Complete-pooling least-squares coefficients: OLS of the response on the fixed part ``X``.

    Parameters
    ----------
    model : Lmer, Lm2 or Design

    Returns
    -------
    pandas.Series, length p
        Indexed by fixed term; NaN for a column that is a linear combination of the others.
    """
    design = model if isinstance(model, Design) else model.design
    coef = _least_squares(design.X, design.y)
    return pd.Series(coef, index=pd.Index(design.fixed_terms, name="term"), name="complete_pooling")


@dataclasses.dataclass(frozen=True)
class _NoPoolingProblem:
    """A no-pooling least-squares problem.

    Attributes
    ----------
    y : ndarray, shape (n,)
    V : ndarray, shape (n, k)
        Columns with a coefficient per group, named ``varying_terms``.
    C : ndarray, shape (n, c)
        Columns with one common coefficient, named ``common_terms``.
    codes : ndarray of int, shape (n,)
        Group of each row, indexing ``levels``.
    levels : pandas.Index, length G
    factor : str
    column_order : list of str
        Order of the output columns (lme4's ``coef()``).
    """

    y: np.ndarray
    V: np.ndarray
    C: np.ndarray
    codes: np.ndarray
    levels: pd.Index
    factor: str
    varying_terms: list[str]
    common_terms: list[str]
    column_order: list[str]


def _no_pooling_problem(model: Lmer | Lm2 | Design, factor: str | None) -> _NoPoolingProblem:
    """The no-pooling problem of an Lm2 (every term varies) or of a mixed model's factor."""
    if isinstance(model, Lm2):
        design, terms = model.design, list(model.design.fixed_terms)
        return _NoPoolingProblem(
            design.y, design.X, design.X[:, :0], model.group_index, model.levels, model.group, terms, [], terms
        )
    design = model if isinstance(model, Design) else model.design
    factor = _resolve_factor(design, factor)
    blocks = design.blocks_of(factor)
    varying_terms, columns = [], []
    for block in blocks:
        for j, term in enumerate(block.terms):
            if term not in varying_terms:
                varying_terms.append(term)
                columns.append(block.Z[:, j])
    common = [j for j, term in enumerate(design.fixed_terms) if term not in varying_terms]
    group_only = [term for term in varying_terms if term not in design.fixed_terms]
    return _NoPoolingProblem(
        y=design.y,
        V=np.column_stack(columns),
        C=design.X[:, common],
        codes=blocks[0].group_index,
        levels=blocks[0].levels,
        factor=factor,
        varying_terms=varying_terms,
        common_terms=[design.fixed_terms[j] for j in common],
        column_order=group_only + list(design.fixed_terms),
    )


def _group_least_squares(
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
        common = _least_squares(C_within, y_within)
    adjusted = y - C @ np.nan_to_num(common)
    varying = np.full((G, V.shape[1]), np.nan)
    for g, rows in enumerate(rows_of):
        if len(rows) >= V.shape[1] and np.linalg.matrix_rank(V[rows]) == V.shape[1]:
            varying[g] = np.linalg.lstsq(V[rows], adjusted[rows], rcond=None)[0]
    return varying, common


def _least_squares(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS coefficients, shape (p,), with NaN for columns aliased with earlier ones (as R's ``lm``)."""
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


def _resolve_factor(design: Design, factor: str | None) -> str:
    factors = list(design.factors)
    if not factors:
        raise DataError(
            f"formula {design.formula.text!r} has no grouping factor; pooling comparisons need a "
            "random-effects term such as '(1 | group)'"
        )
    if factor is None:
        return factors[0]
    if factor not in factors:
        raise DataError(f"{factor!r} is not a grouping factor of the model; its factors are {factors}")
    return factor


# ================================================================================================
# Comparison tables
# ================================================================================================


def compare_group_estimates(
    model: Lmer, factor: str | None = None, prob: float = 0.95, REML: bool = True
) -> pd.DataFrame:
    """Every group's coefficients under no, partial (frequentist and Bayesian) and complete pooling.

    Parameters
    ----------
    model : Lmer
        Fitted, with at least one random-effects term.
    factor : str, optional
        The grouping factor; the formula's first by default.
    prob : float
        Probability of the Bayesian credible interval.
    REML : bool
        Frequentist fit by REML (default) or ML.

    Returns
    -------
    pandas.DataFrame, shape (G * k, 11)
        One row per (level, term) for the ``k`` terms that vary by ``factor``, columns:

        - ``factor``, ``level``, ``term``; ``n``: rows of the group;
        - ``no_pooling``: least squares with the group's own coefficient (:func:`no_pooling_ols`);
        - ``partial_freq``: (RE)ML fixed effect plus conditional mode (BLUP), lme4's ``coef()``;
        - ``partial_bayes``, ``partial_bayes_SE``, ``partial_bayes_<lo>_ci``, ``partial_bayes_<hi>_ci``:
          posterior mean, SD and equal-tailed interval of fixed plus group effect;
        - ``complete_pooling``: OLS on the fixed part, the same for every group (0 for a term that
          has no fixed effect).

    Raises
    ------
    NotFittedError
        The model has not been fitted (checked before anything is computed).
    DataError
        The model has no random-effects term, or ``factor`` is not one of its factors.
    """
    _require_mixed_fit(model, "compare_group_estimates")
    design = model.design
    factor = _resolve_factor(design, factor)
    low, high = results.interval_columns(prob)
    reference = _frequentist_of(model, REML)
    no_pooling = no_pooling_ols(model, factor)
    complete = complete_pooling_ols(model)
    blocks = design.blocks_of(factor)
    terms = list(dict.fromkeys(term for block in blocks for term in block.terms))
    index = pd.MultiIndex.from_product([list(blocks[0].levels), terms], names=["level", "term"])

    bayes = results.ranef_long(design, model.posterior, total=True, prob=prob)
    bayes = bayes[bayes["factor"] == factor].set_index(["level", "term"]).reindex(index)
    freq = reference.fixef[factor] if isinstance(reference.fixef, dict) else reference.fixef
    counts = pd.Series(np.bincount(blocks[0].group_index, minlength=blocks[0].n_levels), index=blocks[0].levels)

    table = pd.DataFrame(index=index)
    table["n"] = counts.reindex(index.get_level_values("level")).to_numpy()
    table["no_pooling"] = _long(no_pooling[terms], index)
    table["partial_freq"] = _long(freq[terms], index)
    table["partial_bayes"] = bayes["Estimate"].to_numpy()
    table["partial_bayes_SE"] = bayes["SE"].to_numpy()
    table[f"partial_bayes_{low}"] = bayes[low].to_numpy()
    table[f"partial_bayes_{high}"] = bayes[high].to_numpy()
    table["complete_pooling"] = [complete.get(term, 0.0) for term in index.get_level_values("term")]
    table = table.reset_index()
    table.insert(0, "factor", factor)
    table.attrs.update({"frequentist": "REML" if REML else "ML", "prob": prob})
    return table


def compare_fixed_effects(model: Lmer, prob: float = 0.95, REML: bool = True) -> pd.DataFrame:
    """Fixed effects of the (RE)ML fit next to their posterior summaries.

    Parameters
    ----------
    model : Lmer
        Fitted, with at least one random-effects term.
    prob : float
        Probability of both intervals.
    REML : bool
        Frequentist fit by REML (default) or ML.

    Returns
    -------
    pandas.DataFrame, shape (p, 11)
        Indexed by term. ``freq_Estimate``, ``freq_SE``, ``freq_<lo>_ci``, ``freq_<hi>_ci`` (t interval
        on ``freq_DF``), ``freq_DF`` (Satterthwaite, as lmerTest), ``freq_P-val`` (two-sided t-test on
        ``freq_DF``); ``bayes_Estimate`` (posterior mean), ``bayes_SE`` (posterior SD),
        ``bayes_<lo>_ci``, ``bayes_<hi>_ci`` (equal-tailed), ``bayes_pd`` (probability of direction).
        ``attrs["df_method"]`` says how the df were obtained.

    Raises
    ------
    NotFittedError, DataError
        As :func:`compare_group_estimates`.
    """
    _require_mixed_fit(model, "compare_fixed_effects")
    reference = _frequentist_of(model, REML)
    low, high = results.interval_columns(prob)
    freq = reference.coefs
    bayes = results.coefs_table(model.design, model.posterior, prob=prob)
    half = stats.t.ppf((1 + prob) / 2, freq["DF"].to_numpy()) * freq["SE"].to_numpy()
    table = pd.DataFrame(
        {
            "freq_Estimate": freq["Estimate"].to_numpy(),
            "freq_SE": freq["SE"].to_numpy(),
            f"freq_{low}": freq["Estimate"].to_numpy() - half,
            f"freq_{high}": freq["Estimate"].to_numpy() + half,
            "freq_DF": freq["DF"].to_numpy(),
            "freq_P-val": freq["P-val"].to_numpy(),
            "bayes_Estimate": bayes["Estimate"].to_numpy(),
            "bayes_SE": bayes["SE"].to_numpy(),
            f"bayes_{low}": bayes[low].to_numpy(),
            f"bayes_{high}": bayes[high].to_numpy(),
            "bayes_pd": bayes["pd"].to_numpy(),
        },
        index=pd.Index(model.design.fixed_terms, name="term"),
    )
    table.attrs.update({"frequentist": "REML" if REML else "ML", "df_method": reference.df_method, "prob": prob})
    return table


def compare_variance_components(
    model: Lmer, prob: float = 0.95, REML: bool = True, n_boot: int = 0, random_seed: int | None = None
) -> pd.DataFrame:
    """Standard deviations and correlations of the random effects: (RE)ML estimate next to the posterior.

    Parameters
    ----------
    model : Lmer
        Fitted, with at least one random-effects term.
    prob : float
        Probability of the intervals.
    REML : bool
        Frequentist fit by REML (default) or ML.
    n_boot : int
        Parametric-bootstrap replicates for a frequentist percentile interval (0: no interval). Each
        replicate simulates a response from the fitted model (fixed effects, group effects drawn from
        the estimated covariances, residuals) and refits it: ``n_boot`` frequentist fits (0.05-0.3 s
        each on sleepstudy). Replicates whose optimiser did not converge are kept and counted in
        ``attrs["n_boot_not_converged"]``.
    random_seed : int, optional
        Seed of the bootstrap.

    Returns
    -------
    pandas.DataFrame, shape (number of SDs + number of correlations, 6 or 8)
        One row per parameter, in the order of ``ranef_var`` then ``ranef_corr``. Columns ``group``,
        ``parameter`` (``"sd"`` or ``"corr"``), ``term`` (the term's name, ``""`` for the residual,
        ``"IV1, IV2"`` for a correlation), ``freq_Estimate`` ((RE)ML estimate), with ``n_boot``
        ``freq_<lo>_ci`` and ``freq_<hi>_ci`` (bootstrap percentiles), ``bayes_Estimate`` (posterior
        median, as ``ranef_var``), ``bayes_<lo>_ci`` and ``bayes_<hi>_ci`` (equal-tailed).

    Raises
    ------
    NotFittedError, DataError
        As :func:`compare_group_estimates`.
    ValueError
        ``n_boot`` is negative or not an integer.
    """
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    _require_mixed_fit(model, "compare_variance_components")
    low, high = results.interval_columns(prob)
    reference = _frequentist_of(model, REML)
    freq = _variance_rows(reference.ranef_var, reference.ranef_corr)
    bayes = _variance_rows(
        results.ranef_var_table(model.design, model.posterior, prob),
        results.ranef_corr_table(model.design, model.posterior, prob),
        interval=(low, high),
    )
    table = freq[["group", "parameter", "term", "estimate"]].rename(columns={"estimate": "freq_Estimate"})
    attrs = {"frequentist": "REML" if REML else "ML", "bayes": "posterior median", "prob": prob}
    if n_boot:
        replicates, not_converged = _parametric_bootstrap(reference, n_boot, random_seed)
        bounds = np.nanquantile(replicates, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        table[f"freq_{low}"], table[f"freq_{high}"] = bounds
        attrs.update({"n_boot": n_boot, "n_boot_not_converged": not_converged, "interval": "parametric bootstrap"})
    table["bayes_Estimate"] = bayes["estimate"].to_numpy()
    table[f"bayes_{low}"] = bayes[low].to_numpy()
    table[f"bayes_{high}"] = bayes[high].to_numpy()
    table.attrs.update(attrs)
    return table


def _variance_rows(
    var_table: pd.DataFrame, corr_table: pd.DataFrame | None, interval: tuple[str, str] | None = None
) -> pd.DataFrame:
    """``ranef_var`` and ``ranef_corr`` tables (either engine) as rows group/parameter/term/estimate."""
    extra = list(interval or ())
    sds = var_table.reset_index()[["group", "Name", "Std"] + extra].rename(columns={"Name": "term", "Std": "estimate"})
    sds.insert(1, "parameter", "sd")
    if corr_table is None:
        return sds.reset_index(drop=True)
    corr = corr_table.reset_index()
    corr = corr.assign(term=corr["IV1"] + ", " + corr["IV2"], parameter="corr").rename(columns={"Corr": "estimate"})
    return pd.concat([sds, corr[["group", "parameter", "term", "estimate"] + extra]], ignore_index=True)


def _parametric_bootstrap(reference: FrequentistResult, n_boot: int, random_seed: int | None) -> tuple[np.ndarray, int]:
    """Refit ``n_boot`` responses simulated from ``reference``.

    Returns
    -------
    replicates : ndarray, shape (n_boot, m)
        The SDs then correlations of each refit, in :func:`_variance_rows` order (NaN if a refit failed).
    not_converged : int
    """
    design = reference.design
    rng = np.random.default_rng(random_seed)
    factors = _block_factors(reference)
    mean = design.X @ reference.beta
    replicates, not_converged = [], 0
    for _ in range(n_boot):
        y = mean + reference.sigma * rng.standard_normal(design.n_obs)
        for block, factor in zip(design.blocks, factors):
            b = rng.standard_normal((block.n_levels, block.n_terms)) @ (reference.sigma * factor).T
            y += np.sum(block.Z * b[block.group_index], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            try:
                refit = fit_frequentist(dataclasses.replace(design, y=y), REML=reference.REML)
            except BayeslmmError:
                replicates.append(None)
                continue
        not_converged += not refit.converged
        replicates.append(_variance_rows(refit.ranef_var, refit.ranef_corr)["estimate"].to_numpy())
    width = len(_variance_rows(reference.ranef_var, reference.ranef_corr))
    return np.array([np.full(width, np.nan) if r is None else r for r in replicates]), not_converged


def _block_factors(reference: FrequentistResult) -> list[np.ndarray]:
    """Lower-triangular ``T_b`` (k x k) of every block from ``theta`` (lme4 order: column by column)."""
    factors, offset = [], 0
    for block in reference.design.blocks:
        k = block.n_terms
        rows = [i for j in range(k) for i in range(j, k)]
        cols = [j for j in range(k) for _ in range(j, k)]
        factor = np.zeros((k, k))
        factor[rows, cols] = reference.theta[offset : offset + len(rows)]
        factors.append(factor)
        offset += len(rows)
    return factors


def _require_mixed_fit(model: Lmer, what: str) -> None:
    """Raise before any work unless ``model`` is a fitted Lmer with random effects."""
    if not isinstance(model, Lmer) or isinstance(model, Lm):
        raise TypeError(f"{what} compares the pooling of a mixed model: pass a fitted Lmer, got {type(model).__name__}")
    if not model.design.blocks:
        raise DataError(f"{what}: formula {model.formula!r} has no random-effects term such as '(1 | group)'")
    if not model.fitted:
        raise NotFittedError(f"{what} needs the Bayesian posterior: call model.fit() first")


def _frequentist_of(model: Lmer, REML: bool) -> FrequentistResult:
    """The model's stored frequentist fit (``model.frequentist``) when it used the same criterion, else a new fit."""
    stored = getattr(model, "frequentist", None)
    if isinstance(stored, FrequentistResult) and stored.REML == REML:
        return stored
    return fit_frequentist(model.design, REML=REML)


def _long(wide: pd.DataFrame, index: pd.MultiIndex) -> np.ndarray:
    """Values of a levels x terms frame in the order of a (level, term) index."""
    stacked = wide.stack()
    stacked.index = stacked.index.set_names(index.names)
    return stacked.reindex(index).to_numpy()
