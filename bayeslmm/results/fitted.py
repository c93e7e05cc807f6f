"""The fitted-model base shared by ``Lmer``, ``Lm`` and ``Lm2``.

:class:`FittedModel` owns what every model does the same way: the fit loop (argument checks before
anything runs, sampling, the pointwise log-likelihood, diagnostics and their warnings, the printed
summary), the caches of derived tables and of the frequentist fit, and the public accessors that the
analyses, plots and storage read (``design``, ``family``, ``model_priors``, ``prior_overrides``,
``posterior``, :meth:`log_likelihood`). Subclasses say how to sample (:meth:`FittedModel._sample`),
which parameters to diagnose, and how to summarise.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.engines.diagnostics import check_diagnostics
from bayeslmm.engines.posterior_names import dataset
from bayeslmm.engines.sampling import (
    SamplerSettings,
    check_fit_arguments,
    resolve_progressbar,
)
from bayeslmm.errors import ConvergenceWarning, NotFittedError
from bayeslmm.results import archive
from bayeslmm.results.report import Summary, SummaryParts, layout_html
from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family
from bayeslmm.spec.priors import ModelPriors

__all__ = ["FittedModel", "LOG_LIKELIHOOD_MAX_VALUES"]

#: Above this many values (draws x observations, 8 bytes each: 400 MB) the pointwise log-likelihood is
#: not stored at fit time but computed when :meth:`FittedModel.log_likelihood` is first called.
LOG_LIKELIHOOD_MAX_VALUES = 50_000_000


class FittedModel:
    """Base of the user-facing models: the fit loop, caches and accessors.

    Attributes
    ----------
    formula : str
        As the user wrote it.
    family : Family
    idata : xarray.DataTree or None
        After :meth:`fit`: ``posterior``, ``sample_stats``, ``observed_data``, ``log_likelihood``.
    sampler : SamplerSettings or None
        How the posterior was obtained.
    warnings : list of str
        The diagnostics messages of the last fit.
    """

    #: Tables cached after a fit (cleared by the next fit).
    _cached: ClassVar[tuple[str, ...]] = ("coefs", "data")
    #: True for models with one regression per group (``Lm2``), whose ``beta`` has a group dimension.
    per_group: ClassVar[bool] = False

    def __init__(self, formula: str, design: Design, family: Family, priors: ModelPriors, overrides: dict | None) -> None:
        self.formula = formula
        self.family = family
        self._design = design
        self._priors = priors
        self._overrides = dict(overrides or {})
        self.idata: xr.DataTree | None = None
        self.sampler: SamplerSettings | None = None
        self.warnings: list[str] = []
        self._resources: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- accessors
    @property
    def design(self) -> Design:
        """The evaluated design (response, model matrices, group indices)."""
        return self._design

    @property
    def model_priors(self) -> ModelPriors:
        """The resolved priors (:class:`~bayeslmm.spec.priors.ModelPriors`); :attr:`priors` is the readable table."""
        return self._priors

    @property
    def prior_overrides(self) -> dict:
        """The ``priors=`` argument as given (a copy), from which the model can be rebuilt."""
        return dict(self._overrides)

    @property
    def priors(self) -> pd.DataFrame:
        """The priors used, one row per parameter, in readable form."""
        return pd.DataFrame(self._priors.table(), columns=["parameter", "prior"]).set_index("parameter")

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.idata is not None

    @property
    def posterior(self) -> xr.Dataset:
        """Posterior draws (dims chain, draw, ...); see :mod:`bayeslmm.engines.posterior_names`."""
        self._require_fit("posterior")
        return self.idata["posterior"].to_dataset()

    def restore(self, idata: xr.DataTree, sampler: SamplerSettings, warnings_: list[str], n_dropped: int = 0) -> None:
        """Attach a saved posterior (used by :func:`bayeslmm.load`): the model is then fitted, without sampling.

        ``n_dropped`` restores the count of rows the original data lost to missing values (the saved
        data holds only the rows used).
        """
        self._clear_cache()
        if n_dropped:
            self._design = dataclasses.replace(self._design, n_dropped=n_dropped)
        self.idata, self.sampler, self.warnings = idata, sampler, list(warnings_)

    # ----------------------------------------------------------------------------------- fitting
    def fit(
        self,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        random_seed: int | None = None,
        summarize: bool = False,
        progressbar: bool | None = None,
        **sampler_options: Any,
    ) -> pd.DataFrame | None:
        """Sample the posterior.

        Parameters
        ----------
        draws, tune, chains : int
            Kept draws per chain, tuning steps per chain, number of chains.
        random_seed : int, optional
            The same seed gives the same draws.
        summarize : bool
            Print :meth:`summary` afterwards (and return None, so a notebook cell shows it once).
        progressbar : bool, optional
            None (default): a progress bar in a Jupyter kernel or a terminal, none under CI or when
            output goes to a file (see :func:`bayeslmm.engines.sampling.auto_progressbar`).
        **sampler_options
            ``target_accept``, ``maxdepth``, ``cores``, ``nuts_sampler``, ``method``; anything else is
            a TypeError before sampling.

        Returns
        -------
        pandas.DataFrame or None
            :attr:`coefs`, as pymer4's ``fit`` returns; None with ``summarize=True``.
        """
        return self._fit_loop(draws, tune, chains, random_seed, summarize, progressbar, {}, sampler_options)

    def _fit_loop(
        self, draws, tune, chains, random_seed, summarize, progressbar, engine_options: dict, sampler_options: dict
    ) -> pd.DataFrame | None:
        """The fit, shared by every model: check, sample, log-likelihood, diagnose, report.

        ``engine_options`` are the model's own ``fit`` arguments (``Lmer``'s ``marginalize``), passed
        to :meth:`_sample` with the checked ``sampler_options``.
        """
        seed = check_fit_arguments(draws, tune, chains, random_seed, sampler_options)
        self._clear_cache()
        progress = resolve_progressbar(progressbar)
        self.idata, self.sampler = self._sample(
            draws=draws, tune=tune, chains=chains, random_seed=seed, progressbar=progress,
            **engine_options, **sampler_options,
        )
        if draws * chains * self._design.n_obs <= LOG_LIKELIHOOD_MAX_VALUES:
            self.log_likelihood()  # larger ones are computed when first needed
        self.warnings = check_diagnostics(self.idata, self._diagnosed_variables())
        for message in self.warnings:
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
        if summarize:
            print(self.summary())
            return None
        return self.coefs

    def _sample(self, **settings: Any) -> tuple[xr.DataTree, SamplerSettings]:
        """Draw the posterior: (idata with posterior, sample_stats, observed_data; settings)."""
        raise NotImplementedError

    def _diagnosed_variables(self) -> list[str]:
        """Posterior variables whose convergence is checked."""
        raise NotImplementedError

    def _pointwise_log_likelihood(self, posterior: xr.Dataset) -> np.ndarray:
        """Log-likelihood of every observation under every draw, shape (chain, draw, n)."""
        raise NotImplementedError

    def log_likelihood(self) -> xr.DataArray:
        """Pointwise log-likelihood (chain, draw, obs), computed once and kept in ``idata``."""
        self._require_fit("log_likelihood")
        if "log_likelihood" not in self.idata.children or "y" not in self.idata["log_likelihood"].data_vars:
            posterior = self.posterior
            values = self._pointwise_log_likelihood(posterior)
            coords = {"chain": posterior.indexes["chain"], "draw": posterior.indexes["draw"], "obs": np.arange(values.shape[-1])}
            self.idata["log_likelihood"] = xr.DataTree(dataset({"y": (("chain", "draw", "obs"), values)}, coords))
        return self.idata["log_likelihood"]["y"]

    def variant(self, design: Design, priors: ModelPriors, label: str) -> "FittedModel":
        """An unfitted copy of this model on another design of the same rows (e.g. without a term).

        Same class, family and prior overrides; ``design`` and ``priors`` replace the model's, and
        ``label`` its formula in printed output. Fit it with :meth:`fit` (as the analyses that compare a
        model with a reduced one do, with this fit's sampler settings).
        """
        other = copy.copy(self)
        other.__dict__ = {k: v for k, v in self.__dict__.items() if k not in self._cached}
        other._design, other._priors, other.formula = design, priors, label
        other.idata, other.sampler, other.warnings, other._resources = None, None, [], {}
        return other

    def resource(self, name: str, make):
        """A helper object built once per model and kept with it (e.g. the refitter of cross-validation).

        Resources depend only on the model (design, family, priors), not on its draws, so a new fit
        keeps them; ``make()`` builds one on first use.
        """
        if name not in self._resources:
            self._resources[name] = make()
        return self._resources[name]

    def _clear_cache(self) -> None:
        for name in self._cached:
            self.__dict__.pop(name, None)

    # ----------------------------------------------------------------------------------- printing
    def _summary_parts(self) -> SummaryParts:
        raise NotImplementedError

    def summary(self) -> Summary:
        """The summary: prints as text, shows as HTML tables in Jupyter (``str()`` gives the text)."""
        self._require_fit("summary")
        return Summary(self._summary_parts())

    def _repr_html_(self) -> str:
        """The summary as HTML tables, for Jupyter; before fitting, the description and the priors."""
        return layout_html(self._summary_parts())

    def _fit_state(self) -> str:
        if not self.fitted:
            return "not fitted"
        state = f"fitted: {self.sampler.chains}x{self.sampler.draws} draws"
        return state + (f", {len(self.warnings)} warning(s)" if self.warnings else "")

    # ----------------------------------------------------------------------------------- saving
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Save the fitted model: posterior, diagnostics, data, formula, priors, sampler settings.

        :func:`bayeslmm.load` gives back a model whose results equal this one's, without sampling.

        Parameters
        ----------
        path : str or path-like
            Ending in ``.zarr`` (a Zarr directory) or ``.nc`` (one NetCDF-4 file; needs ``h5netcdf``).
        overwrite : bool
            Replace an existing bayeslmm result at ``path``; anything else there is never replaced.

        Returns
        -------
        pathlib.Path

        Raises
        ------
        NotFittedError
            The model has not been fitted.
        FileExistsError
            ``path`` exists and ``overwrite`` is False, or it is not a bayeslmm result.
        """
        return archive.save(self, path, overwrite=overwrite)

    @property
    def init_arguments(self) -> dict:
        """Constructor arguments beyond formula, data, family and priors, with which the model is rebuilt."""
        return {}

    def _require_fit(self, what: str) -> None:
        if self.idata is None:
            raise NotFittedError(f"{what} is not available before the model is fitted: call .fit() first")
