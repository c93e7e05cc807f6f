"""bayeslmm: Bayesian linear mixed models with lme4 formulas and pymer4-style results.

The pipeline, one module per stage: :mod:`~bayeslmm.formula` (lme4 syntax) ->
:mod:`~bayeslmm.design` (model matrices) -> :mod:`~bayeslmm.model` (PyMC model) ->
:mod:`~bayeslmm.inference` (NUTS and diagnostics) -> :mod:`~bayeslmm.results` (tables).
"""

from bayeslmm.comparison import compare, lrt
from bayeslmm.datasets import list_datasets, load_dataset, simulate_simpson
from bayeslmm.errors import (
    BayeslmmError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    NotFittedError,
    ParetoKWarning,
    PriorError,
    ResultFileError,
    UnsupportedSyntaxError,
)
from bayeslmm.lmer import Lmer
from bayeslmm.pooling import Lm, Lm2
from bayeslmm.priors import Prior
from bayeslmm.storage import load

__version__ = "0.1.0"

__all__ = [
    "Lmer",
    "Lm",
    "Lm2",
    "Prior",
    "load",
    "lrt",
    "compare",
    "load_dataset",
    "list_datasets",
    "simulate_simpson",
    "BayeslmmError",
    "ConvergenceWarning",
    "DataError",
    "FormulaError",
    "NotFittedError",
    "ParetoKWarning",
    "PriorError",
    "ResultFileError",
    "UnsupportedSyntaxError",
]
