"""Priors: weakly informative defaults scaled to the data, and user overrides.

Defaults follow the rstanarm/Bambi convention of scaling by the spread of the response ``sd(y)`` and
of each predictor ``sd(x)`` (population standard deviations):

============================  ===================================================================
parameter                     default prior
============================  ===================================================================
``(Intercept)``               ``Normal(mean(y), 2.5 sd(y))``, for the intercept at the means of the
                              predictors (the model centres predictors internally, as brms does;
                              the reported intercept is on the original scale)
slope of predictor ``x``      ``Normal(0, 2.5 sd(y) / sd(x))``
``sigma`` (residual SD)       ``HalfStudentT(nu=4, sigma=sd(y))``
SD of a group term ``x|g``    ``HalfNormal(2.5 sd(y) / sd(x))``; ``HalfNormal(2.5 sd(y))`` for an
                              intercept
correlations of a block       ``LKJ(eta=1)``, uniform over correlation matrices
============================  ===================================================================

Override any of them with ``priors=`` on :class:`~bayeslmm.Lmer`, keyed by

- a fixed term, e.g. ``"Days"`` or ``"(Intercept)"``: a :class:`Prior`;
- ``"sigma"``: a :class:`Prior` on a positive distribution;
- a group term ``"term|factor"``, e.g. ``"Days|Subject"`` or ``"(Intercept)|Subject"`` (``"1|Subject"``
  also works): a :class:`Prior` on a positive distribution for that standard deviation;
- ``"eta"`` (every block) or ``"eta|factor"``: the LKJ shape, a positive number; larger values pull
  correlations toward zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pymc as pm

from bayeslmm.design import INTERCEPT, Design
from bayeslmm.errors import PriorError

__all__ = ["Prior", "ModelPriors", "default_priors"]

#: PyMC distributions with support on the positive reals, allowed for standard deviations.
POSITIVE_DISTRIBUTIONS = frozenset(
    {"HalfNormal", "HalfStudentT", "HalfCauchy", "Exponential", "Gamma", "InverseGamma", "LogNormal", "Weibull", "HalfFlat"}
)
_SCALE = 2.5


@dataclass(frozen=True)
class Prior:
    """A prior distribution: the name of a PyMC distribution and its parameters.

    Parameters
    ----------
    distribution : str
        A PyMC distribution name, e.g. ``"Normal"``, ``"StudentT"``, ``"HalfNormal"``.
    **params
        Its parameters, e.g. ``mu=0, sigma=10``.

    Examples
    --------
    >>> Prior("Normal", mu=0, sigma=10)
    Normal(mu=0, sigma=10)
    """

    distribution: str
    params: dict[str, Any] = field(default_factory=dict)

    def __init__(self, distribution: str, **params: Any) -> None:
        if not isinstance(distribution, str) or not hasattr(pm, distribution):
            raise PriorError(
                f"{distribution!r} is not a PyMC distribution; use a name such as 'Normal', "
                "'StudentT', 'HalfNormal' or 'Exponential'"
            )
        object.__setattr__(self, "distribution", distribution)
        object.__setattr__(self, "params", {key: _plain(value) for key, value in params.items()})

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={_format_number(value)}" for key, value in self.params.items())
        return f"{self.distribution}({args})"

    def dist(self, shape: int | None = None):
        """Return an unnamed PyMC distribution (``pm.<distribution>.dist``)."""
        return getattr(pm, self.distribution).dist(**self.params, shape=shape)


@dataclass(frozen=True)
class ModelPriors:
    """Every prior of a mixed model, resolved to numbers.

    Attributes
    ----------
    fixed : dict of str to Prior
        One per fixed term, in design order; the intercept's is on the centred scale.
    sigma : Prior or None
        Residual SD (None for families without one).
    group_sd : dict of str to dict of str to Prior
        ``group_sd[block_name][term]``.
    eta : dict of str to float
        LKJ shape per block with two or more terms.
    """

    fixed: dict[str, Prior]
    sigma: Prior | None
    group_sd: dict[str, dict[str, Prior]]
    eta: dict[str, float]

    def table(self) -> "list[tuple[str, str]]":
        """Readable ``(parameter, prior)`` pairs, in the order of the model summary."""
        rows = [(term, repr(prior)) for term, prior in self.fixed.items()]
        if self.sigma is not None:
            rows.append(("sigma", repr(self.sigma)))
        for block, priors in self.group_sd.items():
            rows += [(f"sd({term}|{block})", repr(prior)) for term, prior in priors.items()]
        rows += [(f"corr({block})", f"LKJ(eta={_format_number(eta)})") for block, eta in self.eta.items()]
        return rows


def default_priors(design: Design, user: dict[str, Any] | None = None) -> ModelPriors:
    """Resolve the priors of a Gaussian mixed model: scaled defaults updated by ``user``.

    Parameters
    ----------
    design : Design
    user : dict, optional
        Overrides, keyed as described in this module's docstring.

    Raises
    ------
    PriorError
        A key the model does not have, a non-positive distribution for an SD, a bad eta.
    """
    user = dict(user or {})
    _check_user_types(user)
    y_sd = float(np.std(design.y)) or 1.0

    fixed = {}
    for j, term in enumerate(design.fixed_terms):
        if term == INTERCEPT:
            fixed[term] = Prior("Normal", mu=float(np.mean(design.y)), sigma=_SCALE * y_sd)
        else:
            fixed[term] = Prior("Normal", mu=0.0, sigma=_SCALE * y_sd / _spread(design.X[:, j]))
    sigma = Prior("HalfStudentT", nu=4, sigma=y_sd)
    group_sd = {
        block.name: {
            term: Prior("HalfNormal", sigma=_SCALE * y_sd / _spread(block.Z[:, j]))
            for j, term in enumerate(block.terms)
        }
        for block in design.blocks
    }
    eta = {block.name: 1.0 for block in design.blocks if block.n_terms > 1}

    for key, value in user.items():
        if key in fixed:
            fixed[key] = value
        elif key == "sigma":
            sigma = _positive(value, key)
        elif key == "eta" or key.startswith("eta|"):
            _apply_eta(eta, key, value, design)
        elif "|" in key:
            _apply_group_sd(group_sd, key, value, design)
        else:
            raise PriorError(
                f"prior key {key!r} is not a parameter of this model; fixed terms are "
                f"{list(fixed)}, group terms are "
                f"{[f'{t}|{b.factor}' for b in design.blocks for t in b.terms]}, plus 'sigma' and 'eta'"
            )
    return ModelPriors(fixed=fixed, sigma=sigma, group_sd=group_sd, eta=eta)


def _spread(column: np.ndarray) -> float:
    """Population SD of a predictor column; 1 for constant columns (intercepts)."""
    sd = float(np.std(column))
    return sd if sd > 0 else 1.0


def _check_user_types(user: dict[str, Any]) -> None:
    for key, value in user.items():
        if not isinstance(key, str):
            raise PriorError(f"prior keys must be strings, got {key!r}")
        is_eta = key == "eta" or key.startswith("eta|")
        if is_eta and not isinstance(value, int | float):
            raise PriorError(f"prior {key!r} must be a positive number (the LKJ shape), got {value!r}")
        if not is_eta and not isinstance(value, Prior):
            raise PriorError(
                f"prior for {key!r} must be a bayeslmm.Prior, e.g. Prior('Normal', mu=0, sigma=10), "
                f"got {value!r}"
            )


def _positive(prior: Prior, key: str) -> Prior:
    if prior.distribution not in POSITIVE_DISTRIBUTIONS:
        raise PriorError(
            f"prior for {key!r} must be on positive values (one of {sorted(POSITIVE_DISTRIBUTIONS)}), "
            f"got {prior!r}"
        )
    return prior


def _apply_group_sd(group_sd: dict, key: str, prior: Prior, design: Design) -> None:
    term, factor = (part.strip() for part in key.split("|", 1))
    term = INTERCEPT if term in {"1", "Intercept", INTERCEPT} else term
    matched = [b for b in design.blocks if b.factor == factor and term in b.terms]
    if not matched:
        raise PriorError(
            f"prior key {key!r}: the model has no group term {term!r} on factor {factor!r}; group terms "
            f"are {[f'{t}|{b.factor}' for b in design.blocks for t in b.terms]}"
        )
    for block in matched:
        group_sd[block.name][term] = _positive(prior, key)


def _apply_eta(eta: dict, key: str, value: float, design: Design) -> None:
    if not value > 0:
        raise PriorError(f"prior {key!r}: the LKJ shape eta must be positive, got {value!r}")
    if key == "eta":
        for block in eta:
            eta[block] = float(value)
        return
    factor = key.split("|", 1)[1].strip()
    blocks = [b.name for b in design.blocks if b.factor == factor and b.name in eta]
    if not blocks:
        raise PriorError(f"prior key {key!r}: factor {factor!r} has no block with correlations")
    for block in blocks:
        eta[block] = float(value)


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, np.floating | np.integer) else value


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)
