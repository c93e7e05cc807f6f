"""Analyses of fitted models: comparison by cross-validation (:mod:`~bayeslmm.analysis.comparison`), the
pooling tables (:mod:`~bayeslmm.analysis.pooling`), power analysis by simulation
(:mod:`~bayeslmm.analysis.power`) and simulation-based calibration (:mod:`~bayeslmm.analysis.calibration`)."""
