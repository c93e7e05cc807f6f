"""The same model as a Bambi model, for users who go on with Bambi's tools (``bambi.interpret``, ...).

bayeslmm evaluates formulas with formulae, Bambi's formula engine, and its default priors follow the
same rules as Bambi's (``2.5 sd(y) / sd(x)`` for slopes, the intercept at the predictors' means), so a
model translates term by term: the fixed part as it is, every random-effects block as a Bambi
group-specific term, and every prior explicitly, so that the Bambi model has this model's priors
(overrides included). Bambi is imported only here.

What does not translate raises :class:`~bayeslmm.errors.UnsupportedSyntaxError` naming it:

- a block of correlated terms, such as ``(Days | Subject)``: Bambi's group-specific effects are
  independent; ``(Days || Subject)`` is the model without the correlation;
- a family other than gaussian (bayeslmm's other families are not mapped yet), offsets and ``weights=``;
- a prior distribution whose parameters differ between the columns of one Bambi term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bayeslmm.errors import UnsupportedSyntaxError
from bayeslmm.spec.contrasts import apply_codings, codings_from_factors
from bayeslmm.spec.design import to_pandas
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.hypotheses import fixed_structure
from bayeslmm.spec.random_effects import INTERCEPT

if TYPE_CHECKING:
    from bayeslmm.models.lmer import Lmer

__all__ = ["to_bambi"]


def to_bambi(model: "Lmer"):
    """A ``bambi.Model`` equal to ``model``: formula, data, family and every prior.

    Parameters
    ----------
    model : Lmer
        Fitted or not; the Bambi model is returned unfitted.

    Returns
    -------
    bambi.Model

    Raises
    ------
    UnsupportedSyntaxError
        A correlated random-effects block, a family other than gaussian, or priors Bambi cannot take.
    """
    import bambi as bmb

    design, family = model.design, model.family
    if family.name != "gaussian":
        raise UnsupportedSyntaxError(f"to_bambi: family {family.name!r} is not mapped to Bambi yet; gaussian models are")
    if design.offset is not None or design.weights is not None:
        raise UnsupportedSyntaxError(
            "to_bambi: offsets and weights= are not mapped to Bambi; fit the model without them to translate it"
        )
    correlated = [f"({block.expr} | {block.factor})" for block in design.blocks if block.n_terms > 1]
    if correlated:
        raise UnsupportedSyntaxError(
            f"to_bambi: {', '.join(correlated)} correlate their terms, but Bambi's group-specific effects are "
            "independent; use '||' (e.g. (Days || Subject)) for the model without the correlations, or "
            "keep this model in bayeslmm"
        )
    data = design.data
    parsed = parse_formula(model.formula)
    arguments = model.init_arguments
    codings = codings_from_factors(arguments.get("factors"), arguments.get("ordered", False), data)
    rewritten, namespace = apply_codings(parsed, to_pandas(data), codings)
    random = [f"({term.expr} | {term.factor})" for term in rewritten.random]
    formula = f"{rewritten.response} ~ " + " + ".join([rewritten.fixed] + random)
    priors = _fixed_priors(model, bmb)
    for block in design.blocks:
        term = block.terms[0]
        sd = model.model_priors.group_sd[block.name][term]
        key = f"1|{block.factor}" if term == INTERCEPT else f"{_bambi_name(block.expr)}|{block.factor}"
        priors[key] = bmb.Prior("Normal", mu=0.0, sigma=bmb.Prior(sd.distribution, **sd.params))
    for name, prior in model.model_priors.aux.items():
        priors[name] = bmb.Prior(prior.distribution, **prior.params)
    return bmb.Model(formula, data, family="gaussian", priors=priors, extra_namespace=namespace or None)


def _bambi_name(expression: str) -> str:
    """Bambi's name of the slope term of a one-column block expression ``"0 + Days"``: ``"Days"``."""
    pieces = [p.strip() for p in expression.replace("-", "+").split("+")]
    return " + ".join(p for p in pieces if p not in ("0", "1", ""))


def _fixed_priors(model: "Lmer", bmb) -> dict:
    """One Bambi prior per fixed term, with per-column parameters for terms of several columns."""
    design, fixed = model.design, model.model_priors.fixed
    priors = {}
    if INTERCEPT in fixed:
        prior = fixed[INTERCEPT]
        priors["Intercept"] = bmb.Prior(prior.distribution, **prior.params)
    names = [name for name in design.fixed.evaluator.terms if name != "Intercept"]
    for name, term in zip(names, fixed_structure(design)):
        columns = [design.fixed_terms[i] for i in term.columns]
        parts = [fixed[c] for c in columns]
        kinds = {(p.distribution, tuple(sorted(p.params))) for p in parts}
        if len(kinds) > 1:
            raise UnsupportedSyntaxError(
                f"to_bambi: the columns of term {term.label!r} have priors of different forms "
                f"({', '.join(map(repr, parts))}); Bambi takes one distribution per term"
            )
        if len(parts) == 1:
            priors[name] = bmb.Prior(parts[0].distribution, **parts[0].params)
        else:
            params = {key: [p.params[key] for p in parts] for key in parts[0].params}
            priors[name] = bmb.Prior(parts[0].distribution, **params)
    return priors
