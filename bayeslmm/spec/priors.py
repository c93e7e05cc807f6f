"""Priors: weakly informative defaults scaled to the data, and user overrides.

Defaults follow the rstanarm/Bambi convention. With ``s`` the family's prior scale (``sd(y)``, the
population SD of the response, for gaussian models; 1 on the link scale for the other families) and
``sd(x)`` the population SD of a predictor:

============================  ===================================================================
parameter                     default prior
============================  ===================================================================
``(Intercept)``               ``Normal(m, 2.5 s)`` with ``m = mean(y)`` for gaussian models and 0
                              otherwise, for the intercept at the means of the predictors (the
                              model centres predictors internally, as brms does; the reported
                              intercept is on the original scale)
slope of predictor ``x``      ``Normal(0, 2.5 s / sd(x))``
``sigma`` (gaussian)          ``HalfStudentT(nu=4, sigma=sd(y))``
SD of a group term ``x|g``    ``HalfNormal(2.5 s / sd(x))``; ``HalfNormal(2.5 s)`` for an intercept
correlations of a block       ``LKJ(eta=1)``, uniform over correlation matrices
============================  ===================================================================

Override any of them with ``priors=`` on :class:`~bayeslmm.Lmer`, keyed by

- a fixed term, e.g. ``"Days"`` or ``"(Intercept)"``: a :class:`Prior`;
- an auxiliary parameter of the family, e.g. ``"sigma"``: a :class:`Prior` on a positive distribution;
- a group term ``"term|factor"``, e.g. ``"Days|Subject"`` or ``"(Intercept)|Subject"`` (``"1|Subject"``
  also works): a :class:`Prior` on a positive distribution for that standard deviation;
- ``"eta"`` (every block) or ``"eta|factor"``: the LKJ shape, a positive number; larger values pull
  correlations toward zero.

A key that names both a fixed term and a parameter (a column called ``sigma``) is ambiguous and
refused: write ``"coef:sigma"`` for the fixed effect and ``"aux:sigma"`` for the parameter.

:class:`Prior` checks its distribution and parameters when it is created, so a typo (``sd=`` for
``sigma=``) or an impossible value (a negative scale) is an error naming the prior, never a silently
different model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bayeslmm.errors import PriorError
from bayeslmm.spec.distributions import (
    DISTRIBUTIONS,
    POSITIVE_DISTRIBUTIONS,
    Prior,
    format_number,
)
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.random_effects import INTERCEPT

if TYPE_CHECKING:
    from bayeslmm.spec.design import Design

__all__ = ["Prior", "ModelPriors", "default_priors", "DISTRIBUTIONS", "POSITIVE_DISTRIBUTIONS"]

_SCALE = 2.5

@dataclass(frozen=True)
class ModelPriors:
    """Every prior of a mixed model, resolved to numbers.

    Attributes
    ----------
    fixed : dict of str to Prior
        One per fixed term, in design order; the intercept's is on the centred scale.
    aux : dict of str to Prior
        One per auxiliary parameter of the family (gaussian: ``sigma``).
    group_sd : dict of str to dict of str to Prior
        ``group_sd[block_name][term]``.
    eta : dict of str to float
        LKJ shape per block with two or more terms.
    """

    fixed: dict[str, Prior]
    aux: dict[str, Prior]
    group_sd: dict[str, dict[str, Prior]]
    eta: dict[str, float]

    @property
    def sigma(self) -> Prior | None:
        """The residual SD's prior (None for families without one)."""
        return self.aux.get("sigma")

    def table(self) -> "list[tuple[str, str]]":
        """Readable ``(parameter, prior)`` pairs, in the order of the model summary."""
        rows = [(term, repr(prior)) for term, prior in self.fixed.items()]
        rows += [(name, repr(prior)) for name, prior in self.aux.items()]
        for block, priors in self.group_sd.items():
            rows += [(f"sd({term}|{block})", repr(prior)) for term, prior in priors.items()]
        rows += [(f"corr({block})", f"LKJ(eta={format_number(eta)})") for block, eta in self.eta.items()]
        return rows


def default_priors(design: "Design", user: dict[str, Any] | None = None, family: "Family | None" = None) -> ModelPriors:
    """Resolve the priors of a mixed model: scaled defaults updated by ``user``.

    Parameters
    ----------
    design : Design
    user : dict, optional
        Overrides, keyed as described in this module's docstring.
    family : Family, optional
        Supplies the prior scale and the auxiliary parameters (default: gaussian).

    Raises
    ------
    PriorError
        A key the model does not have or that is ambiguous, a non-positive distribution for an SD,
        a bad eta.
    """
    if family is None:
        family = get_family("gaussian")
    user = dict(user or {})
    _check_user_types(user)
    scale = family.fixed_prior_scale(design.y)

    fixed = {}
    for j, term in enumerate(design.fixed_terms):
        if term == INTERCEPT:
            fixed[term] = Prior("Normal", mu=family.intercept_prior_location(design.y), sigma=_SCALE * scale)
        else:
            fixed[term] = Prior("Normal", mu=0.0, sigma=_SCALE * scale / _spread(design.X[:, j]))
    aux = family.default_aux_priors(design.y)
    group_sd = {
        block.name: {
            term: Prior("HalfNormal", sigma=_SCALE * scale / _spread(block.Z[:, j]))
            for j, term in enumerate(block.terms)
        }
        for block in design.blocks
    }
    eta = {block.name: 1.0 for block in design.blocks if block.n_terms > 1}

    for key, value in user.items():
        target, name = _resolve_key(key, fixed, aux, design)
        if target == "fixed":
            fixed[name] = value
        elif target == "aux":
            aux[name] = _positive(value, key)
        elif target == "eta":
            _apply_eta(eta, key, value, design)
        else:
            _apply_group_sd(group_sd, key, value, design)
    return ModelPriors(fixed=fixed, aux=aux, group_sd=group_sd, eta=eta)


