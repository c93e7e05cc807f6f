"""Power analysis by simulation: how many groups a study needs, frequentist power and Bayesian assurance.

:func:`power` answers the planning question of R's simr (``powerSim``, ``powerCurve``): with the
variance components of a pilot fit (or of a specification), what is the chance that a study with
``n`` subjects detects a fixed effect of a given size? For every size, ``n_sims`` data sets are
simulated (:func:`bayeslmm.spec.simulate.simulate_response`) on the design extended or cut to ``n``
levels of the grouping factor (:func:`bayeslmm.spec.simulate.extend_data`, simr's ``extend``), each is
fitted twice, and the table reports per size

- **power**: the share of frequentist fits whose test of the term has ``p < alpha``: for gaussian
  models the REML t test (Satterthwaite df, as lmerTest and simr's default ``fixed(term, "t")`` test
  do), for binomial, Poisson and negative binomial models the Wald z test of the Laplace fit (as
  ``summary(glmer)`` and simr's ``fixed(term, "z")``);
- **assurance**: the share of Bayesian fits whose central ``prob`` interval of the term excludes 0
  (an exact sampler: the collapsed one for gaussian models, the GLMM engine otherwise; 2 chains x 500
  draws after 500 tuning steps by default, with the priors a user fitting that data set would get:
  the defaults scaled to it, and the model's ``priors=``);
- the mean **width** of that interval (precision planning),

each with a Monte Carlo 95% interval (Clopper-Pearson for the shares, t for the mean width), so that
the number of simulations can be judged. The simulations run through
:func:`bayeslmm.engines.executor.run_tasks`: on every local core by default, or on a Dask cluster.
Simulation ``j`` at size ``n`` is seeded by ``SeedSequence(random_seed, spawn_key=(n, j))``, so a size's
numbers do not depend on the other sizes asked for, nor on where the fits ran.

A term with several columns (a factor with several levels, or an interaction with one) is tested as
a whole: by lmerTest's F test of its Type III hypothesis (Satterthwaite denominator df, as
``anova(model)``) for gaussian models, by the Wald chi-square test of the same hypothesis for the other
families (as ``car::Anova(type = 3)`` for glmer), and in the Bayesian fit by whether the posterior's
central ``prob`` ellipsoid of the same contrasts (Mahalanobis distance from the posterior mean)
excludes 0. Gaussian models must have no offset (the REML engine has none).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bayeslmm.analysis.anova import joint_pd
from bayeslmm.engines import collapsed, glmm
from bayeslmm.engines.executor import TaskFailure, check_executor_arguments, run_tasks, task_threads
from bayeslmm.engines.sampling import check_random_seed, check_sampler_arguments
from bayeslmm.errors import DataError, UnsupportedSyntaxError
from bayeslmm.results import summaries
from bayeslmm.engines.reml import contrast_f_test
from bayeslmm.results.frequentist import fit_frequentist
from bayeslmm.results.report import SummaryParts, layout_html, layout_text
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.hypotheses import fixed_structure, type3_hypotheses
from bayeslmm.spec.priors import default_priors
from bayeslmm.spec.simulate import TrueParameters, covariance_root, extend_data, extend_within, simulate_response
from bayeslmm.spec.specification import ModelSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bayeslmm.results.fitted import FittedModel

__all__ = ["power", "PowerCurve", "BAYES_SETTINGS"]

#: Sampler settings of each simulated data set's Bayesian fit (enough for a 95% interval's ends).
BAYES_SETTINGS = {"draws": 500, "tune": 500, "chains": 2}
#: Probability of the Monte Carlo intervals of power, assurance and mean width.
MC_LEVEL = 0.95


def power(
    model: "FittedModel | str",
    term: str,
    effect: float | dict[str, float],
    along: dict[str, list[int]] | None = None,
    n_sims: int = 200,
    alpha: float = 0.05,
    random_seed: int | None = None,
    *,
    prob: float = 0.95,
    data: pd.DataFrame | None = None,
    fixed: dict[str, float] | None = None,
    within: dict[str, list[int]] | None = None,
    covariances: dict[str, Any] | None = None,
    sigma: float | None = None,
    dispersion: float | None = None,
    family: str | None = None,
    priors: dict | None = None,
    draws: int = BAYES_SETTINGS["draws"],
    tune: int = BAYES_SETTINGS["tune"],
    chains: int = BAYES_SETTINGS["chains"],
    client: Any = None,
    workers: int | None = None,
    progressbar: bool | None = None,
) -> "PowerCurve":
    """Frequentist power and Bayesian assurance of a fixed effect, by simulation, per number of groups.

    Parameters
    ----------
    model : Lmer or str
        A model (fitted or not): the data are simulated from its frequentist estimates (REML for
        gaussian models, the Laplace fit for the others: fixed effects, covariances of the group
        effects, residual SD or dispersion), on its design. Or a formula, with ``data``, ``fixed``,
        ``covariances`` (and ``sigma`` or ``dispersion`` where the family has one) giving the design
        and every parameter.
    term : str
        A column of the fixed-effects matrix, e.g. ``"Days"`` or ``"group[b]"`` (t or z test of that
        coefficient), or a term of the formula with several columns, e.g. ``"group"`` (F or Wald
        chi-square test of all).
    effect : float or dict of str to float
        The coefficient in the simulations (the other parameters as estimated or given); for a term with
        several columns, one per column, e.g. ``{"group[b]": 2.0, "group[c]": 4.0}``.
    along : dict, optional
        One grouping factor and the numbers of its levels to try, e.g. ``{"Subject": [10, 20, 40]}``.
        Levels are added by copying existing groups under new labels, or the first ``n`` kept (see
        :func:`~bayeslmm.spec.simulate.extend_data`); grouping factors nested in it are copied with it.
        Default: the design as it is.
    within : dict, optional
        Instead of ``along``: more (or fewer) observations per group, as simr's ``extend(within=)``.
        One key naming columns joined by ``+`` and the numbers of rows per combination of them to try:
        ``{"Subject+Days": [1, 2, 3]}`` measures every subject 1, 2 or 3 times a day,
        ``{"Subject": [5, 10, 20]}`` gives each subject 5, 10 or 20 rows (its rows repeated in turn or
        cut; :func:`~bayeslmm.spec.simulate.extend_within`).
    n_sims : int
        Simulated data sets per size (the Monte Carlo error of a power near 0.8 is about
        ``sqrt(0.16 / n_sims)``: 0.028 for 200).
    alpha : float
        Level of the two-sided test.
    random_seed : int, optional
        Seeds every simulation and fit; None draws one (kept in ``attrs["random_seed"]``).
    prob : float
        Probability of the Bayesian interval that must exclude 0.
    data : pandas.DataFrame, optional
        With a formula: the design (predictors and grouping factors; the response column need not exist).
        With a model: replaces the model's data as the design.
    fixed : dict of str to float, optional
        Fixed effects by term; with a formula every term, with a model those to change.
    covariances : dict, optional
        Covariance of each random-effects block's group effects (block name, e.g. ``"Subject"``, to a
        variance for a one-term block or a k x k matrix in the block's term order, as lme4's ``VarCorr``);
        with a formula every block, with a model those to change.
    sigma : float, optional
        Residual SD of a gaussian model; required with a gaussian formula.
    dispersion : float, optional
        Dispersion of a negative binomial model (NB2: variance ``mu + mu^2 / dispersion``); required
        with a negative binomial formula.
    family : str, optional
        With a formula: its family, ``"gaussian"`` (default), ``"binomial"`` (a 0/1 response, or
        ``cbind(successes, failures)`` whose trials the data hold), ``"poisson"`` or
        ``"negbinomial"``. A model brings its own.
    priors : dict, optional
        ``priors=`` overrides of the Bayesian fits (with a model: its own by default).
    draws, tune, chains : int
        Settings of each Bayesian fit (:data:`BAYES_SETTINGS`).
    client, workers
        Where the fits run: see :func:`bayeslmm.engines.executor.run_tasks` (default every local core).
    progressbar : bool, optional
        A bar over the fits.

    Returns
    -------
    PowerCurve
        ``table`` (one row per size), ``simulations`` (one row per data set), ``failures``; prints as a
        table, ``plot()`` draws the curve.

    Raises
    ------
    DataError
        ``term`` is not a single column, ``along`` is not a grouping factor, a parameter is missing or
        misnamed, or the data cannot carry the formula.
    UnsupportedSyntaxError
        A gaussian model with an offset, or priors that no exact sampler takes.
    ValueError, TypeError
        Bad numbers (``n_sims``, ``alpha``, ``prob``, sizes, sampler settings, seed) or executor arguments.

    Examples
    --------
    >>> curve = power(model, "Days", 5.0, along={"Subject": [8, 12, 16, 20, 24]}, random_seed=1)  # doctest: +SKIP
    >>> curve.smallest_size(0.8)  # doctest: +SKIP
    """
    seed = check_random_seed(random_seed)
    _check_numbers(n_sims, alpha, prob)
    check_sampler_arguments(draws, tune, chains)
    check_executor_arguments(client, workers)
    base, family = _base_spec(model, data, priors, family)
    design = base.design()
    effects = _effects(design, term, effect)
    given_aux = {name: value for name, value in (("sigma", sigma), ("dispersion", dispersion)) if value is not None}
    parameters = _parameters(model, design, family, {**(fixed or {}), **effects}, covariances, given_aux)
    if within is not None and along is not None:
        raise DataError("give along= (more groups) or within= (more rows per group), not both")
    factor, sizes, axis = _within_sizes(base.data, within) if within is not None else (*_sizes(design, along), "levels")
    nested = _nested_factors(design, factor) if axis == "levels" else ()
    specs, hypotheses = {}, {}
    for size in sizes:
        if axis == "rows":
            frame = extend_within(base.data, factor.split("+"), size)
        else:
            frame = base.data if size == len(design.factors[factor]) else extend_data(base.data, factor, size, nested)
        specs[size] = dataclasses.replace(base, data=frame)
        _check_supported(specs[size], family)  # builds each size's design here: errors before any fit
        hypotheses[size] = None if term in design.fixed_terms else type3_hypotheses(specs[size].design(), family)[term]
    entropy = int(np.random.SeedSequence(seed).entropy)
    columns = [design.fixed_terms.index(name) for name in effects]
    plan = _Plan(specs, parameters, term, columns, hypotheses, alpha, prob, {"draws": draws, "tune": tune, "chains": chains})
    tasks = [(size, j) for size in sizes for j in range(n_sims)]
    seeds = [np.random.SeedSequence(entropy, spawn_key=(size, j)) for size, j in tasks]
    run = run_tasks(
        _simulate_and_fit, tasks, seeds, shared=plan, client=client, workers=workers, progressbar=progressbar,
        description=f"Power: {len(sizes)} size{'s' if len(sizes) > 1 else ''} x {n_sims} simulations", unit="data sets",
    )
    if run.failures:
        warnings.warn(run.failure_message("simulations"), UserWarning, stacklevel=2)
    rows = [dict(size=task[0], simulation=task[1], **result) for task, result in zip(tasks, run.results) if result]
    simulations = pd.DataFrame(rows, columns=["size", "simulation", *_RESULT_COLUMNS])
    n_obs = {size: spec.design().n_obs for size, spec in specs.items()}
    table = _curve_table(simulations, sizes, n_obs, n_sims, factor if axis == "levels" else f"rows per {factor}")
    settings = {
        "term": term, "effect": effects, "test": _test_name(family, hypotheses[sizes[0]] is None), "alpha": alpha,
        "prob": prob, "n_sims": n_sims, "factor": factor, "axis": axis,
        "size_label": size_text({"factor": factor, "axis": axis}), "family": family.name, "formula": base.formula,
        "source": "given parameters" if isinstance(model, str) else
        "REML fit of the model" if family.name == "gaussian" else "Laplace (ML) fit of the model",
        "bayes": dict(plan.bayes), "random_seed": entropy, "executor": run.executor, "seconds": run.seconds,
        "parameters": parameters,
    }
    return PowerCurve(table=table, simulations=simulations, failures=run.failures, settings=settings)


# ============================================================================== checks and inputs
def _check_numbers(n_sims: Any, alpha: Any, prob: Any) -> None:
    if isinstance(n_sims, bool) or not isinstance(n_sims, int | np.integer) or n_sims < 1:
        raise ValueError(f"n_sims must be a positive integer, got {n_sims!r}")
    for name, value in (("alpha", alpha), ("prob", prob)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float | np.number) and math.isfinite(value)


def _test_name(family: Family, one_column: bool) -> str:
    """The frequentist test: ``t`` or ``F`` (gaussian, Satterthwaite), ``z`` or ``chisq`` (Wald)."""
    if family.name == "gaussian":
        return "t" if one_column else "F"
    return "z" if one_column else "chisq"


def _base_spec(model: Any, data: Any, priors: dict | None, family: str | None = None) -> tuple[ModelSpec, Family]:
    """The specification the simulations start from: the model's (or a formula's) design."""
    if isinstance(model, str):
        if data is None:
            raise DataError("power from a formula needs data= (the design: predictors and grouping factors)")
        family = get_family(family or "gaussian")
        spec = _spec(model, data, family, priors)
    elif hasattr(model, "design") and hasattr(model, "fit_frequentist"):
        if family is not None and get_family(family).name != model.family.name:
            raise DataError(
                f"power: family={family!r} differs from the model's {model.family.name!r}; a model brings its "
                "own family (family= is for a formula)"
            )
        family = model.family
        overrides = model.prior_overrides if priors is None else priors
        spec = ModelSpec.from_model(model)
        spec = dataclasses.replace(spec, priors=overrides) if data is None else _spec(
            model.formula, data, family, overrides, spec.factors, spec.ordered
        )
    else:
        raise TypeError(f"power needs an Lmer model or a formula string, got {type(model).__name__}")
    _check_supported(spec, family)
    return spec, family


def _parameters(model: Any, design, family: Family, fixed: dict, covariances: dict | None, given_aux: dict) -> TrueParameters:
    """The true parameters: given ones over the model's frequentist estimates (a formula: all must be given)."""
    wrong = [name for name in given_aux if name not in family.aux]
    if wrong:
        has = f"its parameter is {list(family.aux)[0]!r}" if family.aux else "it has none besides the effects"
        raise DataError(f"power: {' and '.join(wrong)}= is not a parameter of the {family.name} family; {has}")
    if isinstance(model, str):
        needed = ["covariances"] * (covariances is None) + [name for name in family.aux if name not in given_aux]
        if needed:
            raise DataError(
                f"power from a formula needs every parameter: give {' and '.join(needed)} (the fixed effects "
                "by fixed=, the tested term's by effect), or pass a model, whose estimates are used"
            )
        estimated, covs, aux = {}, {}, {}
    else:
        truth = model.fit_frequentist().parameters()
        estimated = dict(zip(model.design.fixed_terms, truth.beta))
        covs = {block.name: cov for block, cov in zip(model.design.blocks, truth.covariances)}
        aux = dict(truth.aux)
    beta = _fixed_vector(design, fixed, estimated)
    covs = _covariance_list(design, covs | dict(covariances or {}))
    aux |= {name: _positive(value, name) for name, value in given_aux.items()}
    return TrueParameters(beta, covs, aux)


