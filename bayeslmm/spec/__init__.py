"""Specification layer: what the model is, independent of how it is fitted.

:mod:`~bayeslmm.spec.formula` (lme4 syntax), :mod:`~bayeslmm.spec.design` (data checks and model
matrices), :mod:`~bayeslmm.spec.random_effects` (X, Z, the covariance layout), :mod:`~bayeslmm.spec.families`
(likelihoods and links) and :mod:`~bayeslmm.spec.priors` (defaults and overrides).
"""
