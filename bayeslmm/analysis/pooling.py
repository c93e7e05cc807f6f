"""Pooling tables: complete, no and partial pooling of a fitted mixed model side by side.

A mixed model sits between two extremes. *Complete pooling* fits one regression to every row and
ignores the groups; *no pooling* fits each group on its own; *partial pooling* (the mixed model)
shrinks every group's estimate from its own no-pooling value toward the population value, the more
the fewer rows the group has and the smaller the between-group variance.

:func:`compare_group_estimates`, :func:`compare_fixed_effects` and :func:`compare_variance_components`
put the frequentist fit of the model (``model.fit_frequentist``, computed once: lme4's REML or ML for
gaussian models, glmer's Laplace fit otherwise) next to its Bayesian posterior. Frequentist columns
start with ``freq_``, Bayesian ones with ``bayes_``. :func:`no_pooling` and :func:`complete_pooling` are
the references at both ends (:mod:`bayeslmm.engines.least_squares`): least squares for gaussian models,
maximum-likelihood GLMs (one per group, and one for all rows) for binomial, Poisson and negative
binomial models, on the link scale; :func:`no_pooling_ols` and :func:`complete_pooling_ols` are their
least-squares forms whatever the family.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bayeslmm.engines import least_squares
from bayeslmm.engines.executor import check_executor_arguments, run_tasks, spawn_seeds
from bayeslmm.errors import DataError, NotFittedError
from bayeslmm.results import summaries
from bayeslmm.results.frequentist import FrequentistResult, fit_frequentist
from bayeslmm.spec.design import Design
from bayeslmm.spec.simulate import TrueParameters, simulate_response
from bayeslmm.spec.specification import ModelSpec
from bayeslmm.spec.families import Family, get_family

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel

__all__ = [
    "no_pooling",
    "complete_pooling",
    "no_pooling_ols",
    "complete_pooling_ols",
    "compare_group_estimates",
    "compare_fixed_effects",
    "compare_variance_components",
]


def no_pooling(model: "FittedModel | Design", factor: str | None = None, family: Family | None = None) -> pd.DataFrame:
    """No-pooling coefficients of every group: least squares, or GLMs for non-gaussian families.

    For a mixed model (or its :class:`~bayeslmm.spec.design.Design`) and grouping factor ``g``, every
    term that varies by ``g`` gets its own coefficient per level; the other fixed terms are estimated
    once, jointly (the mixed model with infinite group variances). With ``(Days | Subject)`` this is one
    regression per subject (lme4's ``lmList``); with ``(1 | Subject)`` one intercept per subject and a
    common ``Days`` slope. Gaussian models are fitted by least squares; binomial, Poisson and negative
    binomial models by maximum likelihood, as one GLM with group-specific columns (for ``(1 | herd)``,
    ``glm(cbind(incidence, size - incidence) ~ 0 + herd + period, binomial)``), on the link scale. For an
    :class:`~bayeslmm.Lm2`, every term varies by its group: one regression per group.

    Parameters
    ----------
    model : Lmer, Lm2 or Design
        Fitted or not.
    factor : str, optional
        The grouping factor; the formula's first by default. Ignored for :class:`~bayeslmm.Lm2`.
    family : Family, optional
        The model's family by default (gaussian for a Design).

    Returns
    -------
    pandas.DataFrame, shape (G, number of terms)
        Indexed by the factor's levels; columns as lme4's ``coef()``. Coefficients that a group's rows
        cannot identify are NaN, with a warning: too few rows, a predictor constant within the group, or
        (GLMs) responses that are all 0, or all successes, which have no finite estimate.

    Raises
    ------
    DataError
        The model has no grouping factor, or ``factor`` is not one of them.
    """
    family = _family_of(model, family)
    grouped = getattr(model, "grouped_design", None)  # Lm2: its group, every term varying
    if grouped is not None:
        return least_squares.no_pooling(grouped, family=family)
    design = model if isinstance(model, Design) else model.design
    return least_squares.no_pooling(design, factor, family=family)


def complete_pooling(model: "FittedModel | Design", family: Family | None = None) -> pd.Series:
    """Complete-pooling coefficients: one regression of the response on the fixed part ``X``.

    Least squares for gaussian models, the maximum-likelihood GLM (trials and offset included, link
    scale) otherwise.

    Returns
    -------
    pandas.Series, length p
        Indexed by fixed term; NaN for a column that is a linear combination of the others.
    """
    design = model if isinstance(model, Design) else model.design
    return least_squares.complete_pooling(design, _family_of(model, family))


def no_pooling_ols(model: "FittedModel | Design", factor: str | None = None) -> pd.DataFrame:
    """:func:`no_pooling` by least squares, whatever the model's family."""
    return no_pooling(model, factor, family=get_family("gaussian"))


def complete_pooling_ols(model: "FittedModel | Design") -> pd.Series:
    """:func:`complete_pooling` by least squares, whatever the model's family."""
    return complete_pooling(model, family=get_family("gaussian"))


def _family_of(model: Any, family: Family | None) -> Family:
    if family is not None:
        return family
    return getattr(model, "family", None) or get_family("gaussian")


def compare_group_estimates(
    model: "FittedModel", factor: str | None = None, prob: float = 0.95, REML: bool | None = None
) -> pd.DataFrame:
    """Every group's coefficients under no, partial (frequentist and Bayesian) and complete pooling.

    Parameters
    ----------
    model : Lmer
        Fitted, with at least one random-effects term.
    factor : str, optional
        The grouping factor; the formula's first by default.
    prob : float
        Probability of the Bayesian credible interval.
    REML : bool, optional
        Gaussian models: frequentist fit by REML (None or True) or ML (False). Other families are
        fitted by maximum likelihood (Laplace): leave it None.

    Returns
    -------
    pandas.DataFrame, shape (G * k, 11)
        One row per (level, term) for the ``k`` terms that vary by ``factor``, on the link scale, columns:

        - ``factor``, ``level``, ``term``; ``n``: rows of the group;
        - ``no_pooling``: the group's own coefficient (:func:`no_pooling`: least squares, or a GLM);
        - ``partial_freq``: frequentist fixed effect plus conditional mode, lme4's ``coef()``;
        - ``partial_bayes``, ``partial_bayes_SE``, ``partial_bayes_<lo>_ci``, ``partial_bayes_<hi>_ci``:
          posterior mean, SD and equal-tailed interval of fixed plus group effect;
        - ``complete_pooling``: one regression on the fixed part (:func:`complete_pooling`), the same
          for every group (0 for a term that has no fixed effect).

    Raises
    ------
    NotFittedError
        The model has not been fitted (checked before anything is computed).
    DataError
        The model has no random-effects term, or ``factor`` is not one of its factors.
    """
    _require_mixed_fit(model, "compare_group_estimates")
    design = model.design
    factor = design.random.resolve_factor(factor)
    low, high = summaries.interval_columns(prob)
    reference = model.fit_frequentist(REML=REML)
    separate = no_pooling(model, factor)
    complete = complete_pooling(model)
    blocks = design.blocks_of(factor)
    terms = list(dict.fromkeys(term for block in blocks for term in block.terms))
    index = pd.MultiIndex.from_product([list(blocks[0].levels), terms], names=["level", "term"])

    bayes = summaries.ranef_long(design, model.posterior, total=True, prob=prob)
    bayes = bayes[bayes["factor"] == factor].set_index(["level", "term"]).reindex(index)
    freq = reference.fixef[factor] if isinstance(reference.fixef, dict) else reference.fixef
    counts = pd.Series(np.bincount(blocks[0].group_index, minlength=blocks[0].n_levels), index=blocks[0].levels)

    table = pd.DataFrame(index=index)
    table["n"] = counts.reindex(index.get_level_values("level")).to_numpy()
    table["no_pooling"] = _long(separate[terms], index)
    table["partial_freq"] = _long(freq[terms], index)
    table["partial_bayes"] = bayes["Estimate"].to_numpy()
    table["partial_bayes_SE"] = bayes["SE"].to_numpy()
    table[f"partial_bayes_{low}"] = bayes[low].to_numpy()
    table[f"partial_bayes_{high}"] = bayes[high].to_numpy()
    table["complete_pooling"] = [complete.get(term, 0.0) for term in index.get_level_values("term")]
    table = table.reset_index()
    table.insert(0, "factor", factor)
    table.attrs.update({"frequentist": _method(reference), "prob": prob})
    return table


def compare_fixed_effects(model: "FittedModel", prob: float = 0.95, REML: bool | None = None) -> pd.DataFrame:
    """Fixed effects of the frequentist fit next to their posterior summaries (link scale).

    Parameters
    ----------
    model : Lmer
        Fitted, with at least one random-effects term.
    prob : float
        Probability of both intervals.
    REML : bool, optional
        As :func:`compare_group_estimates`.

    Returns
    -------
    pandas.DataFrame, shape (p, 11), or (p, 10) for other families than gaussian
        Indexed by term. ``freq_Estimate``, ``freq_SE``, ``freq_<lo>_ci``, ``freq_<hi>_ci``,
        ``freq_DF``, ``freq_P-val``: for gaussian models the t interval and two-sided t-test on
        Satterthwaite's ``freq_DF`` (lmerTest); for GLMMs the Wald z interval and test of
        ``summary(glmer)``, without ``freq_DF``. Then ``bayes_Estimate`` (posterior mean), ``bayes_SE``
        (posterior SD), ``bayes_<lo>_ci``, ``bayes_<hi>_ci`` (equal-tailed), ``bayes_pd`` (probability
        of direction). ``attrs["df_method"]`` says how the tests were made.

    Raises
    ------
    NotFittedError, DataError
        As :func:`compare_group_estimates`.
    """
    _require_mixed_fit(model, "compare_fixed_effects")
    reference = model.fit_frequentist(REML=REML)
    low, high = summaries.interval_columns(prob)
    freq = reference.coefs
    bayes = summaries.coefs_table(model.design, model.posterior, prob=prob)
    lower, upper = reference.wald_interval(prob)
    columns = {
        "freq_Estimate": freq["Estimate"].to_numpy(),
        "freq_SE": freq["SE"].to_numpy(),
        f"freq_{low}": lower,
        f"freq_{high}": upper,
    }
    if "DF" in freq:
        columns["freq_DF"] = freq["DF"].to_numpy()
    columns |= {
        "freq_P-val": freq["P-val"].to_numpy(),
        "bayes_Estimate": bayes["Estimate"].to_numpy(),
        "bayes_SE": bayes["SE"].to_numpy(),
        f"bayes_{low}": bayes[low].to_numpy(),
        f"bayes_{high}": bayes[high].to_numpy(),
        "bayes_pd": bayes["pd"].to_numpy(),
    }
    table = pd.DataFrame(columns, index=pd.Index(model.design.fixed_terms, name="term"))
    table.attrs.update({"frequentist": _method(reference), "df_method": reference.df_method, "prob": prob})
    return table


def _method(reference: FrequentistResult) -> str:
    """How a frequentist fit was made: ``"REML"``, ``"ML"``, ``"Laplace"`` or ``"AGQ (nAGQ = k)"``."""
    if not reference.glmm:
        return "REML" if reference.REML else "ML"
    return "Laplace" if reference.nAGQ == 1 else f"AGQ (nAGQ = {reference.nAGQ})"


def compare_variance_components(
    model: "FittedModel",
    prob: float = 0.95,
    REML: bool | None = None,
    n_boot: int = 0,
    random_seed: int | None = None,
    *,
    client: Any = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Standard deviations and correlations of the random effects: frequentist estimate next to the posterior.

    Parameters
    ----------
    model : Lmer
        Fitted, with at least one random-effects term.
    prob : float
        Probability of the intervals.
    REML : bool, optional
        As :func:`compare_group_estimates`.
    n_boot : int
        Parametric-bootstrap replicates for a frequentist percentile interval (0: no interval). Each
        replicate simulates a response from the fitted model (fixed effects, group effects drawn from
        the estimated covariances, then the family's distribution: normal residuals, binomial,
        Poisson or negative binomial counts with the fit's trials, offset and dispersion) and refits
        it: ``n_boot`` frequentist fits (0.05-0.3 s each on sleepstudy or cbpp). Replicates whose
        optimiser did not converge are kept and counted in ``attrs["n_boot_not_converged"]``; a refit
        that raises is left out (NaN) with a warning naming its seed, and counted in
        ``attrs["n_boot_failed"]``.
    random_seed : int, optional
        Seed of the bootstrap: replicate ``i`` is seeded by the ``i``-th child of
        ``numpy.random.SeedSequence(random_seed)``, so the interval does not depend on where it ran.
    client, workers
        Where the refits run: see :func:`bayeslmm.engines.executor.run_tasks` (default every local core).

    Returns
    -------
    pandas.DataFrame, shape (number of SDs + number of correlations, 6 or 8)
        One row per parameter, in the order of ``ranef_var`` then ``ranef_corr``. Columns ``group``,
        ``parameter`` (``"sd"`` or ``"corr"``), ``term`` (the term's name, ``""`` for the residual of a
        gaussian model, ``"IV1, IV2"`` for a correlation), ``freq_Estimate`` (frequentist estimate), with ``n_boot``
        ``freq_<lo>_ci`` and ``freq_<hi>_ci`` (bootstrap percentiles), ``bayes_Estimate`` (posterior
        median, as ``ranef_var``), ``bayes_<lo>_ci`` and ``bayes_<hi>_ci`` (equal-tailed).

    Raises
    ------
    NotFittedError, DataError
        As :func:`compare_group_estimates`.
    ValueError
        ``n_boot`` is negative or not an integer.
    TypeError
        Bad ``client`` or ``workers``.
    """
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    check_executor_arguments(client, workers)
    _require_mixed_fit(model, "compare_variance_components")
    low, high = summaries.interval_columns(prob)
    reference = model.fit_frequentist(REML=REML)
    freq = _variance_rows(reference.ranef_var, reference.ranef_corr)
    bayes = _variance_rows(
        summaries.ranef_var_table(model.design, model.posterior, prob),
        summaries.ranef_corr_table(model.design, model.posterior, prob),
        interval=(low, high),
    )
    table = freq[["group", "parameter", "term", "estimate"]].rename(columns={"estimate": "freq_Estimate"})
    attrs = {"frequentist": _method(reference), "bayes": "posterior median", "prob": prob}
    if n_boot:
        spec = ModelSpec.from_model(model)
        replicates, not_converged = _parametric_bootstrap(reference, spec, n_boot, random_seed, client, workers)
        bounds = np.nanquantile(replicates, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        table[f"freq_{low}"], table[f"freq_{high}"] = bounds
        attrs.update({
            "n_boot": n_boot, "n_boot_not_converged": not_converged,
            "n_boot_failed": int(np.isnan(replicates).all(axis=1).sum()), "interval": "parametric bootstrap",
        })
    table["bayes_Estimate"] = bayes["estimate"].to_numpy()
    table[f"bayes_{low}"] = bayes[low].to_numpy()
    table[f"bayes_{high}"] = bayes[high].to_numpy()
    table.attrs.update(attrs)
    return table


def _variance_rows(
    var_table: pd.DataFrame, corr_table: pd.DataFrame | None, interval: tuple[str, str] | None = None
) -> pd.DataFrame:
    """``ranef_var`` and ``ranef_corr`` tables (either engine) as rows group/parameter/term/estimate."""
    extra = list(interval or ())
    sds = var_table.reset_index()[["group", "Name", "Std"] + extra].rename(columns={"Name": "term", "Std": "estimate"})
    sds.insert(1, "parameter", "sd")
    if corr_table is None:
        return sds.reset_index(drop=True)
    corr = corr_table.reset_index()
    corr = corr.assign(term=corr["IV1"] + ", " + corr["IV2"], parameter="corr").rename(columns={"Corr": "estimate"})
    return pd.concat([sds, corr[["group", "parameter", "term", "estimate"] + extra]], ignore_index=True)


@dataclass(eq=False)
class _BootstrapPlan:
    """What every bootstrap replicate needs (sent once to each worker)."""

    spec: ModelSpec
    truth: TrueParameters
    REML: bool
    nAGQ: int


def _parametric_bootstrap(
    reference: FrequentistResult, spec: ModelSpec, n_boot: int, random_seed: int | None, client: Any = None,
    workers: int | None = None,
) -> tuple[np.ndarray, int]:
    """Refit ``n_boot`` responses simulated from ``reference`` with new group effects (the simulation of
    its ``simulate``), ``reference`` being the fit of the model ``spec`` specifies; replicate ``i`` is
    seeded by the ``i``-th child of ``SeedSequence(random_seed)``, and the refits run through
    :func:`~bayeslmm.engines.executor.run_tasks`.

    Returns
    -------
    replicates : ndarray, shape (n_boot, m)
        The SDs then correlations of each refit, in :func:`_variance_rows` order (NaN if a refit failed).
    not_converged : int
    """
    plan = _BootstrapPlan(spec, reference.parameters(), reference.REML, reference.nAGQ or 1)
    seeds, _ = spawn_seeds(random_seed, n_boot)
    run = run_tasks(
        _bootstrap_replicate, range(n_boot), seeds, shared=plan, client=client, workers=workers,
        description="Parametric bootstrap", unit="fits",
    )
    if run.failures:
        warnings.warn(run.failure_message("bootstrap refits"), UserWarning, stacklevel=3)
    width = len(_variance_rows(reference.ranef_var, reference.ranef_corr))
    replicates = np.array([np.full(width, np.nan) if r is None else r[0] for r in run.results])
    return replicates, sum(not r[1] for r in run.results if r is not None)


def _bootstrap_replicate(plan: _BootstrapPlan, replicate: int, seed: np.random.SeedSequence) -> tuple[np.ndarray, bool]:
    """One replicate: a response simulated from the estimates, refitted; (SDs and correlations, converged)."""
    design = plan.spec.design()
    y = simulate_response(design, plan.truth, np.random.default_rng(seed), plan.spec.family)
    refit = fit_frequentist(dataclasses.replace(design, y=y), REML=plan.REML, family=plan.spec.family, nAGQ=plan.nAGQ)
    return _variance_rows(refit.ranef_var, refit.ranef_corr)["estimate"].to_numpy(), bool(refit.converged)


def _require_mixed_fit(model: Any, what: str) -> None:
    """Raise before any work unless ``model`` is a fitted mixed model (random effects, a frequentist twin)."""
    if not hasattr(model, "fit_frequentist") or not hasattr(model, "design"):
        raise TypeError(f"{what} compares the pooling of a mixed model: pass a fitted Lmer, got {type(model).__name__}")
    if not model.design.blocks:
        raise DataError(f"{what}: formula {model.formula!r} has no random-effects term such as '(1 | group)'")
    if not model.fitted:
        raise NotFittedError(f"{what} needs the Bayesian posterior: call model.fit() first")


def _long(wide: pd.DataFrame, index: pd.MultiIndex) -> np.ndarray:
    """Values of a levels x terms frame in the order of a (level, term) index."""
    stacked = wide.stack()
    stacked.index = stacked.index.set_names(index.names)
    return stacked.reindex(index).to_numpy()