def _spec(formula: str, data: Any, family: Family, priors: dict | None, factors: dict | None = None,
          ordered: bool = False) -> ModelSpec:
    """A specification on a design given as data; the response, if absent, is a placeholder (simulated)."""
    from bayeslmm.spec.design import to_pandas
    from bayeslmm.spec.formula import parse_formula

    frame = to_pandas(data)
    parsed = parse_formula(formula)
    response = parsed.response
    if parsed.binomial is not None:  # cbind(successes, failures): the trials come from these columns
        from bayeslmm.spec.expressions import columns

        missing = sorted({name for part in parsed.binomial for name in columns(part)} - set(frame.columns))
        if missing:
            raise DataError(
                f"power from a formula: data= must hold the columns of the response {response!r} (any valid values: "
                f"the response is simulated, but binomial trials are read from them); missing {missing}"
            )
    elif response not in frame.columns:  # never used: every response is simulated
        placeholder = np.linspace(-1.0, 1.0, len(frame)) if family.name == "gaussian" else np.arange(len(frame)) % 2
        frame[response] = placeholder
    return ModelSpec(formula, frame, family, priors, factors=factors, ordered=ordered)


def _check_supported(spec: ModelSpec, family: Family) -> None:
    """An exact sampler takes the model, and a gaussian one has no offset (built here: data errors come now)."""
    design = spec.design()
    if family.name == "gaussian" and design.offset is not None:
        raise UnsupportedSyntaxError("power: gaussian models with an offset are not supported (the REML engine has none)")
    if not design.blocks:
        raise DataError(f"power: formula {spec.formula!r} has no random-effects term such as '(1 | group)'")
    if _bayes_engine(design, spec.model_priors(), family) is None:
        raise UnsupportedSyntaxError(
            "power's Bayesian fits use an exact sampler (the collapsed one or the GLMM engine), which needs Normal, "
            "StudentT or Cauchy priors on the fixed effects and SD priors other than InverseGamma(mu, sigma); "
            "change priors="
        )


