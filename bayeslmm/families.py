"""Response families: how the linear predictor ``eta`` meets the data.

A family says which distribution the response follows, its link, which auxiliary parameters it has
(with default priors), how to write its likelihood into a PyMC model, and how to evaluate the
pointwise log-likelihood on posterior draws with NumPy (used for LOO, without compiling anything).
Only ``gaussian`` is available; a binomial or Poisson family slots in by adding a class here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
from scipy import stats

from bayeslmm.errors import UnsupportedSyntaxError

__all__ = ["Family", "Gaussian", "get_family"]


@dataclass(frozen=True)
class Family:
    """Base class of response families.

    Attributes
    ----------
    name : str
        The name users pass, as in R (``"gaussian"``).
    link : str
        The link function's name (``"identity"``).
    aux : tuple of str
        Names of auxiliary parameters, e.g. ``("sigma",)``.
    """

    name: str = ""
    link: str = ""
    aux: tuple[str, ...] = ()

    def add_likelihood(self, mu, aux: dict, y: np.ndarray) -> None:
        """Add the observed variable ``y`` with mean ``mu`` to the PyMC model in context."""
        raise NotImplementedError

    def pointwise_logp(self, mu, aux: dict, y: np.ndarray):
        """Elementwise log-density of ``y`` as a tensor of the model's variables, shape (n,)."""
        raise NotImplementedError

    def log_likelihood(self, y: np.ndarray, mu: np.ndarray, aux: dict[str, np.ndarray]) -> np.ndarray:
        """Pointwise log-likelihood, shape ``mu.shape`` (draws, n); ``aux`` values have shape (draws,)."""
        raise NotImplementedError

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """Map the linear predictor to the mean of the response."""
        raise NotImplementedError

    def random(self, mu: np.ndarray, aux: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Replicated responses, shape ``mu.shape`` (draws, n), for posterior predictive checks."""
        raise NotImplementedError


@dataclass(frozen=True)
class Gaussian(Family):
    """Normal response with identity link and residual standard deviation ``sigma``."""

    name: str = "gaussian"
    link: str = "identity"
    aux: tuple[str, ...] = ("sigma",)

    def add_likelihood(self, mu, aux: dict, y: np.ndarray) -> None:
        pm.Normal("y", mu=mu, sigma=aux["sigma"], observed=y, dims="obs")

    def pointwise_logp(self, mu, aux: dict, y: np.ndarray):
        return pm.logp(pm.Normal.dist(mu=mu, sigma=aux["sigma"]), y)

    def log_likelihood(self, y: np.ndarray, mu: np.ndarray, aux: dict[str, np.ndarray]) -> np.ndarray:
        return stats.norm.logpdf(y, loc=mu, scale=aux["sigma"][..., None])

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        return eta

    def random(self, mu: np.ndarray, aux: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return rng.normal(mu, aux["sigma"][..., None])


_FAMILIES = {"gaussian": Gaussian()}


def get_family(family: str | Family) -> Family:
    """Look up a family by name (case-insensitive) or pass a :class:`Family` through."""
    if isinstance(family, Family):
        return family
    if not isinstance(family, str) or family.lower() not in _FAMILIES:
        raise UnsupportedSyntaxError(
            f"family {family!r} is not supported yet; available: {', '.join(_FAMILIES)}"
        )
    return _FAMILIES[family.lower()]