def _resolve_key(key: str, fixed: dict, aux: dict, design: "Design") -> tuple[str, str]:
    """Which parameter a ``priors=`` key names: ("fixed" | "aux" | "eta" | "group_sd", name)."""
    if key.startswith("coef:"):
        name = key[len("coef:"):].strip()
        if name not in fixed:
            raise PriorError(f"prior key {key!r}: {name!r} is not a fixed term; fixed terms are {list(fixed)}")
        return "fixed", name
    if key.startswith("aux:"):
        name = key[len("aux:"):].strip()
        if name not in aux:
            raise PriorError(f"prior key {key!r}: the family has no parameter {name!r}; it has {list(aux) or 'none'}")
        return "aux", name
    is_eta = key == "eta" or key.startswith("eta|")
    claims = [kind for kind, hit in (("fixed", key in fixed), ("aux", key in aux), ("eta", is_eta)) if hit]
    if len(claims) > 1:
        raise PriorError(
            f"prior key {key!r} is ambiguous: it names the fixed effect of column {key!r} and the model "
            f"parameter {key!r}; write 'coef:{key}' for the fixed effect or "
            + (f"'aux:{key}' for the parameter" if "aux" in claims else "'eta' keys only for the LKJ shape after renaming the column")
        )
    if claims:
        return claims[0], key
    if "|" in key:
        return "group_sd", key
    raise PriorError(
        f"prior key {key!r} is not a parameter of this model; fixed terms are {list(fixed)}, group terms "
        f"are {[f'{t}|{b.factor}' for b in design.blocks for t in b.terms]}, family parameters {list(aux)}, "
        "plus 'eta' for correlations"
    )


def _spread(column: np.ndarray) -> float:
    """Population SD of a predictor column; 1 for constant columns (intercepts)."""
    sd = float(np.std(column))
    return sd if sd > 0 else 1.0


def _check_user_types(user: dict[str, Any]) -> None:
    for key, value in user.items():
        if not isinstance(key, str):
            raise PriorError(f"prior keys must be strings, got {key!r}")
        is_eta = key == "eta" or key.startswith("eta|")
        if is_eta and isinstance(value, int | float) and not isinstance(value, bool):
            continue
        if not isinstance(value, Prior):
            expected = "a positive number (the LKJ shape)" if is_eta else "a bayeslmm.Prior, e.g. Prior('Normal', mu=0, sigma=10)"
            raise PriorError(f"prior for {key!r} must be {expected}, got {value!r}")


def _positive(prior: Prior, key: str) -> Prior:
    if prior.support != "positive":
        raise PriorError(
            f"prior for {key!r} must be on positive values (one of {sorted(POSITIVE_DISTRIBUTIONS)}), "
            f"got {prior!r}"
        )
    return prior


def _apply_group_sd(group_sd: dict, key: str, prior: Prior, design: "Design") -> None:
    term, factor = (part.strip() for part in key.split("|", 1))
    term = INTERCEPT if term in {"1", "Intercept", INTERCEPT} else term
    matched = [b for b in design.blocks if b.factor == factor and term in b.terms]
    if not matched:
        raise PriorError(
            f"prior key {key!r}: the model has no group term {term!r} on factor {factor!r}; group terms "
            f"are {[f'{t}|{b.factor}' for b in design.blocks for t in b.terms]}"
        )
    if not isinstance(prior, Prior):
        raise PriorError(f"prior for {key!r} must be a bayeslmm.Prior on positive values, got {prior!r}")
    for block in matched:
        group_sd[block.name][term] = _positive(prior, key)


def _apply_eta(eta: dict, key: str, value: float, design: "Design") -> None:
    if isinstance(value, Prior) or not value > 0 or not math.isfinite(value):
        raise PriorError(f"prior {key!r}: the LKJ shape eta must be positive (a finite number), got {value!r}")
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


#: Grouping factors with fewer levels than this get a :class:`~bayeslmm.errors.PriorSensitivityWarning`.
FEW_LEVELS = 5


def few_levels_warnings(design: "Design", priors: ModelPriors) -> list[str]:
    """Messages for grouping factors with fewer than :data:`FEW_LEVELS` levels (what the prior does there)."""
    messages = []
    for factor, levels in design.factors.items():
        if len(levels) >= FEW_LEVELS:
            continue
        block = design.blocks_of(factor)[0]
        prior = priors.group_sd[block.name][block.terms[0]]
        messages.append(
            f"grouping factor {factor!r} has only {len(levels)} levels: the SD of its effects is estimated from "
            f"{len(levels)} group deviations, so its posterior follows its prior ({prior!r}) closely, and that prior "
            f"widens or narrows the intervals of the fixed effects that the groups inform. Set a prior that says "
            f"which SDs are plausible, e.g. priors={{'1|{factor}': Prior('HalfNormal', sigma=...)}}, or model "
            f"{factor!r} as a fixed effect (see the priors page of the docs)"
        )
    return messages