def _bayes_engine(design, priors, family: Family):
    """The exact sampler of one simulated data set: collapsed for gaussian models it takes, else GLMM."""
    if family.name == "gaussian" and collapsed.supports(design, priors, family):
        return collapsed
    return glmm if glmm.supports(design, priors, family) else None


def _effects(design, term: str, effect: Any) -> dict[str, float]:
    """The coefficients the tested term gets: ``{column: value}`` (checked against the design's columns)."""
    columns = list(design.fixed_terms)
    if term in columns:
        if not _finite(effect):
            raise ValueError(f"effect must be a finite number (the coefficient of {term!r}), got {effect!r}")
        return {term: float(effect)}
    structure = {t.label: [columns[i] for i in t.columns] for t in fixed_structure(design)}
    if term not in structure:
        raise DataError(
            f"{term!r} is not a fixed effect of the model; its columns are {columns} and its terms {list(structure)}"
        )
    names = structure[term]
    if len(names) == 1 and _finite(effect):
        return {names[0]: float(effect)}
    if not isinstance(effect, dict) or set(effect) != set(names) or not all(_finite(v) for v in effect.values()):
        example = ", ".join(f"{name!r}: ..." for name in names)
        raise DataError(
            f"{term!r} has {len(names)} columns {names} (tested together by an F test): give effect as a number "
            f"for each, effect={{{example}}}; got {effect!r}"
        )
    return {name: float(effect[name]) for name in names}


