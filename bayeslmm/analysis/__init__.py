"""Analyses of fitted models: comparison by cross-validation (:mod:`~bayeslmm.analysis.comparison`) and the
pooling tables (:mod:`~bayeslmm.analysis.pooling`)."""
