"""Lmer: the user-facing linear mixed model, pymer4's API on a Bayesian engine."""

from __future__ import annotations

import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm import comparison, report, results
from bayeslmm.design import Design, build_design
from bayeslmm.errors import ConvergenceWarning, FormulaError, NotFittedError
from bayeslmm.families import Family, get_family
from bayeslmm.formula import parse_formula
from bayeslmm.frequentist import FrequentistResult, fit_frequentist
from bayeslmm.inference import (
    SamplerSettings,
    check_diagnostics,
    check_sampler_arguments,
    default_sampler,
    resolve_progressbar,
    sample,
)
from bayeslmm.model import build_model, var_names
from bayeslmm.priors import ModelPriors, default_priors

__all__ = ["Lmer"]

#: Above this many values (draws x observations, 8 bytes each: 400 MB) the pointwise log-likelihood is
#: not stored at fit time but computed when :meth:`Lmer.loo` or :func:`bayeslmm.lrt` first needs it.
LOG_LIKELIHOOD_MAX_VALUES = 50_000_000


class Lmer:
    """Bayesian linear mixed model from an lme4 formula.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``. Supported random terms: ``(1|g)``,
        ``(x|g)``, ``(0+x|g)``, ``(x||g)``, ``(1|g1/g2)``, ``(1|g1:g2)``, crossed and several blocks.
    data : pandas.DataFrame or polars.DataFrame
        Never modified. Rows with missing values in the columns used are dropped with a warning.
    family : str
        ``"gaussian"`` (the only family so far).
    priors : dict, optional
        Overrides of the default priors; see :mod:`bayeslmm.priors`.

    Raises
    ------
    FormulaError, UnsupportedSyntaxError, DataError, PriorError
        On bad input, before anything is sampled.

    Examples
    --------
    >>> from bayeslmm import Lmer, load_dataset
    >>> model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    >>> model.fit(random_seed=1)  # doctest: +SKIP
    >>> model.coefs  # doctest: +SKIP
    """

    _needs_random_effects = True  # Lm, the complete-pooling subclass, has none

    def __init__(self, formula: str, data: Any, family: str | Family = "gaussian", priors: dict | None = None) -> None:
        self.formula = formula
        self.family = get_family(family)
        parsed = parse_formula(formula)
        if self._needs_random_effects and not parsed.random:
            raise FormulaError(
                f"formula {formula!r} has no random-effects term such as '(1 | group)' (lme4 refuses it "
                "too); use bayeslmm.Lm for a regression without groups"
            )
        self._design: Design = build_design(parsed, data)
        self._priors: ModelPriors = default_priors(self._design, priors)
        self._prior_overrides: dict = dict(priors or {})  # as given, so that save() can rebuild the model
        self.idata: xr.DataTree | None = None
        self.sampler: SamplerSettings | None = None
        self.warnings: list[str] = []
        self.frequentist: FrequentistResult | None = None

    # ----------------------------------------------------------------------------------- fitting
    def fit(
        self,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        random_seed: int | None = None,
        summarize: bool = False,
        progressbar: bool | None = None,
        marginalize: bool | None = None,
        **sampler_options: Any,
    ) -> pd.DataFrame:
        """Sample the posterior with NUTS.

        Parameters
        ----------
        draws, tune, chains : int
            Kept draws per chain, tuning steps per chain, number of chains.
        random_seed : int, optional
            The same seed gives the same draws.
        summarize : bool
            Print :meth:`summary` afterwards.
        progressbar : bool, optional
            Show the sampler's progress bar. ``None`` (default) decides: on in a Jupyter kernel or when
            standard error is a terminal, off when the ``CI`` environment variable is set or output
            goes to a file (see :func:`bayeslmm.inference.auto_progressbar`).
        marginalize : bool, optional
            How to sample. ``None`` (default) chooses: gaussian models the collapsed sampler of
            :mod:`bayeslmm.marginal` supports (Normal fixed-effect priors, moderate numbers of group
            effects) integrate the fixed and group effects out exactly, sample only the variance
            parameters, and draw the effects from their exact conditional (no compilation, about 10x
            faster); every other model samples the full PyMC model. ``False`` forces the full model;
            ``True`` requires the collapsed sampler and raises if it does not apply. Both sample the
            same posterior.
        **sampler_options
            Passed to the sampler, e.g. ``target_accept=0.95``; ``nuts_sampler="pymc"`` uses PyMC's
            own NUTS on the full model.

        Returns
        -------
        pandas.DataFrame
            :attr:`coefs`, as pymer4's ``fit`` returns.
        """
        check_sampler_arguments(draws, tune, chains)
        self._clear_cache()
        progressbar = resolve_progressbar(progressbar)
        settings = dict(draws=draws, tune=tune, chains=chains, random_seed=random_seed, keep=self._kept_variables())
        if self._uses_marginal_path(marginalize, sampler_options):
            from bayeslmm import marginal  # loads numba kernels: only when needed

            self.idata, self.sampler = marginal.sample_marginal(
                self._design, self._priors, progressbar=progressbar, **settings, **sampler_options
            )
        else:
            model = build_model(self._design, self._priors, self.family)
            self.idata, self.sampler = sample(model, progressbar=progressbar, **settings, **sampler_options)
        if draws * chains * self._design.n_obs <= LOG_LIKELIHOOD_MAX_VALUES:
            self._add_log_likelihood()  # larger ones are computed when LOO first needs them
        self.warnings = check_diagnostics(self.idata, self._hyperparameters())
        for message in self.warnings:
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
        if summarize:
            print(self.summary())
        return self.coefs

    def _uses_marginal_path(self, marginalize: bool | None, sampler_options: dict) -> bool:
        """Whether to use the exact collapsed sampler of :mod:`bayeslmm.marginal` (see :meth:`fit`)."""
        if marginalize is False:
            return False
        from bayeslmm import marginal

        possible = (
            sampler_options.get("nuts_sampler", "nutpie") == "nutpie"
            and default_sampler() == "nutpie"
            and marginal.supports(self._design, self._priors, self.family)
        )
        if marginalize and not possible:
            raise ValueError(
                "marginalize=True: the collapsed sampler needs a gaussian family, Normal priors on the "
                "fixed effects, nutpie, and at most "
                f"{marginal.MAX_DENSE} fixed effects plus group effects outside the largest block; "
                "use marginalize=None to fall back to the full model automatically"
            )
        return possible

    def fit_frequentist(self, REML: bool = True) -> FrequentistResult:
        """Fit the same model by REML (default) or ML, as lme4 does, and keep it as :attr:`frequentist`.

        Returns
        -------
        FrequentistResult
            With ``coefs`` (Estimate, SE, 2.5_ci, 97.5_ci, DF, T-stat, P-val; Satterthwaite DF),
            ``ranef_var``, ``ranef_corr``, ``ranef`` (BLUPs), ``fixef``, ``logLike``, ``AIC``, ``BIC``.
        """
        self.frequentist = fit_frequentist(self._design, REML=REML)
        return self.frequentist

    def compare_group_estimates(self, factor: str | None = None, prob: float = 0.95, REML: bool = True) -> pd.DataFrame:
        """Per-group coefficients under no, partial (frequentist and Bayesian) and complete pooling.

        One tidy row per (level, term); see :func:`bayeslmm.pooling.compare_group_estimates`.
        """
        from bayeslmm.pooling import compare_group_estimates  # pooling imports Lmer

        return compare_group_estimates(self, factor=factor, prob=prob, REML=REML)

    def compare_fixed_effects(self, prob: float = 0.95, REML: bool = True) -> pd.DataFrame:
        """Fixed effects of the (RE)ML fit next to their posterior summaries.

        See :func:`bayeslmm.pooling.compare_fixed_effects`.
        """
        from bayeslmm.pooling import compare_fixed_effects

        return compare_fixed_effects(self, prob=prob, REML=REML)

    def compare_variance_components(
        self, prob: float = 0.95, REML: bool = True, n_boot: int = 0, random_seed: int | None = None
    ) -> pd.DataFrame:
        """Random-effect SDs and correlations: (RE)ML estimate next to the posterior median and interval.

        ``n_boot > 0`` adds a parametric-bootstrap interval for the (RE)ML estimates; see
        :func:`bayeslmm.pooling.compare_variance_components`.
        """
        from bayeslmm.pooling import compare_variance_components

        return compare_variance_components(self, prob=prob, REML=REML, n_boot=n_boot, random_seed=random_seed)

    def _kept_variables(self) -> list[str]:
        names = ["beta"] + list(self.family.aux)
        for block in self._design.blocks:
            v = var_names(block)
            names += [v["sd"], v["ranef"]] + ([v["corr"]] if block.n_terms > 1 else [])
        return names

    def _hyperparameters(self) -> list[str]:
        """Variables whose convergence is checked: fixed effects, SDs, correlations, family parameters."""
        return [name for name in self._kept_variables() if not name.startswith("ranef_")]

    def _add_log_likelihood(self) -> None:
        """Store the pointwise log-likelihood (chain, draw, obs) as the ``log_likelihood`` group."""
        posterior = self.posterior
        values = results.pointwise_log_likelihood(self._design, posterior, self.family)
        log_lik = xr.Dataset({"y": (("chain", "draw", "obs"), values)})
        self.idata["log_likelihood"] = xr.DataTree(log_lik.assign_coords(chain=posterior.chain, draw=posterior.draw))

    def _clear_cache(self) -> None:
        for name in ("coefs", "fixef", "ranef", "ranef_var", "ranef_corr", "data"):
            self.__dict__.pop(name, None)

    # ----------------------------------------------------------------------------------- results
    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.idata is not None

    @property
    def posterior(self) -> xr.Dataset:
        """Posterior draws (dims chain, draw, ...); see :mod:`bayeslmm.model` for the names."""
        self._require_fit("posterior")
        return self.idata["posterior"].to_dataset()

    @cached_property
    def coefs(self) -> pd.DataFrame:
        """Fixed effects: ``Estimate`` (posterior mean), 95% interval, ``SE`` (posterior SD), ``pd``, R-hat, ESS."""
        self._require_fit("coefs")
        return results.coefs_table(self._design, self.posterior)

    def coef_summary(self, prob: float = 0.95, hdi: bool = False) -> pd.DataFrame:
        """:attr:`coefs` with another interval probability or a highest-density interval."""
        self._require_fit("coef_summary")
        return results.coefs_table(self._design, self.posterior, prob=prob, hdi=hdi)

    @cached_property
    def fixef(self) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Per-group coefficients, fixed plus random (lme4's ``coef()``): posterior means, levels x terms."""
        self._require_fit("fixef")
        return results.wide_by_factor(self._design, self.posterior, total=True)

    @cached_property
    def ranef(self) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Per-group deviations from the fixed effects (lme4's ``ranef()``): posterior means, levels x terms."""
        self._require_fit("ranef")
        return results.wide_by_factor(self._design, self.posterior, total=False)

    def ranef_summary(self, total: bool = False, prob: float = 0.95, hdi: bool = False) -> pd.DataFrame:
        """Tidy table of every group effect with posterior mean, SD, interval and pd.

        Parameters
        ----------
        total : bool
            False for deviations (``ranef``), True for group coefficients (``fixef``).
        """
        self._require_fit("ranef_summary")
        return results.ranef_long(self._design, self.posterior, total=total, prob=prob, hdi=hdi)

    @cached_property
    def ranef_var(self) -> pd.DataFrame:
        """Variance components: ``Name``, ``Var``, ``Std`` (posterior medians) and a 95% interval of ``Std``."""
        self._require_fit("ranef_var")
        return results.ranef_var_table(self._design, self.posterior)

    @cached_property
    def ranef_corr(self) -> pd.DataFrame | None:
        """Correlations of group effects: ``IV1``, ``IV2``, ``Corr`` (posterior median), interval; None if none."""
        self._require_fit("ranef_corr")
        return results.ranef_corr_table(self._design, self.posterior)

    @cached_property
    def data(self) -> pd.DataFrame:
        """A copy of the rows used, with ``fits`` (posterior mean linear predictor) and ``residuals``."""
        self._require_fit("data")
        frame = self._design.data.copy()
        frame["fits"] = self.family.inverse_link(results.posterior_mean_fit(self._design, self.posterior))
        frame["residuals"] = self._design.y - frame["fits"].to_numpy()
        return frame

    def posterior_predictive(self, n_draws: int | None = 500, random_seed: int | None = None) -> np.ndarray:
        """Replicated responses from the posterior predictive distribution, shape (n_draws, n_obs)."""
        self._require_fit("posterior_predictive")
        return results.posterior_predictive(self._design, self.posterior, self.family, n_draws, random_seed)

    @property
    def design_matrix(self) -> pd.DataFrame:
        """Fixed-effects model matrix, one column per term, indexed as the data."""
        return pd.DataFrame(self._design.X, columns=list(self._design.fixed_terms), index=self._design.data.index)

    @property
    def grps(self) -> dict[str, int]:
        """Number of levels of each grouping factor."""
        return {factor: len(levels) for factor, levels in self._design.factors.items()}

    @property
    def levels(self) -> dict[str, pd.Index]:
        """Levels of each grouping factor."""
        return dict(self._design.factors)

    @property
    def priors(self) -> pd.DataFrame:
        """The priors used, one row per parameter, in readable form."""
        return pd.DataFrame(self._priors.table(), columns=["parameter", "prior"]).set_index("parameter")

    @property
    def design(self) -> Design:
        """The evaluated design (response, model matrices, group indices)."""
        return self._design

    # ----------------------------------------------------------------------------------- comparison
    def loo(self, reloo: bool = False, **options: Any):
        """PSIS-LOO cross-validation (ArviZ); ``reloo=True`` refits exactly where Pareto k > 0.7.

        See :func:`bayeslmm.comparison.loo`.
        """
        self._require_fit("loo")
        return comparison.loo(self, reloo=reloo, **options)

    def waic(self):
        """WAIC; PSIS-LOO (:meth:`loo`) is preferred. See :func:`bayeslmm.comparison.waic`."""
        self._require_fit("waic")
        return comparison.waic(self)

    def r2(self, prob: float = 0.95) -> pd.DataFrame:
        """Bayesian R-squared, marginal and conditional; see :func:`bayeslmm.comparison.r2`."""
        self._require_fit("r2")
        return comparison.r2(self, prob=prob)

    def kfold(self, k: int = 10, **options: Any):
        """K-fold cross-validation, compiling the model once; see :func:`bayeslmm.comparison.kfold`."""
        self._require_fit("kfold")
        return comparison.kfold(self, k, **options)

    # ----------------------------------------------------------------------------------- plots
    def plot_group_fits(self, x: str | None = None, group: str | None = None, **options: Any):
        """One facet per group: data, posterior mean and credible bands; see :func:`bayeslmm.plots.plot_group_fits`."""
        from bayeslmm import plots  # matplotlib is imported only when a plot is drawn

        return plots.plot_group_fits(self, x, group, **options)

    def plot_shrinkage(self, terms: str | list[str] | None = None, group: str | None = None, **options: Any):
        """No-pooling -> partial-pooling arrows per group; see :func:`bayeslmm.plots.plot_shrinkage`."""
        from bayeslmm import plots

        return plots.plot_shrinkage(self, terms, group, **options)

    def plot_caterpillar(self, group: str | None = None, terms: str | list[str] | None = None, **options: Any):
        """Sorted group effects with intervals, one panel per term; see :func:`bayeslmm.plots.plot_caterpillar`."""
        from bayeslmm import plots

        return plots.plot_caterpillar(self, group, terms, **options)

    def plot_coefs(self, terms: str | list[str] | None = None, **options: Any):
        """Fixed-effect posteriors, one row per term; see :func:`bayeslmm.plots.plot_coefs`."""
        from bayeslmm import plots

        return plots.plot_coefs(self, terms, **options)

    def plot_variance_components(self, **options: Any):
        """Posterior densities of SDs and correlations; see :func:`bayeslmm.plots.plot_variance_components`."""
        from bayeslmm import plots

        return plots.plot_variance_components(self, **options)

    def plot_ppc(self, **options: Any):
        """Posterior predictive check; see :func:`bayeslmm.plots.plot_ppc`."""
        from bayeslmm import plots

        return plots.plot_ppc(self, **options)

    def plot_prior_posterior(self, params: str | list[str] | None = None, **options: Any):
        """Prior against posterior per hyperparameter; see :func:`bayeslmm.plots.plot_prior_posterior`."""
        from bayeslmm import plots

        return plots.plot_prior_posterior(self, params, **options)

    def summary(self) -> str:
        """R-like summary: formula, data, sampler, random effects, fixed effects, diagnostics."""
        self._require_fit("summary")
        return report.summary_text(self)

    def __repr__(self) -> str:
        return report.short_repr(self)

    def _repr_html_(self) -> str:
        """The summary as HTML tables, for Jupyter; a description and the priors before fitting."""
        return report.summary_html(self)

    # ----------------------------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Save the fitted model: posterior, diagnostics, data, formula, priors, sampler settings.

        :func:`bayeslmm.load` gives back a model whose results equal this one's, without sampling.

        Parameters
        ----------
        path : str or path-like
            Ending in ``.zarr`` (a Zarr directory) or ``.nc`` (one NetCDF-4 file; needs ``h5netcdf``
            or ``netCDF4`` installed).
        overwrite : bool
            Replace an existing bayeslmm result at ``path``; anything else there is never replaced.

        Returns
        -------
        pathlib.Path
            Where the result was written.

        Raises
        ------
        NotFittedError
            The model has not been fitted.
        FileExistsError
            ``path`` exists and ``overwrite`` is False, or it is not a bayeslmm result.

        See Also
        --------
        bayeslmm.load
        """
        from bayeslmm import storage

        return storage.save(self, path, overwrite=overwrite)

    def _require_fit(self, what: str) -> None:
        if self.idata is None:
            raise NotFittedError(f"{what} is not available before the model is fitted: call .fit() first")