def _fixed_vector(design, fixed: dict, current: dict) -> np.ndarray:
    terms = list(design.fixed_terms)
    unknown = [name for name in fixed if name not in terms]
    if unknown:
        raise DataError(f"fixed= names {unknown}, which are not fixed effects; the fixed effects are {terms}")
    values = current | fixed
    missing = [name for name in terms if name not in values]
    if missing:
        raise DataError(
            f"fixed= must give every fixed effect but the tested term; missing {missing} (the fixed effects are {terms})"
        )
    for name in terms:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value):
            raise DataError(f"fixed effect {name!r} must be a finite number, got {value!r}")
    return np.array([float(values[name]) for name in terms])


def _covariance_list(design, covariances: dict) -> tuple[np.ndarray, ...]:
    names = [block.name for block in design.blocks]
    unknown = [name for name in covariances if name not in names]
    if unknown:
        raise DataError(f"covariances= names {unknown}, which are not random-effects blocks; the blocks are {names}")
    missing = [name for name in names if name not in covariances]
    if missing:
        raise DataError(
            f"covariances= must give the covariance of every random-effects block; missing {missing} "
            f"(blocks and their terms: {[(b.name, list(b.terms)) for b in design.blocks]})"
        )
    out = []
    for block in design.blocks:
        matrix = np.atleast_2d(np.asarray(covariances[block.name], dtype=float))
        try:
            covariance_root(matrix, block.n_terms, block.name)
        except ValueError as exc:
            raise DataError(f"covariances=: {exc} (terms {list(block.terms)}; a variance for one term)") from None
        out.append(matrix)
    return tuple(out)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not value > 0 or not math.isfinite(value):
        raise DataError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _sizes(design, along: dict | None) -> tuple[str, list[int]]:
    factors = list(design.factors)
    if along is None:
        return factors[0], [len(design.factors[factors[0]])]
    if not isinstance(along, dict) or len(along) != 1:
        raise DataError(f"along must be one grouping factor and its sizes, e.g. {{{factors[0]!r}: [10, 20, 40]}}; got {along!r}")
    factor, sizes = next(iter(along.items()))
    if factor not in factors:
        raise DataError(f"along: {factor!r} is not a grouping factor of the model; its grouping factors are {factors}")
    if ":" in factor:
        raise DataError(f"along: {factor!r} is an interaction of factors; extend one of its columns instead")
    sizes = [sizes] if isinstance(sizes, int | np.integer) else list(sizes)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 2]
    if not sizes or bad:
        raise ValueError(f"along: the sizes must be integers of at least 2 (levels of {factor!r}), got {sizes!r}")
    return factor, sorted({int(s) for s in sizes})


