"""Response families: how the linear predictor ``eta`` meets the data.

A family owns everything that depends on the distribution of the response:

- its link (:class:`Link`: ``g``, ``g^{-1}`` and ``d mu / d eta``);
- its auxiliary parameters (Gaussian ``sigma``, the negative binomial's dispersion) and their default
  priors, scaled to the data;
- which responses it accepts, and how they are encoded (:meth:`Family.encode_response`);
- the pointwise log-likelihood and replicated data in NumPy (for LOO and posterior predictive checks,
  without compiling anything), and its PyMC likelihood (imported only when a PyMC model is built);
- the scale of its default fixed-effect priors and what the engines may assume (whether one group per
  row is allowed, whether REML applies).

Every consumer asks the family instead of assuming a normal likelihood, and refuses a family it
cannot handle with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, UnsupportedSyntaxError

if TYPE_CHECKING:
    from bayeslmm.spec.priors import Prior

__all__ = ["Link", "Family", "Gaussian", "get_family", "FAMILIES"]

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------- links
@dataclass(frozen=True)
class Link:
    """A link function ``eta = g(mu)``.

    Attributes
    ----------
    name : str
        ``"identity"``, ``"log"``, ``"logit"``, ``"probit"`` or ``"cloglog"``.
    """

    name: str

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        """``mu = g^{-1}(eta)``, elementwise."""
        eta = np.asarray(eta, dtype=float)
        if self.name == "identity":
            return eta
        if self.name == "log":
            return np.exp(eta)
        if self.name == "logit":
            from scipy.special import expit

            return expit(eta)
        if self.name == "probit":
            from scipy.special import ndtr

            return ndtr(eta)
        if self.name == "cloglog":
            return -np.expm1(-np.exp(eta))
        raise ValueError(f"unknown link {self.name!r}")

    def __call__(self, mu: np.ndarray) -> np.ndarray:
        """``eta = g(mu)``, elementwise."""
        mu = np.asarray(mu, dtype=float)
        if self.name == "identity":
            return mu
        if self.name == "log":
            return np.log(mu)
        if self.name == "logit":
            from scipy.special import logit

            return logit(mu)
        if self.name == "probit":
            from scipy.special import ndtri

            return ndtri(mu)
        if self.name == "cloglog":
            return np.log(-np.log1p(-mu))
        raise ValueError(f"unknown link {self.name!r}")


# ----------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """Base class of response families.

    Attributes
    ----------
    name : str
        The name users pass, as in R (``"gaussian"``).
    link : Link
    aux : tuple of str
        Names of the auxiliary parameters, e.g. ``("sigma",)``.
    allows_one_group_per_row : bool
        Whether a grouping factor may have as many levels as rows (observation-level random effects):
        false where a residual SD would be confounded with them.
    """

    name: str = ""
    link: Link = Link("identity")
    aux: tuple[str, ...] = ()
    allows_one_group_per_row: bool = True

    # -- data -------------------------------------------------------------------------------------
    def encode_response(self, raw: np.ndarray, frame: pd.DataFrame, name: str) -> np.ndarray:
        """Check the response and return it as the floats the likelihood takes, shape (n,).

        Raises
        ------
        DataError
            Values the family cannot model, naming the offending rows.
        """
        raise NotImplementedError

    def fixed_prior_scale(self, y: np.ndarray) -> float:
        """Scale of the default fixed-effect priors on the link scale (``sd(y)`` for gaussian)."""
        return 1.0

    def intercept_prior_location(self, y: np.ndarray) -> float:
        """Mean of the default intercept prior (at the predictors' means): 0 on the link scale."""
        return 0.0

    def default_aux_priors(self, y: np.ndarray) -> dict[str, "Prior"]:
        """Default prior of each auxiliary parameter, scaled to the response."""
        return {}

    # -- likelihood ----------------------------------------------------------------------------------
    def log_likelihood(
        self, y: np.ndarray, mu: np.ndarray, aux: dict[str, np.ndarray], trials: np.ndarray | None = None
    ) -> np.ndarray:
        """Pointwise log-likelihood, shape ``mu.shape`` (draws, n); ``aux`` values have shape (draws,)."""
        raise NotImplementedError

    def random(
        self, mu: np.ndarray, aux: dict[str, np.ndarray], rng: np.random.Generator, trials: np.ndarray | None = None
    ) -> np.ndarray:
        """Replicated responses, shape ``mu.shape`` (draws, n), for posterior predictive checks."""
        raise NotImplementedError

    def variance(self, mu: np.ndarray, aux: dict[str, float], trials: np.ndarray | None = None) -> np.ndarray:
        """Variance of the response at mean ``mu`` (for Pearson residuals)."""
        raise NotImplementedError

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """Map the linear predictor to the mean of the response."""
        return self.link.inverse(eta)

    def pymc_likelihood(self, eta, aux: dict, y: np.ndarray | None = None, trials=None, dims: str | None = "obs"):
        """The observed ``y`` given the linear predictor tensor ``eta`` in the PyMC model in context.

        With ``y=None``, the unnamed distribution instead (for ``pm.logp`` of weighted likelihoods).
        """
        raise UnsupportedSyntaxError(f"family {self.name!r} has no PyMC likelihood")

    def __str__(self) -> str:
        return f"{self.name} ({self.link.name} link)"


@dataclass(frozen=True)
class Gaussian(Family):
    """Normal response with identity link and residual standard deviation ``sigma``."""

    name: str = "gaussian"
    link: Link = Link("identity")
    aux: tuple[str, ...] = ("sigma",)
    allows_one_group_per_row: bool = False

    def encode_response(self, raw: np.ndarray, frame: pd.DataFrame, name: str) -> np.ndarray:
        if name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name]):
            raise DataError(
                f"response {name!r} has dtype {frame[name].dtype}, but a gaussian model needs a "
                "numeric response; convert it with pandas.to_numeric first"
            )
        try:
            y = np.asarray(raw, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"response {name!r} is not numeric; a gaussian model needs numbers") from None
        if not np.all(np.isfinite(y)):
            bad = np.flatnonzero(~np.isfinite(y))
            raise DataError(
                f"response {name!r} has {len(bad)} infinite or undefined value(s) (rows "
                f"{_rows(frame, bad)}); remove those rows or choose a transformation that is finite on all of them"
            )
        if len(y) > 1 and np.ptp(y) == 0:
            raise DataError(
                f"response {name!r} is constant ({y[0]:g} on every row): there is no variation for a "
                "model to explain; check the column"
            )
        return y

    def fixed_prior_scale(self, y: np.ndarray) -> float:
        return float(np.std(y)) or 1.0

    def intercept_prior_location(self, y: np.ndarray) -> float:
        return float(np.mean(y))

    def default_aux_priors(self, y: np.ndarray) -> dict[str, "Prior"]:
        from bayeslmm.spec.priors import Prior

        return {"sigma": Prior("HalfStudentT", nu=4, sigma=self.fixed_prior_scale(y))}

    def log_likelihood(self, y, mu, aux, trials=None) -> np.ndarray:
        sigma = per_draw(aux["sigma"], mu)
        z = (y - mu) / sigma
        return -0.5 * (z * z + _LOG_2PI) - np.log(sigma)

    def random(self, mu, aux, rng, trials=None) -> np.ndarray:
        return rng.normal(mu, per_draw(aux["sigma"], mu))

    def variance(self, mu, aux, trials=None) -> np.ndarray:
        return np.full(np.shape(mu), float(aux["sigma"]) ** 2)

    def pymc_likelihood(self, eta, aux: dict, y: np.ndarray | None = None, trials=None, dims: str | None = "obs"):
        import pymc as pm

        if y is None:
            return pm.Normal.dist(mu=eta, sigma=aux["sigma"])
        return pm.Normal("y", mu=eta, sigma=aux["sigma"], observed=y, dims=dims)


#: The families by name.
FAMILIES: dict[str, Family] = {"gaussian": Gaussian()}


def per_draw(values, mu: np.ndarray) -> np.ndarray:
    """An auxiliary parameter broadcast against ``mu``: per draw (draws,) gets an observation axis,
    per draw and row (draws, n) is used as it is."""
    values = np.asarray(values, dtype=float)
    return values if values.ndim == np.ndim(mu) else values[..., None]


def get_family(family: "str | Family") -> Family:
    """Look up a family by name (case-insensitive) or pass a :class:`Family` through.

    Raises
    ------
    UnsupportedSyntaxError
        An unknown name.
    """
    if isinstance(family, Family):
        return family
    if not isinstance(family, str) or family.lower() not in FAMILIES:
        raise UnsupportedSyntaxError(
            f"family {family!r} is not supported; available: {', '.join(FAMILIES)}"
        )
    return FAMILIES[family.lower()]


def _rows(frame: pd.DataFrame, positions: np.ndarray, limit: int = 5) -> str:
    """Index labels of the offending rows, the first ``limit`` of them."""
    labels = [repr(label) for label in frame.index[positions[:limit]]]
    return ", ".join(labels) + (f" and {len(positions) - limit} more" if len(positions) > limit else "")

