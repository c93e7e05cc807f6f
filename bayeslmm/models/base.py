"""The models layer's base: what Lmer and Lm add to the fitted-model base (comparison and plots)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.results import posterior as posterior_eval
from bayeslmm.results import prediction, summaries
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
        """A copy of the rows used, with ``fits``, ``residuals`` and ``pearson_residuals``.

        ``fits`` is the posterior mean of the expected response (a probability for binomial models, a
        mean count for counts), ``residuals`` the observed response (a proportion for binomial models)
        minus ``fits``, and ``pearson_residuals`` the posterior mean of ``(y - E y) / sd(y)`` (brms's
        ``residuals(type = "pearson")``; the residuals divided by ``sigma`` for gaussian models).
        """
        self._require_fit("data")
        pearson = posterior_eval.posterior_mean_pearson(self.design, self.posterior, self.family)
        return summaries.fitted_data(self.design, self.fits, pearson)

    @property
    def fits(self) -> np.ndarray:
        """Posterior mean of the expected response of each row used, shape (n,) (pymer4's ``fits``, as in :attr:`data`)."""
        self._require_fit("fits")
        return posterior_eval.posterior_mean_response(self.design, self.posterior, self.family)

    @property
    def residuals(self) -> np.ndarray:
        """The observed response (a proportion for binomial models) minus :attr:`fits`, shape (n,) (pymer4's ``residuals``)."""
        self._require_fit("residuals")
        return summaries.observed_response(self.design) - self.fits

    def predict(
        self,
        data: Any = None,
        use_rfx: bool = True,
        pred_type: str = "response",
        unseen: str = "population",
        prob: float = 0.95,
        predictive: bool = False,
        return_draws: bool = False,
        n_draws: int | None = None,
        random_seed: int | None = None,
        offset: Any = None,
    ) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
        """Posterior predictions for new rows: the expected response with its credible interval.

        Parameters
        ----------
        data : pandas.DataFrame or polars.DataFrame, optional
            The rows to predict, with every predictor (and, with ``use_rfx``, the grouping columns);
            the fitted rows when None. Categorical predictors may lack levels; a level the model was not
            fitted to is a :class:`~bayeslmm.errors.DataError`. Never modified.
        use_rfx : bool
            Include the group effects (lme4's ``re.form = NULL``); False predicts the population level
            (``re.form = NA``).
        pred_type : {"response", "link"}
            The expected response ``g^{-1}(eta)`` or the linear predictor ``eta``.
        unseen : {"population", "sample", "error"}
            What a group level the model has not seen gets: no group effect (lme4's
            ``allow.new.levels = TRUE``), an effect drawn from the fitted random-effects distribution
            for every posterior draw, or an error. The ``random_effects`` column says what each row got.
        prob : float
            Probability of the intervals.
        predictive : bool
            Add the posterior predictive interval of a new observation (``<lo>_pi``, ``<hi>_pi``), which
            includes the observation noise.
        return_draws : bool
            Also return the draws behind the table.
        n_draws : int, optional
            Use this many evenly thinned posterior draws (all by default; memory: draws x rows).
        random_seed : int, optional
            For ``unseen="sample"`` and the predictive draws.
        offset : array-like or str, optional
            The offset of the new rows, for a model fitted with ``offset=`` (a column name or one value
            per row).

        Returns
        -------
        pandas.DataFrame or (pandas.DataFrame, ndarray)
            Indexed as ``data``: ``Estimate`` (posterior mean), ``<lo>_ci``, ``<hi>_ci``, ``SE``
            (posterior SD), optionally ``<lo>_pi``, ``<hi>_pi``, and ``random_effects``; with
            ``return_draws`` also the draws, shape (draws, rows) (of new observations when
            ``predictive``). :meth:`fit_frequentist` ``().predict`` gives lme4's numbers.
        """
        self._require_fit("predict")
        if predictive and data is not None and self.design.trials is not None and self.family.name == "binomial":
            raise ValueError(
                "a predictive interval for new rows of a binomial model needs their numbers of trials, which "
                "predict does not take; predict the probabilities (predictive=False) and scale them by the trials"
            )
        rows = prediction.new_rows(self.design, data, use_rfx, unseen, offset)
        table, draws = prediction.predict_table(
            rows, self.posterior, self.family, pred_type, prob, predictive, n_draws, random_seed
        )
        return (table, draws) if return_draws else table

    def simulate(self, n: int, use_rfx: bool = True, random_seed: int | None = None) -> pd.DataFrame:
        """``n`` simulated data sets of the fitted rows from the posterior predictive distribution.

        Each data set uses one posterior draw (evenly spread over the draws). With ``use_rfx`` the
        groups keep their fitted effects (lme4's ``simulate(use.u = TRUE)``, pymer4's default); without,
        every group gets new effects drawn from the fitted distribution (``use.u = FALSE``).

        Returns
        -------
        pandas.DataFrame, shape (rows, n)
            Columns ``sim_1`` ... ``sim_n``, indexed as :attr:`data`.
        """
        self._require_fit("simulate")
        rows = prediction.new_rows(self.design, None, use_rfx)
        return prediction.simulate_table(rows, self.posterior, self.family, n, random_seed)

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

    def plot_summary(self, **options: Any):
        """pymer4's name for :meth:`plot_coefs`: the fixed-effect posteriors, one row per term."""
        return self.plot_coefs(**options)

    def plot_ppc(self, **options: Any):
        """Posterior predictive check; see :func:`bayeslmm.plots.plot_ppc`."""
        from bayeslmm import plots

        return plots.plot_ppc(self, **options)

    def plot_prior_posterior(self, params: str | list[str] | None = None, **options: Any):
        """Prior against posterior per hyperparameter; see :func:`bayeslmm.plots.plot_prior_posterior`."""
        from bayeslmm import plots

        return plots.plot_prior_posterior(self, params, **options)