def _within_sizes(data: pd.DataFrame, within: Any) -> tuple[str, list[int], str]:
    """``("Subject+Days", sorted sizes, "rows")`` from ``within={"Subject+Days": [1, 2]}``, checked."""
    if not isinstance(within, dict) or len(within) != 1:
        raise DataError(f"within must be one set of columns and the rows per combination, e.g. {{'Subject+Days': [1, 2, 3]}}; got {within!r}")
    key, sizes = next(iter(within.items()))
    columns = [c.strip() for c in str(key).split("+")]
    missing = [c for c in columns if c not in data.columns]
    if missing or not all(columns):
        raise DataError(f"within: {missing or key!r} not columns of the data; columns: {list(map(str, data.columns))}")
    sizes = [sizes] if isinstance(sizes, int | np.integer) else list(sizes)
    bad = [n for n in sizes if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1]
    if not sizes or bad:
        raise ValueError(f"within: the numbers of rows must be positive integers, got {sizes!r}")
    return "+".join(columns), sorted({int(n) for n in sizes}), "rows"


def _nested_factors(design, factor: str) -> tuple[str, ...]:
    """Grouping columns whose every level lies within one level of ``factor`` (copied with it)."""
    data = design.data
    nested = []
    for other in dict.fromkeys(part for f in design.factors for part in f.split(":")):
        if other != factor and other in data.columns and (data.groupby(other, observed=True)[factor].nunique() <= 1).all():
            nested.append(other)
    return tuple(nested)


