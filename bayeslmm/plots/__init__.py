"""Plots: the pictures that make partial pooling and posterior uncertainty visible.

Every function takes a fitted :class:`~bayeslmm.Lmer` (or, for :func:`plot_compare`, a comparison
table), draws with matplotlib and returns the :class:`~matplotlib.figure.Figure`. Single-panel plots
accept ``ax=`` to draw into an existing Axes; faceted plots accept ``axes=`` (a sequence with at least
one Axes per panel). Everything is computed from the posterior draws with NumPy: nothing is compiled
or resampled, so the plots are quick even for large models.

=================================  ===============================================================
function                           picture
=================================  ===============================================================
:func:`plot_group_fits`            one facet per group: data, posterior mean and nested credible
                                   bands of the group's expected response; optional no-pooling and
                                   complete-pooling overlays
:func:`plot_shrinkage`             no-pooling estimate -> partial-pooling estimate of every group,
                                   2-D (two terms) or 1-D (one term)
:func:`plot_caterpillar`           sorted group effects with intervals, one panel per term
:func:`plot_coefs`                 fixed-effect posteriors (half-eye or intervals), optionally with
                                   the REML estimate and confidence interval beside each
:func:`plot_variance_components`   posterior densities of SDs and correlations, REML estimate marked
:func:`plot_ppc`                   observed distribution against replicated data sets
:func:`plot_rootogram`             counts: observed frequencies hanging from the posterior
                                   predictive ones (square-root scale)
:func:`plot_ppc_groups`            discrete responses: observed proportion (or mean count) of
                                   each group against its replicated interval
:func:`plot_compare`               elpd (LOO) with standard errors for several models
:func:`plot_prior_posterior`       prior against posterior for any hyperparameter
:func:`plot_power`                 power and assurance by number of groups (:func:`bayeslmm.power`)
=================================  ===============================================================

One module per family of figures; :mod:`~bayeslmm.plots.style` holds the colours (the Okabe-Ito
palette, :data:`OKABE_ITO`, the same meaning in the same colour everywhere: :data:`COLORS`) and the
layout. Large models stay readable: beyond ``max_groups`` groups a plot shows an evenly spaced subset
(ranked by the estimate) or drops the labels, and says so in a note under the figure.
"""

from bayeslmm.plots.caterpillar import plot_caterpillar
from bayeslmm.plots.coefficients import plot_coefs
from bayeslmm.plots.discrete import plot_ppc_groups, plot_rootogram
from bayeslmm.plots.comparison import plot_compare
from bayeslmm.plots.group_fits import plot_group_fits
from bayeslmm.plots.power import plot_power
from bayeslmm.plots.ppc import plot_ppc
from bayeslmm.plots.priors import plot_prior_posterior
from bayeslmm.plots.shrinkage import plot_shrinkage
from bayeslmm.plots.style import COLORS, OKABE_ITO
from bayeslmm.plots.variance import plot_variance_components

__all__ = [
    "OKABE_ITO",
    "COLORS",
    "plot_group_fits",
    "plot_shrinkage",
    "plot_caterpillar",
    "plot_coefs",
    "plot_variance_components",
    "plot_ppc",
    "plot_rootogram",
    "plot_ppc_groups",
    "plot_compare",
    "plot_prior_posterior",
    "plot_power",
]
