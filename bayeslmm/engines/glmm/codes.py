"""Integer codes shared by the GLMM sampler's kernels and the code that packs their arrays.

They live apart from :mod:`bayeslmm.engines.glmm.kernels` so that packing a model (and deciding
whether the sampler supports it) does not import numba: numba is loaded when a kernel first runs.

The kernels compile these values in, and numba's disk cache watches only the kernels' own source
file: after changing a value here, touch ``kernels.py`` (or clear the cache) so that they recompile.
"""

from bayeslmm.engines.collapsed.codes import MODE_DRAW, MODE_GRAD, MODE_LOGP

__all__ = ["LOGIT", "PROBIT", "CLOGLOG", "POISSON", "NEGBIN", "GAUSSIAN", "F_NORMAL", "F_STUDENT_T", "F_CAUCHY",
           "MODE_LOGP", "MODE_GRAD", "MODE_DRAW"]

#: Families and links (``meta[3]``). The negative binomial's auxiliary parameter is its dispersion,
#: the gaussian's its residual SD ``sigma``.
LOGIT, PROBIT, CLOGLOG, POISSON, NEGBIN, GAUSSIAN = range(6)
#: Fixed-effect prior kinds (first column of the rows of ``fixed_par``: kind, a, b, c).
F_NORMAL, F_STUDENT_T, F_CAUCHY = range(3)