# ============================================================================== one simulation
@dataclass(eq=False)
class _Plan:
    """What every simulation needs (sent once to each worker)."""

    specs: dict[int, ModelSpec]
    parameters: TrueParameters
    term: str
    columns: list[int]
    hypotheses: dict[int, np.ndarray | None]  # per size: Type III L of a term with several columns, else None
    alpha: float
    prob: float
    bayes: dict[str, int]


_RESULT_COLUMNS = [
    "estimate", "SE", "statistic", "DF", "p_value", "reject", "converged", "singular",
    "bayes_estimate", "bayes_lower", "bayes_upper", "excludes_zero", "width", "R_hat", "divergences",
]


def _simulate_and_fit(plan: _Plan, task: tuple[int, int], seed: np.random.SeedSequence) -> dict[str, Any]:
    """Simulate one data set at ``task``'s size, fit it as lme4 would and by an exact sampler."""
    size, _ = task
    spec = plan.specs[size]
    design = spec.design()
    rng = np.random.default_rng(seed)
    simulated = dataclasses.replace(design, y=simulate_response(design, plan.parameters, rng, spec.family))
    freq = fit_frequentist(simulated, family=spec.family)
    L = plan.hypotheses[size]
    estimate, se, statistic, df, p = _frequentist_test(freq, plan.term, L)
    priors = default_priors(simulated, spec.priors, spec.family)
    threads = task_threads()
    options = {"random_seed": int(rng.integers(2**32)), **plan.bayes, **({} if threads is None else {"cores": threads})}
    if _bayes_engine(simulated, priors, spec.family) is collapsed:
        tree, _ = collapsed.sample_marginal(simulated, priors, **options)
    else:
        tree, _ = glmm.sample_glmm(simulated, priors, spec.family, **options)
    beta = summaries.stack_draws(tree["posterior"].to_dataset(), "beta")
    bayes = summaries.summarize(beta[..., plan.columns], pd.Index(plan.columns), prob=plan.prob)
    low, high = summaries.interval_columns(plan.prob)
    if L is None:
        lower, upper = float(bayes[low].iloc[0]), float(bayes[high].iloc[0])
        mean, excludes = float(bayes["Estimate"].iloc[0]), bool(lower > 0 or upper < 0)
    else:  # the central prob ellipsoid of L beta excludes 0
        lower = upper = mean = np.nan
        excludes = joint_pd(beta.reshape(-1, beta.shape[-1]) @ L.T) > (1 + plan.prob) / 2
    stats = tree["sample_stats"].to_dataset()
    return {
        "estimate": estimate, "SE": se, "statistic": float(statistic), "DF": float(df), "p_value": float(p),
        "reject": bool(p < plan.alpha), "converged": bool(freq.converged), "singular": bool(freq.singular),
        "bayes_estimate": mean, "bayes_lower": lower, "bayes_upper": upper, "excludes_zero": bool(excludes),
        "width": upper - lower, "R_hat": float(bayes["R_hat"].max()),
        "divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
    }


