"""Engines: everything that fits a specified model.

:mod:`~bayeslmm.engines.collapsed` (the exact collapsed sampler for Gaussian models),
:mod:`~bayeslmm.engines.glmm` (exact NUTS for binomial, Poisson and negative binomial mixed models),
:mod:`~bayeslmm.engines.pymc_model` (the full PyMC model and NUTS), :mod:`~bayeslmm.engines.regression`
(exact Bayesian linear regression for ``Lm`` and ``Lm2``), :mod:`~bayeslmm.engines.reml` (lme4's REML/ML),
:mod:`~bayeslmm.engines.least_squares` (no- and complete-pooling references), with the shared pieces:
:mod:`~bayeslmm.engines.sampling` (settings and argument checks), :mod:`~bayeslmm.engines.diagnostics`,
:mod:`~bayeslmm.engines.progress`, :mod:`~bayeslmm.engines.nutpie_bridge`,
:mod:`~bayeslmm.engines.compiled` and :mod:`~bayeslmm.engines.native` (the kernels, compiled at
installation by numba and linked into a native library that fits load without numba),
:mod:`~bayeslmm.engines.numerical`, and :mod:`~bayeslmm.engines.executor` (many fits at once: serially,
in local processes or on a Dask cluster).
"""
