"""Results layer: the fitted-model base (:mod:`~bayeslmm.results.fitted`), posterior summaries
(:mod:`~bayeslmm.results.summaries`), the model at posterior draws (:mod:`~bayeslmm.results.posterior`),
frequentist tables (:mod:`~bayeslmm.results.frequentist`), printed reports (:mod:`~bayeslmm.results.report`)
and the saved-result format (:mod:`~bayeslmm.results.archive`).

The names of bayeslmm 0.1's ``bayeslmm.results`` module are importable from here.
"""

from bayeslmm.results.posterior import (
    linear_predictor,
    pointwise_log_likelihood,
    posterior_mean_fit,
    posterior_predictive,
)
from bayeslmm.results.summaries import (
    coefs_table,
    interval_columns,
    ranef_corr_table,
    ranef_long,
    ranef_var_table,
    stack_draws,
    summarize,
    wide_by_factor,
)

__all__ = [
    "summarize",
    "interval_columns",
    "coefs_table",
    "ranef_long",
    "wide_by_factor",
    "ranef_var_table",
    "ranef_corr_table",
    "linear_predictor",
    "stack_draws",
    "posterior_mean_fit",
    "pointwise_log_likelihood",
    "posterior_predictive",
]