# ============================================================================== the curve
def _frequentist_test(freq, term: str, L: np.ndarray | None) -> tuple[float, float, float, float, float]:
    """(estimate, SE, statistic, df, p) of the term's test; df is inf for Wald z, NaN estimates for several columns."""
    if L is None:  # one coefficient: lmerTest's t test, or glmer's Wald z
        row = freq.coefs.loc[term]
        if "T-stat" in row.index:
            return tuple(float(row[c]) for c in ("Estimate", "SE", "T-stat", "DF", "P-val"))
        return float(row["Estimate"]), float(row["SE"]), float(row["Z-stat"]), math.inf, float(row["P-val"])
    if freq.glmm:  # several: the Wald chi-square test of the Type III hypothesis
        test = freq.wald_test(L)
        return np.nan, np.nan, test["Chisq"], test["Df"], test["P-val"]
    test = contrast_f_test(freq.reml, L)  # lmerTest's F test
    return np.nan, np.nan, test["F-stat"], test["DenomDF"], test["P-val"]


def _curve_table(simulations: pd.DataFrame, sizes: list[int], n_obs: dict, n_sims: int, factor: str) -> pd.DataFrame:
    from scipy import stats

    low, high = summaries.interval_columns(MC_LEVEL)
    rows = []
    for size in sizes:
        part = simulations[simulations["size"] == size]
        m = len(part)
        row = {"n_obs": n_obs[size], "n_sims": m, "n_failed": n_sims - m}
        for name, column in (("power", "reject"), ("assurance", "excludes_zero")):
            k = int(part[column].sum())
            row[name] = k / m if m else np.nan
            row[f"{name}_{low}"], row[f"{name}_{high}"] = _clopper_pearson(k, m)
        widths = part["width"].to_numpy()
        row["width"] = widths.mean() if m else np.nan
        half = stats.t.ppf((1 + MC_LEVEL) / 2, m - 1) * widths.std(ddof=1) / math.sqrt(m) if m > 1 else np.nan
        row[f"width_{low}"], row[f"width_{high}"] = row["width"] - half, row["width"] + half
        row["n_singular"] = int(part["singular"].sum())
        row["n_not_converged"] = int((~part["converged"].astype(bool)).sum())
        row["n_divergent"] = int((part["divergences"] > 0).sum())
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(sizes, name=factor))


