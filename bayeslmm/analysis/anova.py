"""ANOVA: one row per fixed term, lmerTest's Type III F test next to the Bayesian evidence for the term.

For each term (a factor with ``k`` levels is one term with ``k - 1`` coefficients) the hypothesis is
``L beta = 0`` with ``L`` the Type III matrix of :func:`bayeslmm.spec.hypotheses.type3_hypotheses`
(equally weighted marginal means for factors; it does not depend on the model's contrasts). Three
answers sit side by side:

Frequentist, as lmerTest's ``anova(model, type = 3)`` (gaussian) or car's ``Anova(model, type = 3)`` (GLMMs)
    ``SS``, ``MS``, ``NumDF``, ``DenomDF`` (Satterthwaite), ``F-stat``, ``P-val``, ``Sig``: the F test
    of the REML fit (:meth:`bayeslmm.results.frequentist.FrequentistResult.anova`). For binomial,
    Poisson and negative binomial models ``Chisq``, ``Df``, ``P-val``, ``Sig``: the Wald chi-square
    test of the same hypothesis on the Laplace fit
    (:meth:`~bayeslmm.results.frequentist.FrequentistResult.wald_test`).

Predictive: ``elpd_diff``, ``SE_diff``
    The model is refitted without the term (its Type III hypothesis imposed: the sum-coded fixed part
    without the term's columns, default priors on the remaining fixed effects, the model's other priors
    and sampler settings), and both are scored by PSIS-LOO. ``elpd_diff`` is the model's elpd minus the
    reduced model's (positive: the term improves predictions of new observations), ``SE_diff`` its
    standard error ``sqrt(n var_i(d_i))`` over the pointwise differences ``d_i``. Read it as in
    :func:`bayeslmm.lrt`: a difference above about 4 and twice its SE is clear.

Posterior: ``pd``
    The multivariate probability of direction of the term's ``q`` contrasts ``L beta``. With ``m`` and
    ``S`` their posterior mean and covariance, and ``D(x) = (x - m)' S^-1 (x - m)`` the Mahalanobis
    distance, ``pd = (1 + P(D(L beta) < D(0))) / 2``: 0 lies on the boundary of the central posterior
    ellipsoid holding ``2 pd - 1`` of the draws. For one coefficient with a symmetric posterior this is
    the usual ``pd`` (the probability of the sign of the mean); ``pd`` near 1 says the coefficients are
    jointly away from 0, ``pd`` near 0.5 that 0 sits in the middle of the posterior. For a Gaussian
    posterior under flat priors, ``2 (1 - pd)`` is the p-value of the Wald chi-square test of
    ``L beta = 0``, the univariate ``p ~ 2 (1 - pd)`` of :attr:`coefs`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bayeslmm.errors import ConvergenceWarning, NotFittedError, ParetoKWarning
from bayeslmm.results.report import ReportTable, p_value_format, significance_stars
from bayeslmm.results.summaries import stack_draws
from bayeslmm.spec.hypotheses import type3_hypotheses, without_term
from bayeslmm.spec.priors import default_priors

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel

__all__ = ["anova", "joint_pd"]

_FREQ_COLUMNS = ["SS", "MS", "NumDF", "DenomDF", "F-stat", "P-val", "Sig"]


def joint_pd(draws: np.ndarray) -> float:
    """Multivariate probability of direction of draws of ``q`` quantities (see the module docstring).

    Parameters
    ----------
    draws : ndarray, shape (S, q)

    Returns
    -------
    float
        In [0.5, 1].
    """
    draws = np.asarray(draws, dtype=float).reshape(len(draws), -1)
    mean = draws.mean(axis=0)
    centred = draws - mean
    covariance = np.atleast_2d(np.cov(centred, rowvar=False))
    inverse = np.linalg.pinv(covariance)
    distance = np.einsum("si,ij,sj->s", centred, inverse, centred)
    origin = float(mean @ inverse @ mean)
    return 0.5 * (1.0 + float(np.mean(distance < origin)))


def anova(model: "FittedModel", force_orthogonal: bool = False, elpd: bool = True, random_seed: int | None = None) -> ReportTable:
    """Type III ANOVA of a fitted model: F tests (lmerTest) or Wald chi-square tests (car, for GLMMs),
    elpd without the term, joint pd.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    force_orthogonal : bool
        pymer4's switch to refit with orthogonal contrasts; the Type III hypotheses here do not depend
        on the contrasts, so it changes nothing (accepted for compatibility).
    elpd : bool
        Refit the model without each term and compare by PSIS-LOO (one refit per term, with the fit's
        draws, tuning steps and chains). False leaves ``elpd_diff`` and ``SE_diff`` out.
    random_seed : int, optional
        Seed of the refits (default: the fit's).

    Returns
    -------
    ReportTable
        One row per term (index ``term``): the frequentist columns ``SS``, ``MS``, ``NumDF``,
        ``DenomDF``, ``F-stat``, ``P-val``, ``Sig`` (gaussian models: lmerTest's F tests) or ``Chisq``,
        ``Df``, ``P-val``, ``Sig`` (other families: car's Wald chi-square tests of the glmer fit), then
        ``elpd_diff``, ``SE_diff`` and ``pd``. Prints with a title and how to read it.

    Raises
    ------
    NotFittedError
        The model is not fitted.
    """
    if model.idata is None:
        raise NotFittedError("anova() needs a fitted model: call .fit() first")
    design, family = model.design, model.family
    hypotheses = type3_hypotheses(design, family)
    if not hypotheses:
        raise ValueError(f"formula {model.formula!r} has no fixed term besides the intercept; there is nothing to test")
    table = pd.DataFrame(index=pd.Index(list(hypotheses), name="term"))
    frequentist = hasattr(model, "fit_frequentist")
    if frequentist and family.name == "gaussian":
        table = table.join(model.fit_frequentist(REML=True).anova()[_FREQ_COLUMNS])
    elif frequentist:  # Wald chi-square tests of the glmer fit, as car::Anova(type = 3)
        reference = model.fit_frequentist()
        tests = pd.DataFrame({term: reference.wald_test(L) for term, L in hypotheses.items()}).T
        tests["Df"] = tests["Df"].astype(int)
        tests["Sig"] = [significance_stars(p) for p in tests["P-val"]]
        table = table.join(tests)
    notes = []
    if elpd:
        diffs, notes = _elpd_without_terms(model, list(hypotheses), random_seed)
        table["elpd_diff"] = [d[0] for d in diffs]
        table["SE_diff"] = [d[1] for d in diffs]
    beta = stack_draws(model.posterior, "beta").reshape(-1, len(design.fixed_terms))
    table["pd"] = [joint_pd(beta @ L.T) for L in hypotheses.values()]
    header = [
        "Type III analysis of variance (bayeslmm)",
        f"Formula: {model.formula}",
    ]
    footer = []
    if frequentist and family.name == "gaussian":
        footer.append(
            "SS ... Sig: F tests of the REML fit with Satterthwaite denominator df, as lmerTest's anova(type = 3)."
        )
    elif frequentist:
        footer.append(
            "Chisq ... Sig: Wald chi-square tests of the Laplace (ML) fit, as car::Anova(type = 3) on a glmer model."
        )
    if elpd:
        footer.append(
            "elpd_diff: PSIS-LOO elpd of the model minus that of the model refitted without the term "
            "(positive: the term improves predictions); SE_diff its standard error."
        )
    footer.append(
        "pd: posterior probability that the term's coefficients are jointly away from 0 (multivariate "
        "probability of direction; for one coefficient the usual pd; p ~ 2 (1 - pd))."
    )
    if force_orthogonal:
        footer.append("force_orthogonal: Type III hypotheses here do not depend on the contrasts; the table is the same.")
    formats = {"P-val": p_value_format, "NumDF": "{:d}".format, "DenomDF": "{:.2f}".format, "pd": "{:.3f}".format,
               "Chisq": "{:.3f}".format}
    return ReportTable.build(table, header, footer + [f"Warning: {note}" for note in notes], formats)


def _elpd_without_terms(model: "FittedModel", terms: list[str], random_seed: int | None) -> tuple[list, list[str]]:
    """``(elpd_diff, SE_diff)`` per term from refits without it, and the warnings they raised."""
    from bayeslmm.analysis import comparison  # ArviZ only when asked for

    full = comparison.loo(model, warn=False)
    sampler = model.sampler
    settings = {
        "draws": sampler.draws if sampler else int(model.posterior.sizes["draw"]),
        "tune": sampler.tune if sampler else 1000,
        "chains": sampler.chains if sampler else int(model.posterior.sizes["chain"]),
        "random_seed": random_seed if random_seed is not None else (sampler.random_seed if sampler else None),
    }
    overrides = {
        key: value
        for key, value in model.prior_overrides.items()
        if key not in model.design.fixed_terms and not key.startswith("coef:")
    }
    diffs, notes = [], []
    high_k = comparison.n_high_k(full)
    for term in terms:
        reduced_design = without_term(model.design, term, model.family)
        priors = default_priors(reduced_design, overrides, model.family)
        reduced = model.variant(reduced_design, priors, f"{model.formula} without {term}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reduced.fit(progressbar=False, **settings)
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning | ParetoKWarning):
                notes.append(f"refit without {term}: {warning.message}")
        result = comparison.loo(reduced, warn=False)
        high_k += comparison.n_high_k(result)
        d = np.asarray(full.elpd_i).reshape(-1) - np.asarray(result.elpd_i).reshape(-1)
        diffs.append((float(d.sum()), float(np.sqrt(len(d) * d.var(ddof=1)))))
    if high_k:
        notes.append(
            f"{high_k} observations (over the model and its refits) have Pareto k > {comparison.K_THRESHOLD}: "
            "the elpd differences may be biased; compare the refits with lrt(..., reloo=True) or kfold"
        )
    return diffs, notes
