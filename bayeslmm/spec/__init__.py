"""Specification layer: what the model is, independent of how it is fitted.

:mod:`~bayeslmm.spec.formula` (lme4 syntax), :mod:`~bayeslmm.spec.design` (data checks and model
matrices), :mod:`~bayeslmm.spec.random_effects` (X, Z, the covariance layout), :mod:`~bayeslmm.spec.families`
(likelihoods and links), :mod:`~bayeslmm.spec.priors` (defaults and overrides),
:mod:`~bayeslmm.spec.simulate` (responses from known parameters, designs with more groups) and
:mod:`~bayeslmm.spec.specification` (a model as plain data, for worker processes).
"""