def _clopper_pearson(k: int, m: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) :data:`MC_LEVEL` interval of a share ``k / m``."""
    from scipy import stats

    if m == 0:
        return np.nan, np.nan
    tail = (1 - MC_LEVEL) / 2
    lower = stats.beta.ppf(tail, k, m - k + 1) if k > 0 else 0.0
    upper = stats.beta.ppf(1 - tail, k + 1, m - k) if k < m else 1.0
    return float(lower), float(upper)


@dataclass(eq=False)
class PowerCurve:
    """The result of :func:`power`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per size (index: the number of levels of the factor, or of rows per combination of
        ``within``'s columns), columns ``n_obs``, ``n_sims``
        (fits that succeeded), ``n_failed``, ``power`` with ``power_2.5_ci`` and ``power_97.5_ci`` (its
        Monte Carlo interval), ``assurance`` with its interval, ``width`` (mean width of the Bayesian
        interval) with its interval, ``n_singular`` and ``n_not_converged`` (frequentist fits), ``n_divergent``
        (Bayesian fits with divergences).
    simulations : pandas.DataFrame
        One row per simulated data set: ``size``, ``simulation``, the frequentist ``estimate``, ``SE``,
        ``statistic`` (t or z, or F or chi-square for a term with several columns), ``DF`` (inf for
        z), ``p_value``, ``reject``,
        ``converged``, ``singular``, and the Bayesian ``bayes_estimate`` (posterior mean),
        ``bayes_lower``, ``bayes_upper``, ``excludes_zero``, ``width``, ``R_hat`` (the largest of the
        term's columns), ``divergences``. Estimates and interval ends are NaN for a term with several
        columns.
    failures : list of TaskFailure
        Simulations whose fit raised, with their seeds (left out of the table; a warning says how many).
    settings : dict
        ``term``, ``effect`` (``{column: value}``), ``test`` (``"t"``, ``"F"``, ``"z"`` or ``"chisq"``),
        ``alpha``, ``prob``, ``n_sims``, ``factor`` (the grouping factor, or ``within``'s columns),
        ``axis`` (``"levels"`` or ``"rows"``), ``size_label``, ``family``, ``formula``, ``source``, ``bayes`` (sampler settings), ``random_seed``,
        ``executor``, ``seconds``, ``parameters``.
    """

    table: pd.DataFrame
    simulations: pd.DataFrame
    failures: list[TaskFailure] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def smallest_size(self, target: float = 0.8, criterion: str = "power") -> int | None:
        """The smallest size whose estimated ``criterion`` (``"power"`` or ``"assurance"``) reaches ``target``.

        None when no size does. The estimate has Monte Carlo error: see the interval columns.
        """
        if criterion not in ("power", "assurance"):
            raise ValueError(f"criterion must be 'power' or 'assurance', got {criterion!r}")
        reached = self.table.index[self.table[criterion] >= target]
        return int(reached.min()) if len(reached) else None

    def summary_parts(self) -> SummaryParts:
        """The printed form: what was simulated, one row per size, how to read it."""
        s = self.settings
        low, high = summaries.interval_columns(MC_LEVEL)
        b = s["bayes"]
        test, region = {
            "t": ("REML t test with Satterthwaite df, two-sided", "interval"),
            "F": ("REML F test of the Type III hypothesis with Satterthwaite df", "ellipsoid of the term's contrasts"),
            "z": ("Wald z test of the Laplace fit, two-sided", "interval"),
            "chisq": ("Wald chi-square test of the Type III hypothesis (Laplace fit)", "ellipsoid of the term's contrasts"),
        }[s["test"]]
        sampler = "collapsed sampler" if s.get("family", "gaussian") == "gaussian" else "GLMM engine"
        header = [
            "Power by simulation (bayeslmm)",
            f"Formula: {s['formula']}; parameters: {s['source']}",
            f"Effect: {effect_text(s)}; {s['n_sims']} simulated data sets per {size_text(s)}",
            f"Power: {test}, p < {s['alpha']:g}. Assurance: the {100 * s['prob']:g}% posterior {region} "
            f"excludes 0 ({sampler}, {b['chains']} chains x {b['draws']} draws after {b['tune']} tuning)",
            f"Ran on {s['executor']} in {s['seconds']:.1f} s; random_seed={s['random_seed']}",
        ]
        t = self.table
        shown = pd.DataFrame(
            {
                "n_obs": t["n_obs"],
                "power": [_with_interval(v, lo, hi) for v, lo, hi in zip(t["power"], t[f"power_{low}"], t[f"power_{high}"])],
                "assurance": [
                    _with_interval(v, lo, hi) for v, lo, hi in zip(t["assurance"], t[f"assurance_{low}"], t[f"assurance_{high}"])
                ],
                "mean width": [
                    _with_interval(v, lo, hi, "{:.3g}") for v, lo, hi in zip(t["width"], t[f"width_{low}"], t[f"width_{high}"])
                ],
                "failed": t["n_failed"],
                "singular": t["n_singular"],
            },
            index=t.index,
        )
        footer = [f"In brackets: Monte Carlo {100 * MC_LEVEL:g}% intervals (Clopper-Pearson for shares, t for the mean width)."]
        size = self.smallest_size(0.8)
        if size is not None:
            footer.append(f"Smallest {size_text(s)} with an estimated power of at least 0.8: {size}.")
        if self.failures:
            footer.append(f"{len(self.failures)} simulation(s) failed and are left out; see .failures (each with its seed).")
        return SummaryParts(header, [("", shown)], footer=footer)

    def to_text(self) -> str:
        """The printed form."""
        return layout_text(self.summary_parts())

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())

    def plot(self, **options: Any) -> "Figure":
        """The power curve; see :func:`bayeslmm.plots.plot_power`."""
        from bayeslmm.plots import plot_power

        return plot_power(self, **options)


def _with_interval(value: float, low: float, high: float, form: str = "{:.2f}") -> str:
    if not np.isfinite(value):
        return "-"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


def size_text(settings: dict) -> str:
    """What a size counts: ``number of Subject levels`` or ``number of rows per Subject+Days``."""
    if settings.get("axis") == "rows":
        return f"number of rows per {settings['factor']}"
    return f"number of {settings['factor']} levels"


def effect_text(settings: dict) -> str:
    """``Days = 5``, or ``group: group[b] = 2, group[c] = 4`` for a term with several columns."""
    values = ", ".join(f"{name} = {value:g}" for name, value in settings["effect"].items())
    return values if list(settings["effect"]) == [settings["term"]] else f"{settings['term']}: {values}"
