"""Integer codes shared by the collapsed sampler's kernels and the code that packs their arrays.

They live apart from :mod:`bayeslmm.engines.collapsed.kernels` so that packing a model (and deciding
whether the sampler supports it) does not import numba: numba is loaded when a kernel first runs.

The kernels compile these values in, and numba's disk cache watches only the kernels' own source
file: after changing a value here, touch ``kernels.py`` (or clear the cache) so that they recompile.
"""

#: Positive-prior kinds (first column of the rows of ``prior_par``: kind, a, b).
HALF_FLAT, HALF_NORMAL, HALF_STUDENT_T, HALF_CAUCHY, EXPONENTIAL, GAMMA, INV_GAMMA, LOG_NORMAL, WEIBULL = range(9)

#: What a kernel evaluates: the log density, with its gradient, or also the draws of the effects.
MODE_LOGP, MODE_GRAD, MODE_DRAW = 0, 1, 2
