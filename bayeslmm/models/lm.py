"""Lm: Bayesian linear regression with complete pooling (pymer4's ``Lm``)."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.engines import regression
from bayeslmm.engines.sampling import SamplerSettings
from bayeslmm.errors import FormulaError
from bayeslmm.models.base import Model
from bayeslmm.results import summaries
from bayeslmm.results.report import SummaryParts, display_table
from bayeslmm.spec.contrasts import build_coded_design
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.priors import default_priors

__all__ = ["Lm"]


class Lm(Model):
    """Bayesian linear regression with complete pooling: one set of coefficients for every row.

    The formula, design, default priors and tables of :class:`~bayeslmm.Lmer`, for a formula without
    random-effects terms. With Normal coefficient priors (the defaults) the posterior is drawn exactly
    by :mod:`bayeslmm.engines.regression`, without compiling anything; other priors sample the full
    PyMC model with NUTS.

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
        The formula has random-effects terms (use :class:`~bayeslmm.Lmer` or :class:`~bayeslmm.Lm2`).

    Examples
    --------
    >>> from bayeslmm import load_dataset
    >>> model = Lm("Reaction ~ Days", load_dataset("sleepstudy"))
    >>> model.fit(random_seed=1)  # doctest: +SKIP
    """

    _cached: ClassVar[tuple[str, ...]] = ("coefs", "data", "sigma")

    def __init__(self, formula: str, data: Any, family: str | Family = "gaussian", priors: dict | None = None) -> None:
        family = get_family(family)
        if family.name != "gaussian":
            raise FormulaError(f"Lm is a linear (gaussian) regression; family {family.name!r} is not available for it")
        parsed = parse_formula(formula)
        if parsed.random:
            terms = ", ".join(f"({term.expr} | {term.factor})" for term in parsed.random)
            raise FormulaError(
                f"Lm fits one regression to all rows (complete pooling), but {formula!r} has "
                f"random-effects terms {terms}; use Lmer for partial pooling or "
                "Lm2(formula, data, group=...) for a separate regression per group"
            )
        design = build_coded_design(parsed, data, family)
        super().__init__(formula, design, family, default_priors(design, priors, family), priors)

    def _sample(self, *, draws, tune, chains, random_seed, progressbar, **options) -> tuple[xr.DataTree, SamplerSettings]:
        if regression.supports(self.model_priors) and options.get("nuts_sampler", "nutpie") == "nutpie":
            return regression.sample_tree(
                self.design, [self.model_priors], np.zeros(self.design.n_obs, dtype=np.int64), None,
                draws=draws, tune=tune, chains=chains, random_seed=random_seed, progressbar=progressbar,
            )
        from bayeslmm.engines.pymc_model import (  # PyMC loads only for this path
            build_model,
            sample_pymc,
        )

        options.pop("method", None)
        model = build_model(self.design, self.model_priors, self.family)
        return sample_pymc(
            model, draws=draws, tune=tune, chains=chains, random_seed=random_seed, keep=["beta", "sigma"],
            progressbar=progressbar, **options,
        )

    def _diagnosed_variables(self) -> list[str]:
        return ["beta", "sigma"]

    @cached_property
    def sigma(self) -> pd.DataFrame:
        """Residual SD: posterior median ``Std`` (and ``Var = Std**2``) with its 95% interval."""
        self._require_fit("sigma")
        return summaries.ranef_var_table(self.design, self.posterior).drop(columns="Name").rename_axis(None)

    def _summary_parts(self) -> SummaryParts:
        design = self.design
        header = [
            f"Bayesian linear regression, complete pooling (bayeslmm) fit by {self.sampler}"
            if self.fitted
            else "Bayesian linear regression, complete pooling (bayeslmm), not fitted yet: call .fit()",
            f"Formula: {self.formula}",
            f"Family: {self.family.name} ({self.family.link.name} link)",
            f"Number of obs: {design.n_obs}"
            + (f"; {design.n_dropped} rows dropped for missing values" if design.n_dropped else ""),
        ]
        if not self.fitted:
            return SummaryParts(header, [("Priors:", self.priors)])
        low, high = summaries.interval_columns(0.95)
        sigma = self.sigma.iloc[0]
        header += ["", f"Residual SD (posterior median, 95% interval): {sigma['Std']:.3f} [{sigma[low]:.3f}, {sigma[high]:.3f}]"]
        coefficients = display_table(self.coefs.drop(columns=["ESS_tail"]))
        title = "Coefficients (posterior mean, 95% equal-tailed interval, posterior SD, probability of direction):"
        return SummaryParts(header, [(title, coefficients)], diagnostics=list(self.warnings))

    def __repr__(self) -> str:
        return f"Lm({self.formula!r}, family={self.family.name!r}, n={self.design.n_obs}; {self._fit_state()})"

