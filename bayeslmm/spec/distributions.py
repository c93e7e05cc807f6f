"""Prior distributions: the :class:`Prior` a user writes, checked when it is made.

A :class:`Prior` names a PyMC distribution and its parameters. The distributions bayeslmm knows, with
their parameters and support, are listed in :data:`DISTRIBUTIONS`; a prior is validated at
construction (an unknown distribution or parameter, a missing one, a value that is not a finite number,
a scale that is not positive are errors naming the prior), and it can be sampled with SciPy
(:meth:`Prior.sample`) or turned into a PyMC distribution (:meth:`Prior.dist`) without the caller
knowing which library does the work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayeslmm.errors import PriorError

__all__ = ["Prior", "DISTRIBUTIONS", "POSITIVE_DISTRIBUTIONS", "format_number"]


@dataclass(frozen=True)
class _Spec:
    """What a distribution accepts.

    ``choices`` lists groups of alternative parameters (PyMC's ``sigma`` or ``tau``); each group
    is required unless it has a default. ``positive`` names the parameters that must be > 0.
    """

    choices: tuple[tuple[str, ...], ...]
    defaults: dict[str, float]
    positive: frozenset[str]
    support: str  # "real" or "positive"


def _spec(choices, defaults=None, positive=(), support="real") -> _Spec:
    return _Spec(tuple(tuple(c) for c in choices), dict(defaults or {}), frozenset(positive), support)


#: The distributions a :class:`Prior` may name, in PyMC's parametrisation.
DISTRIBUTIONS: dict[str, _Spec] = {
    "Normal": _spec([["mu"], ["sigma", "tau"]], {"mu": 0.0, "sigma": 1.0}, {"sigma", "tau"}),
    "StudentT": _spec([["nu"], ["mu"], ["sigma", "lam"]], {"mu": 0.0, "sigma": 1.0}, {"nu", "sigma", "lam"}),
    "Cauchy": _spec([["alpha"], ["beta"]], {}, {"beta"}),
    "Laplace": _spec([["mu"], ["b"]], {}, {"b"}),
    "Logistic": _spec([["mu"], ["s"]], {"mu": 0.0, "s": 1.0}, {"s"}),
    "Flat": _spec([]),
    "HalfNormal": _spec([["sigma", "tau"]], {"sigma": 1.0}, {"sigma", "tau"}, "positive"),
    "HalfStudentT": _spec([["nu"], ["sigma", "lam"]], {"sigma": 1.0}, {"nu", "sigma", "lam"}, "positive"),
    "HalfCauchy": _spec([["beta"]], {}, {"beta"}, "positive"),
    "Exponential": _spec([["lam", "scale"]], {}, {"lam", "scale"}, "positive"),
    "Gamma": _spec([["alpha", "mu"], ["beta", "sigma"]], {}, {"alpha", "beta", "mu", "sigma"}, "positive"),
    "InverseGamma": _spec([["alpha", "mu"], ["beta", "sigma"]], {}, {"alpha", "beta", "mu", "sigma"}, "positive"),
    "LogNormal": _spec([["mu"], ["sigma", "tau"]], {"mu": 0.0, "sigma": 1.0}, {"sigma", "tau"}, "positive"),
    "Weibull": _spec([["alpha"], ["beta"]], {}, {"alpha", "beta"}, "positive"),
    "HalfFlat": _spec([], support="positive"),
}
#: Distributions on the positive reals, allowed for standard deviations and other scale parameters.
POSITIVE_DISTRIBUTIONS = frozenset(name for name, spec in DISTRIBUTIONS.items() if spec.support == "positive")


@dataclass(frozen=True)
class Prior:
    """A prior distribution: the name of a PyMC distribution and its parameters.

    Parameters
    ----------
    distribution : str
        One of :data:`DISTRIBUTIONS`, e.g. ``"Normal"``, ``"StudentT"``, ``"HalfNormal"``.
    **params
        Its parameters as finite numbers, in PyMC's names, e.g. ``mu=0, sigma=10``.

    Raises
    ------
    PriorError
        An unknown distribution, an unknown, missing or doubly given parameter (``sigma`` and ``tau``),
        a value that is not a finite number, or a scale that is not positive.

    Examples
    --------
    >>> Prior("Normal", mu=0, sigma=10)
    Normal(mu=0, sigma=10)
    """

    distribution: str
    params: dict[str, Any] = field(default_factory=dict)

    def __init__(self, distribution: str, **params: Any) -> None:
        object.__setattr__(self, "distribution", distribution)
        object.__setattr__(self, "params", {key: _number(distribution, key, value) for key, value in params.items()})
        _validate(self.distribution, self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={format_number(value)}" for key, value in self.params.items())
        return f"{self.distribution}({args})"

    @property
    def support(self) -> str:
        """``"real"`` or ``"positive"``."""
        return DISTRIBUTIONS[self.distribution].support

    def resolved(self) -> dict[str, float]:
        """Parameters with PyMC's defaults filled in, e.g. ``Normal()`` -> ``{"mu": 0, "sigma": 1}``."""
        spec = DISTRIBUTIONS[self.distribution]
        out = dict(self.params)
        for group in spec.choices:
            if not any(name in out for name in group):
                out[group[0]] = spec.defaults[group[0]]
        return out

    def normal_moments(self) -> tuple[float, float] | None:
        """(mean, SD) of a Normal prior; None for any other distribution."""
        if self.distribution != "Normal":
            return None
        p = self.resolved()
        sd = p["sigma"] if "sigma" in p else 1.0 / math.sqrt(p["tau"])
        return float(p["mu"]), float(sd)

    def dist(self, shape: int | None = None):
        """Return an unnamed PyMC distribution (``pm.<distribution>.dist``)."""
        import pymc as pm

        return getattr(pm, self.distribution).dist(**self.params, shape=shape)

    def scipy(self):
        """The distribution as a frozen SciPy distribution (None for the improper flat priors)."""
        from scipy import stats

        d = self.distribution
        p = self.resolved()
        scale = lambda: p["sigma"] if "sigma" in p else 1.0 / math.sqrt(p["tau"])  # noqa: E731
        if d in ("Flat", "HalfFlat"):
            return None
        if d == "Normal":
            return stats.norm(p["mu"], scale())
        if d == "StudentT":
            return stats.t(p["nu"], p["mu"], p["sigma"] if "sigma" in p else 1.0 / math.sqrt(p["lam"]))
        if d == "Cauchy":
            return stats.cauchy(p["alpha"], p["beta"])
        if d == "Laplace":
            return stats.laplace(p["mu"], p["b"])
        if d == "Logistic":
            return stats.logistic(p["mu"], p["s"])
        if d == "HalfNormal":
            return stats.halfnorm(scale=scale())
        if d == "HalfStudentT":
            sigma = p["sigma"] if "sigma" in p else 1.0 / math.sqrt(p["lam"])
            return stats.halft(p["nu"], scale=sigma) if hasattr(stats, "halft") else _HalfT(p["nu"], sigma)
        if d == "HalfCauchy":
            return stats.halfcauchy(scale=p["beta"])
        if d == "Exponential":
            return stats.expon(scale=p["scale"] if "scale" in p else 1.0 / p["lam"])
        alpha, beta = _alpha_beta(d, p)
        if d == "Gamma":
            return stats.gamma(alpha, scale=1.0 / beta)
        if d == "InverseGamma":
            return stats.invgamma(alpha, scale=beta)
        if d == "LogNormal":
            return stats.lognorm(scale(), scale=math.exp(p["mu"]))
        if d == "Weibull":
            return stats.weibull_min(p["alpha"], scale=p["beta"])
        raise PriorError(f"no SciPy form for {self!r}")  # pragma: no cover - the catalogue is complete

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws from the prior, shape (n,).

        Raises
        ------
        PriorError
            For the improper flat priors, which cannot be drawn from.
        """
        frozen = self.scipy()
        if frozen is None:
            raise PriorError(f"{self!r} is improper: it has no draws")
        return np.asarray(frozen.rvs(n, random_state=rng), dtype=float)


class _HalfT:
    """|t_nu(0, sigma)|, for SciPy versions without ``stats.halft``."""

    def __init__(self, nu: float, sigma: float):
        from scipy import stats

        self._t = stats.t(nu, 0.0, sigma)

    def rvs(self, n, random_state=None):
        return np.abs(self._t.rvs(n, random_state=random_state))

    def pdf(self, x):
        return np.where(np.asarray(x) >= 0, 2 * self._t.pdf(x), 0.0)

    def logpdf(self, x):
        return np.where(np.asarray(x) >= 0, math.log(2) + self._t.logpdf(x), -np.inf)


def _alpha_beta(distribution: str, p: dict[str, float]) -> tuple[float, float]:
    """Shape and rate (Gamma) or scale (InverseGamma) from either parametrisation."""
    if "alpha" in p:
        return p["alpha"], p["beta"]
    mu, sigma = p["mu"], p["sigma"]
    if distribution == "Gamma":
        return mu**2 / sigma**2, mu / sigma**2
    alpha = mu**2 / sigma**2 + 2
    return alpha, mu * (alpha - 1)


def _number(distribution: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise PriorError(
            f"Prior({distribution!r}): parameter {key}={value!r} must be a number, got {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise PriorError(f"Prior({distribution!r}): parameter {key}={value!r} must be finite")
    return value


def _validate(distribution: str, params: dict[str, float]) -> None:
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise PriorError(
            f"{distribution!r} is not a PyMC distribution that bayeslmm supports as a prior; use one of "
            f"{', '.join(sorted(DISTRIBUTIONS))}"
        )
    spec = DISTRIBUTIONS[distribution]
    allowed = [name for group in spec.choices for name in group]
    unknown = [key for key in params if key not in allowed]
    if unknown:
        raise PriorError(
            f"Prior({distribution!r}): unknown parameter(s) {', '.join(unknown)}; "
            f"{distribution} takes {' and '.join('/'.join(g) for g in spec.choices) or 'no parameters'}"
        )
    for group in spec.choices:
        given = [name for name in group if name in params]
        if len(given) > 1:
            raise PriorError(f"Prior({distribution!r}): give one of {' or '.join(group)}, not both")
        if not given and group[0] not in spec.defaults:
            raise PriorError(f"Prior({distribution!r}): parameter {'/'.join(group)} is required")
    for key, value in params.items():
        if key in spec.positive and not value > 0:
            raise PriorError(f"Prior({distribution!r}): parameter {key} must be positive, got {format_number(value)}")




def format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)
