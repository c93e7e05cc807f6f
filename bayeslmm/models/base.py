"""The models layer's base: what Lmer and Lm add to the fitted-model base (comparison and plots)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.results import posterior as posterior_eval
from bayeslmm.results import summaries
from bayeslmm.results.fitted import FittedModel

__all__ = ["Model"]


class Model(FittedModel):
    """A fitted model of one response on a design (``Lmer``, ``Lm``): fixed-effect tables, fits, model
    comparison (LOO, WAIC, R-squared, K-fold) and the plots of its coefficients."""

    # ----------------------------------------------------------------------------------- results
    @cached_property
    def coefs(self) -> pd.DataFrame:
        """Fixed effects: ``Estimate`` (posterior mean), 95% interval, ``SE`` (posterior SD), ``pd``, R-hat, ESS."""
        self._require_fit("coefs")
        return summaries.coefs_table(self.design, self.posterior)

    def coef_summary(self, prob: float = 0.95, hdi: bool = False) -> pd.DataFrame:
        """:attr:`coefs` with another interval probability or a highest-density interval."""
        self._require_fit("coef_summary")
        return summaries.coefs_table(self.design, self.posterior, prob=prob, hdi=hdi)

    @cached_property
    def data(self) -> pd.DataFrame:
        """A copy of the rows used, with ``fits`` and ``residuals``.

        ``fits`` is the posterior mean of the expected response (a probability for binomial models, a
        mean count for counts), ``residuals`` the observed response (a proportion for binomial models)
        minus ``fits``.
        """
        self._require_fit("data")
        frame = self.design.data.copy()
        fits = posterior_eval.posterior_mean_response(self.design, self.posterior, self.family)
        observed = self.design.y if self.design.trials is None else self.design.y / self.design.trials
        fits_name, residuals_name = _free_names(frame, ("fits", "residuals"))
        frame[fits_name] = fits
        frame[residuals_name] = observed - fits
        return frame

    def posterior_predictive(self, n_draws: int | None = 500, random_seed: int | None = None) -> np.ndarray:
        """Replicated responses from the posterior predictive distribution, shape (n_draws, n_obs)."""
        self._require_fit("posterior_predictive")
        return posterior_eval.posterior_predictive(self.design, self.posterior, self.family, n_draws, random_seed)

    @property
    def design_matrix(self) -> pd.DataFrame:
        """Fixed-effects model matrix, one column per term, indexed as the data."""
        return pd.DataFrame(self.design.X, columns=list(self.design.fixed_terms), index=self.design.data.index)

    @property
    def grps(self) -> dict[str, int]:
        """Number of levels of each grouping factor (empty for a model without groups)."""
        return {factor: len(levels) for factor, levels in self.design.factors.items()}

    @property
    def levels(self) -> dict[str, pd.Index]:
        """Levels of each grouping factor."""
        return dict(self.design.factors)

    def _pointwise_log_likelihood(self, posterior: xr.Dataset) -> np.ndarray:
        return posterior_eval.pointwise_log_likelihood(self.design, posterior, self.family)


    # ----------------------------------------------------------------------------------- comparison
    def loo(self, reloo: bool = False, **options: Any):
        """PSIS-LOO cross-validation (ArviZ); ``reloo=True`` refits exactly where Pareto k > 0.7.

        See :func:`bayeslmm.analysis.comparison.loo`.
        """
        self._require_fit("loo")
        from bayeslmm.analysis import (
            comparison,  # ArviZ (a second to import) only when asked for
        )

        return comparison.loo(self, reloo=reloo, **options)

    def waic(self):
        """WAIC; PSIS-LOO (:meth:`loo`) is preferred. See :func:`bayeslmm.analysis.comparison.waic`."""
        self._require_fit("waic")
        from bayeslmm.analysis import comparison

        return comparison.waic(self)

    def r2(self, prob: float = 0.95) -> pd.DataFrame:
        """Bayesian R-squared, marginal and conditional; see :func:`bayeslmm.analysis.comparison.r2`."""
        self._require_fit("r2")
        from bayeslmm.analysis import comparison

        return comparison.r2(self, prob=prob)

    def kfold(self, k: int = 10, **options: Any):
        """K-fold cross-validation, compiling the model once; see :func:`bayeslmm.analysis.comparison.kfold`."""
        self._require_fit("kfold")
        from bayeslmm.analysis import comparison

        return comparison.kfold(self, k, **options)

    # ----------------------------------------------------------------------------------- plots
    def plot_coefs(self, terms: str | list[str] | None = None, **options: Any):
        """Fixed-effect posteriors, one row per term; see :func:`bayeslmm.plots.plot_coefs`."""
        from bayeslmm import plots  # matplotlib is imported only when a plot is drawn

        return plots.plot_coefs(self, terms, **options)

    def plot_ppc(self, **options: Any):
        """Posterior predictive check; see :func:`bayeslmm.plots.plot_ppc`."""
        from bayeslmm import plots

        return plots.plot_ppc(self, **options)

    def plot_prior_posterior(self, params: str | list[str] | None = None, **options: Any):
        """Prior against posterior per hyperparameter; see :func:`bayeslmm.plots.plot_prior_posterior`."""
        from bayeslmm import plots

        return plots.plot_prior_posterior(self, params, **options)


def _free_names(frame: pd.DataFrame, names: tuple[str, ...]) -> list[str]:
    """``names`` for new columns of ``frame``; a name the user's data already has gets a ``_model`` suffix
    (with a warning), so that the user's own column is never overwritten."""
    import warnings

    out = []
    for name in names:
        if name in frame.columns:
            free = f"{name}_model"
            while free in frame.columns:
                free += "_"
            warnings.warn(
                f"the data has its own column {name!r}; the model's {name} are in {free!r}", UserWarning, stacklevel=4
            )
            name = free
        out.append(name)
    return out
