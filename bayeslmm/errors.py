"""Exceptions and warnings raised by bayeslmm.

Every error a user can trigger with bad input is one of these, raised before any sampling starts,
with a message that names the problem and says what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BayeslmmError",
    "FormulaError",
    "UnsupportedSyntaxError",
    "DataError",
    "PriorError",
    "NotFittedError",
    "ResultFileError",
    "ConvergenceWarning",
    "ParetoKWarning",
    "PriorSensitivityWarning",
]


class BayeslmmError(Exception):
    """Base class of every error bayeslmm raises on purpose."""


class FormulaError(BayeslmmError, ValueError):
    """The formula is malformed: unbalanced parentheses, no ``~``, an empty term, ..."""


class UnsupportedSyntaxError(FormulaError):
    """The formula is valid lme4 syntax that bayeslmm does not support (yet)."""


class DataError(BayeslmmError, ValueError):
    """The data cannot be used with the formula: unknown column, non-numeric response, ..."""


class PriorError(BayeslmmError, ValueError):
    """A user-supplied prior is malformed or names a parameter the model does not have."""


class NotFittedError(BayeslmmError, RuntimeError):
    """A result was requested from a model that has not been fitted yet."""


class ResultFileError(BayeslmmError, ValueError):
    """A path does not hold a bayeslmm result: wrong suffix, another kind of file, or a damaged one."""


class ConvergenceWarning(UserWarning):
    """The sampler reported divergences, high R-hat or low effective sample size."""


class ParetoKWarning(UserWarning):
    """PSIS-LOO is unreliable for some observations (Pareto k above 0.7): refit them or use K-fold."""


class PriorSensitivityWarning(UserWarning):
    """A parameter the data say little about, so that its posterior follows its prior (e.g. the SD of a
    grouping factor with fewer than five levels): choose that prior deliberately."""
