"""Comparison: predictive accuracy of fitted models, next to likelihood-ratio tests.

pymer4's ``lrt(model1, model2, ...)`` compares nested models with a likelihood-ratio test. Here the same
call compares models by their expected log predictive density (``elpd``) for new observations,
estimated by Pareto-smoothed importance-sampling leave-one-out cross-validation (PSIS-LOO, ArviZ), as
brms's ``loo_compare`` does. Models need not be nested; they must be fitted to the same observations.
With ``refit=True`` (the default, as pymer4) and models of one family, lme4's answer joins the table:
the models refitted by maximum likelihood (``lmer`` with ``REML = FALSE``, or glmer's Laplace fit), and
for each model nested in the one above it the likelihood-ratio test (see :func:`lrt` for the nesting
rule).

Public functions (each takes fitted :class:`~bayeslmm.Lmer` models):

=======================  ===========================================================================
``lrt(m1, m2, ...)``     comparison table (:class:`ModelComparison`), one row per model; ``compare``
                         is the same function (pymer4 0.9's name)
``loo(m)``               PSIS-LOO of one model (ArviZ ``ELPDDataLOO``); ``reloo=True`` refits the
                         model exactly without each observation whose Pareto k exceeds 0.7
``kfold(m, k=10)``       K-fold cross-validation (ArviZ ``ELPDDataLOOKFold``)
``waic(m)``              WAIC (:class:`ELPDDataWAIC`)
``r2(m)``                Bayesian R-squared (brms's ``bayes_R2``), marginal and conditional
``n_parameters(m)``      number of parameters, as lme4's ``npar``/``Df`` in ``anova``
=======================  ===========================================================================

Refits (K-fold and exact refits of high-k points, :mod:`bayeslmm.analysis.refits`) compile nothing per
refit; the predictive density of a held-out row is the average over posterior draws of its likelihood,
``log mean_s p(y_i | theta_s)``. The pointwise log-likelihood and the Pareto-k bookkeeping are in
:mod:`bayeslmm.analysis.pointwise`, WAIC in :mod:`bayeslmm.analysis.waic`. ArviZ takes about a second to
import, so importing this module does not: the functions that need it import it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from bayeslmm.analysis.pointwise import (
    ARVIZ_K_WARNING,
    K_THRESHOLD,
    high_k_message,
    loo_tree,
    n_high_k,
    psis_loo,
    require_fitted,
)
from bayeslmm.errors import DataError, NotFittedError, ParetoKWarning
from bayeslmm.results import posterior as posterior_eval
from bayeslmm.results import summaries
from bayeslmm.results.report import (
    SummaryParts,
    layout_html,
    layout_text,
    p_value_format,
)
from bayeslmm.spec.design import Design

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel as Lmer

__all__ = [
    "K_THRESHOLD",
    "ELPDDataWAIC",  # noqa: F822 -- provided by __getattr__
    "ModelComparison",
    "ParetoKWarning",
    "compare",
    "kfold",
    "loo",
    "lrt",
    "n_parameters",
    "n_high_k",
    "nested",
    "r2",
    "waic",  # noqa: F822 -- provided by __getattr__
]

_DRAW_CHUNK = 500
#: Defined with ArviZ's base class (a second to import): imported when first asked for.
_LAZY = {"waic": "bayeslmm.analysis.waic", "ELPDDataWAIC": "bayeslmm.analysis.waic"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ============================================================================== checks
def _data_difference(reference: Design, other: Design) -> str | None:
    """Why two designs are not fitted to the same observations; None when they are."""
    if reference.formula.response != other.formula.response:
        return f"the responses differ ({other.formula.response!r} vs {reference.formula.response!r})"
    if reference.n_obs != other.n_obs:
        return f"the numbers of observations differ ({other.n_obs} vs {reference.n_obs})"
    if not reference.data.index.equals(other.data.index):
        if set(reference.data.index) == set(other.data.index):
            return "the same rows are in a different order"
        return "they use different rows of the data (compare the data frames' indexes)"
    if not np.array_equal(reference.y, other.y):
        n_diff = int(np.sum(reference.y != other.y))
        return f"the response values differ in {n_diff} of {reference.n_obs} rows"
    return None


def _collect_models(models: tuple, what: str) -> list["Lmer"]:
    """Flatten ``(m1, m2)`` or ``([m1, m2],)``, and refuse what cannot be compared."""
    if len(models) == 1 and isinstance(models[0], list | tuple):
        models = tuple(models[0])
    if len(models) < 2:
        raise ValueError(
            f"{what} compares two or more models, got {len(models)}; for the predictive accuracy of a "
            "single model use loo(model)"
        )
    for position, model in enumerate(models, start=1):
        if not hasattr(model, "design") or not hasattr(model, "idata"):
            raise TypeError(f"{what}: argument {position} is a {type(model).__name__}, not a bayeslmm.Lmer")
        if model.idata is None:
            raise NotFittedError(
                f"{what}: model {position} ({model.formula!r}) is not fitted; call .fit() on every "
                "model before comparing them"
            )
    reference = models[0]
    for position, model in enumerate(models[1:], start=2):
        reason = _data_difference(reference.design, model.design)
        if reason is not None:
            raise DataError(
                f"{what}: model {position} ({model.formula!r}) and model 1 ({reference.formula!r}) "
                f"were fitted to different data: {reason}. Cross-validation compares how well models "
                "predict the same observations; fit every model to the same rows of the same data "
                "(drop rows with missing values in any model's columns before fitting)"
            )
    return list(models)


# ============================================================================== PSIS-LOO and K-fold
def loo(
    model: "Lmer", reloo: bool = False, warn: bool = True, random_seed: int | None = None, **sampler_options: Any
) -> Any:
    """PSIS-LOO cross-validation of one fitted model.

    Parameters
    ----------
    model : Lmer
        A fitted model; its pointwise log-likelihood is computed if its ``idata`` lacks one.
    reloo : bool
        Refit the model without each observation whose Pareto k exceeds :data:`K_THRESHOLD` and
        use the exact leave-one-out density for it (one refit per flagged observation, the model
        compiled once).
    warn : bool
        Emit a :class:`ParetoKWarning` when observations keep a Pareto k above the threshold.
    random_seed : int, optional
        Seed of the refits (default: the fit's seed).
    **sampler_options
        For refits: ``draws``, ``tune``, ``chains`` (default: the fit's), ``nutpie.sample``
        options such as ``target_accept``, and where they run: ``client=``, ``workers=`` (see
        :func:`bayeslmm.engines.executor.run_tasks`; every local core by default).

    Returns
    -------
    arviz_stats.ELPDDataLOO
        ``elpd`` (elpd_loo), ``se``, ``p`` (p_loo), pointwise ``elpd_i`` and ``pareto_k`` (obs dim).
        Refitted observations have ``pareto_k`` 0.

    Raises
    ------
    NotFittedError
        The model is not fitted.
    """
    require_fitted(model, "loo")
    result = _model_loo(model, reloo, random_seed, sampler_options)
    if warn and n_high_k(result):
        warnings.warn(high_k_message({model.formula: n_high_k(result)}, call="loo"), ParetoKWarning, stacklevel=2)
    return result


def kfold(
    model: "Lmer",
    k: int = 10,
    *,
    folds: np.ndarray | None = None,
    group_by: str | None = None,
    random_seed: int | None = None,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    client: Any = None,
    workers: int | None = None,
    **sampler_options: Any,
) -> Any:
    """K-fold cross-validation: refit without each fold, predict the held-out rows.

    The model is compiled once (on first use, then cached for the model's lifetime); each fold
    sets the likelihood weights of its rows to zero and samples again. The predictive density of a
    held-out row is ``log mean_s p(y_i | theta_s)`` over the fold's posterior draws.

    Parameters
    ----------
    model : Lmer
        A fitted model (its sampler settings are the defaults of the refits).
    k : int
        Number of folds.
    folds : array of int, optional
        Fold of every row (any labels); overrides ``k`` and ``group_by``. Pass the same folds to
        every model you compare.
    group_by : str, optional
        A column of the data (e.g. ``"Subject"``): whole groups are held out together, which
        estimates the accuracy for new groups rather than new observations of known groups.
    random_seed : int, optional
        Seeds the random folds and the refits; the same seed gives the same folds for every model
        fitted to the same data.
    draws, tune, chains : int, optional
        Sampler settings of each refit; by default those of the model's fit.
    client, workers
        Where the refits run (see :func:`bayeslmm.engines.executor.run_tasks`): every local core by
        default, or a Dask cluster. Models outside the collapsed sampler are refitted in this process.
        Each refit has its own seed, so the result does not depend on where it ran.
    **sampler_options
        Passed to ``nutpie.sample``, e.g. ``target_accept=0.95``.

    Returns
    -------
    arviz_stats.ELPDDataLOOKFold
        ``elpd`` (elpd_kfold), ``se``, ``p`` (p_kfold), pointwise ``elpd_i``; plus
        ``compile_seconds`` and ``fold_seconds`` (wall time of each refit).

    Raises
    ------
    NotFittedError
        The model is not fitted.
    ValueError
        Bad ``k``, ``folds`` or ``group_by``.
    """
    from bayeslmm.analysis import (
        refits,  # ArviZ: a second to import, only when asked for
    )

    require_fitted(model, "kfold")
    folds = refits.resolve_folds(model.design, k, folds, group_by, random_seed)
    return refits.kfold_with_folds(
        model, folds, random_seed, draws=draws, tune=tune, chains=chains, client=client, workers=workers,
        **sampler_options,
    )


# ============================================================================== R-squared
def r2(model: "Lmer", prob: float = 0.95) -> pd.DataFrame:
    """Bayesian R-squared (Gelman, Goodrich, Gabry & Vehtari 2019), marginal and conditional.

    For every posterior draw ``s``, with ``mu_s`` the expected responses of the rows and ``y`` the data,
    ``R2_s = var(mu_s) / (var(mu_s) + var(y - mu_s))`` (variances over rows), as brms's ``bayes_R2``.
    *Conditional* uses the expected responses with the group effects; *marginal* the fixed effects
    only (brms's ``bayes_R2(re_formula = NA)``), so its residual variance includes the group effects.

    For generalized linear mixed models this is the same definition on the response scale, as brms's
    (not Nakagawa & Schielzeth's R2 with a distribution-specific variance on the link scale): ``y`` is the
    response as the family encodes it (the number of successes for binomial models, counts for counts)
    and ``mu_s`` its expected value under draw ``s`` (trials x probability, or the mean count), offsets
    included. A binary response's residual variance is large, so such R2 values are low by
    construction.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    prob : float
        Probability of the equal-tailed interval.

    Returns
    -------
    pandas.DataFrame
        Rows ``marginal`` and ``conditional``; columns ``Estimate`` (posterior mean), the interval
        bounds (e.g. ``2.5_ci``, ``97.5_ci``) and ``SE`` (posterior SD).
    """
    require_fitted(model, "r2")
    posterior = model.posterior
    design, family = model.design, model.family
    chains, draws = posterior.sizes["chain"], posterior.sizes["draw"]
    total = chains * draws
    beta = summaries.stack_draws(posterior, "beta").reshape(total, -1)
    trials = 1.0 if design.trials is None else design.trials
    values = np.empty((total, 2))
    for start in range(0, total, _DRAW_CHUNK):
        part = slice(start, min(start + _DRAW_CHUNK, total))
        marginal = design.linear_predictor(beta[part])
        conditional = posterior_eval.linear_predictor(design, posterior, part)
        values[part, 0] = _r2_draws(design.y, trials * family.inverse_link(marginal))
        values[part, 1] = _r2_draws(design.y, trials * family.inverse_link(conditional))
    index = pd.Index(["marginal", "conditional"], name="R2")
    table = summaries.summarize(values.reshape(chains, draws, 2), index, prob=prob, diagnostics=False)
    return table.drop(columns="pd")


def _r2_draws(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``var(mu) / (var(mu) + var(y - mu))`` per draw (row of ``mu``)."""
    var_fit = mu.var(axis=1, ddof=1)
    var_res = (y - mu).var(axis=1, ddof=1)
    return var_fit / (var_fit + var_res)


# ============================================================================== comparison
def n_parameters(model: "Lmer") -> int:
    """Number of parameters, counted as lme4's ``npar`` (``Df`` of ``anova``).

    Fixed effects, plus per random-effects block with ``k`` terms ``k`` standard deviations and
    ``k (k - 1) / 2`` correlations, plus the family's auxiliary parameters (``sigma``). Group
    effects themselves are not counted; ``p_loo`` measures how much they add in effect.
    """
    count = len(model.design.fixed_terms) + len(model.family.aux)
    for block in model.design.blocks:
        count += block.n_terms + block.n_terms * (block.n_terms - 1) // 2
    return count


_CRITERIA = {
    "loo": ("elpd_loo", "p_loo", "looic", "PSIS-LOO cross-validation"),
    "reloo": ("elpd_loo", "p_loo", "looic", "PSIS-LOO cross-validation, exact refits where Pareto k > 0.7"),
    "kfold": ("elpd_kfold", "p_kfold", "kfoldic", "{k}-fold cross-validation"),
}


def lrt(
    *models: "Lmer",
    kfold: int | None = None,
    reloo: bool = False,
    names: list[str] | None = None,
    random_seed: int | None = None,
    method: str = "stacking",
    refit: bool = True,
    **sampler_options: Any,
) -> "ModelComparison":
    """Compare fitted models by expected log predictive density (PSIS-LOO), and by lme4's likelihood-ratio test.

    Parameters
    ----------
    *models : Lmer
        Two or more fitted models, or one list of them, fitted to the same observations. They need
        not be nested. The order does not matter.
    kfold : int, optional
        Use K-fold cross-validation with this many folds (the same folds for every model) instead of
        PSIS-LOO; each model is compiled once and refitted ``kfold`` times.
    reloo : bool
        Replace the PSIS estimate of every observation with Pareto k > 0.7 by an exact refit
        without it (one refit per flagged observation and model, no recompilation).
    names : list of str, optional
        Row labels; the formulas by default.
    random_seed : int, optional
        Seed of the K-fold split and of the refits.
    method : str
        How ArviZ computes the model weights: ``"stacking"`` (default), ``"bb-pseudo-bma"`` or
        ``"pseudo-bma"``.
    refit : bool
        Add lme4's ``anova(..., refit = TRUE)`` columns from maximum-likelihood fits (``Lmer`` models of
        one family and link; ML for gaussian models, glmer's Laplace fit for the others; computed once
        per model): ``AIC``, ``BIC``, ``logLik``, ``deviance``, and
        for each row nested in the row above ``Chisq`` (twice the gain in log-likelihood, at least 0),
        ``Df`` (the difference in ``npar``) and ``P-val`` (chi-square). A model is *nested* in the one
        above when it has fewer parameters, its fixed-effect columns lie in the span of the other's,
        and each of its random-effects blocks lies within one block of the other on the same grouping
        factor (so its covariance structure is a special case); lme4 does not check nesting and tests
        every consecutive pair, here the other pairs get no test.
    **sampler_options
        For refits: ``draws``, ``tune``, ``chains`` (default: each model's own), options of
        ``nutpie.sample`` such as ``target_accept``, and where they run: ``client=``, ``workers=``
        (see :func:`bayeslmm.engines.executor.run_tasks`; every local core by default).

    Returns
    -------
    ModelComparison
        A DataFrame, one row per model ordered by number of parameters (as ``lrt``/``anova``):
        ``formula``, ``npar``, ``elpd_loo``, ``SE``, ``p_loo``, ``looic``, ``elpd_diff`` and ``SE_diff``
        (against the best model), stacking ``weight``, ``n_high_k`` (observations with Pareto k >
        0.7) and ``best``. With ``kfold`` the criterion columns are ``elpd_kfold``, ``p_kfold``,
        ``kfoldic`` and ``n_high_k`` is missing. With ``refit``: ``AIC``, ``BIC``, ``logLik``,
        ``deviance``, ``Chisq``, ``Df``, ``P-val`` before ``best``. Printing gives an lrt-like table
        whose footer says how the two kinds of answer relate.

    Raises
    ------
    ValueError
        Fewer than two models, or both ``kfold`` and ``reloo``.
    NotFittedError
        A model is not fitted.
    DataError
        Models fitted to different data (rows, response or number of observations).

    Warns
    -----
    ParetoKWarning
        Some observations have Pareto k > 0.7 (PSIS-LOO only); says how many and what to do.
    """
    models = _collect_models(models, "lrt")
    if kfold is not None and reloo:
        raise ValueError("choose one of kfold= and reloo=True: K-fold already refits every observation")
    labels = _labels(models, names)
    if kfold is not None:
        from bayeslmm.analysis import refits

        criterion = "kfold"
        folds = refits.resolve_folds(models[0].design, kfold, None, None, random_seed)
        elpds = [refits.kfold_with_folds(m, folds, random_seed, **sampler_options) for m in models]
    else:
        criterion = "reloo" if reloo else "loo"
        elpds = [_model_loo(m, reloo, random_seed, sampler_options) for m in models]
    counts = {m.formula: n_high_k(e) for m, e in zip(models, elpds)}
    notes = []
    if criterion != "kfold" and any(counts.values()):
        message = high_k_message(counts, call="lrt")
        warnings.warn(message, ParetoKWarning, stacklevel=2)
        notes.append(message)
    table = _comparison_table(models, labels, elpds, criterion, method)
    if refit and all(hasattr(m, "fit_frequentist") for m in models) and len({m.family for m in models}) == 1:
        table = _likelihood_ratio_tests(table, dict(zip(labels, models)))
    return ModelComparison.build(table, criterion, dict(zip(labels, elpds)), notes, kfold)


def compare(*models: "Lmer", **options: Any) -> "ModelComparison":
    """Same as :func:`lrt` (pymer4 0.9's name for model comparison)."""
    return lrt(*models, **options)


def _model_loo(model: "Lmer", reloo: bool, random_seed: int | None, sampler_options: dict) -> Any:
    result = psis_loo(loo_tree(model))
    if reloo and n_high_k(result):
        from bayeslmm.analysis import refits

        result = refits.reloo(model, result, random_seed=random_seed, **sampler_options)
    return result


def _labels(models: list["Lmer"], names: list[str] | None) -> list[str]:
    if names is not None:
        names = [str(name) for name in names]
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(models)} distinct labels, one per model, got {names}")
        return names
    labels, seen = [], {}
    for model in models:
        seen[model.formula] = seen.get(model.formula, 0) + 1
        labels.append(model.formula if seen[model.formula] == 1 else f"{model.formula} [{seen[model.formula]}]")
    return labels


def _comparison_table(models: list["Lmer"], labels: list[str], elpds: list, criterion: str, method: str) -> pd.DataFrame:
    """The numbers: ArviZ's compare for differences and weights, ordered by complexity."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARVIZ_K_WARNING)
        arviz_table = az.compare(dict(zip(labels, elpds)), method=method, round_to="none")
    elpd_col, p_col, ic_col, _ = _CRITERIA[criterion]
    table = pd.DataFrame(
        {
            "formula": [m.formula for m in models],
            "npar": [n_parameters(m) for m in models],
            elpd_col: [e.elpd for e in elpds],
            "SE": [e.se for e in elpds],
            p_col: [e.p for e in elpds],
            ic_col: [-2.0 * e.elpd for e in elpds],
            "elpd_diff": arviz_table.loc[labels, "elpd_diff"].to_numpy(dtype=float),
            "SE_diff": arviz_table.loc[labels, "dse"].to_numpy(dtype=float),
            "weight": arviz_table.loc[labels, "weight"].to_numpy(dtype=float),
            "n_high_k": pd.array(
                [pd.NA if criterion == "kfold" else n_high_k(e) for e in elpds], dtype="Int64"
            ),
        },
        index=pd.Index(labels, name="model"),
    )
    table["best"] = table.index == arviz_table.index[arviz_table["rank"] == 0][0]
    order = sorted(range(len(models)), key=lambda i: (table["npar"].iloc[i], table["formula"].iloc[i], -table[elpd_col].iloc[i]))
    return table.iloc[order]


def _likelihood_ratio_tests(table: pd.DataFrame, models: dict[str, "Lmer"]) -> pd.DataFrame:
    """lme4's ``anova`` columns from ML refits, with a test of each row against the row above when nested."""
    from scipy import stats

    fits = {label: models[label].fit_frequentist(REML=False) for label in table.index}
    classical = pd.DataFrame(
        {
            "AIC": [fits[label].AIC for label in table.index],
            "BIC": [fits[label].BIC for label in table.index],
            "logLik": [fits[label].logLike for label in table.index],
            "deviance": [fits[label].deviance for label in table.index],
        },
        index=table.index,
    )
    chisq, df, p = [np.nan], [pd.NA], [np.nan]
    labels = list(table.index)
    for above, label in zip(labels, labels[1:]):
        extra = int(table.loc[label, "npar"] - table.loc[above, "npar"])
        if extra > 0 and nested(models[above].design, models[label].design):
            value = 2.0 * max(0.0, fits[label].logLike - fits[above].logLike)
            chisq.append(value)
            df.append(extra)
            p.append(float(stats.chi2.sf(value, extra)))
        else:
            chisq.append(np.nan)
            df.append(pd.NA)
            p.append(np.nan)
    classical["Chisq"] = chisq
    classical["Df"] = pd.array(df, dtype="Int64")
    classical["P-val"] = p
    best = table.pop("best")
    return table.join(classical).assign(best=best)


def nested(smaller: Design, larger: Design) -> bool:
    """Whether the model of ``smaller`` is a special case of that of ``larger`` (same rows assumed).

    True when the fixed-effect columns of ``smaller`` lie in the span of those of ``larger`` and each
    random-effects block of ``smaller`` lies within one block of ``larger`` on the same grouping
    factor (its columns in the span of that block's columns).
    """
    if not _in_span(smaller.X, larger.X):
        return False
    for block in smaller.blocks:
        candidates = [other for other in larger.blocks if other.factor == block.factor]
        if not any(_in_span(block.Z, other.Z) for other in candidates):
            return False
    return True


def _in_span(columns: np.ndarray, basis: np.ndarray) -> bool:
    if columns.shape[1] == 0:
        return True
    if basis.shape[1] == 0:
        return False
    coefficients, *_ = np.linalg.lstsq(basis, columns, rcond=None)
    residual = columns - basis @ coefficients
    return bool(np.all(np.linalg.norm(residual, axis=0) <= 1e-8 * np.maximum(np.linalg.norm(columns, axis=0), 1.0)))


class ModelComparison(pd.DataFrame):
    """Result of :func:`lrt`/:func:`compare`: a DataFrame with one row per model and an lrt-like print.

    Attributes
    ----------
    criterion : str
        ``"loo"``, ``"reloo"`` (PSIS-LOO with exact refits) or ``"kfold"``.
    elpd_results : dict
        The ArviZ ELPD object of each model, keyed by row label (pointwise values included).
    notes : list of str
        Warnings raised while comparing (high Pareto k).
    """

    _metadata: ClassVar[list[str]] = ["criterion", "elpd_results", "notes", "n_folds"]

    @property
    def _constructor(self):
        # derived frames (slices, arithmetic) are plain DataFrames: the print below needs every column
        return pd.DataFrame

    @classmethod
    def build(cls, table: pd.DataFrame, criterion: str, elpd_results: dict, notes: list[str], n_folds: int | None) -> "ModelComparison":
        result = cls(table)
        result.criterion = criterion
        result.elpd_results = elpd_results
        result.notes = notes
        result.n_folds = n_folds
        return result

    @property
    def table(self) -> pd.DataFrame:
        """The numbers as a plain DataFrame."""
        return pd.DataFrame(self)

    def _title(self) -> str:
        description = _CRITERIA[self.criterion][3].format(k=self.n_folds)
        first = next(iter(self.elpd_results.values()))
        return (
            f"Model comparison by {description} (bayeslmm)\n"
            f"Data: {first.n_data_points} observations; higher elpd = better predictions of new observations"
        )

    def _short_labels(self) -> list[str]:
        if list(self.index) == list(self["formula"]):
            return [f"m{i}" for i in range(1, len(self) + 1)]
        return [str(label) for label in self.index]

    def _display_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self).drop(columns=["formula", "best"])
        frame.index = pd.Index(self._short_labels())
        frame = frame.rename(columns={"n_high_k": f"k>{K_THRESHOLD}"})
        if self.criterion == "kfold":
            frame = frame.drop(columns=f"k>{K_THRESHOLD}")
        for column, text in (("Chisq", "{:.2f}".format), ("Df", lambda v: f"{int(v)}"), ("P-val", p_value_format)):
            if column in frame:  # rows without a test print blank
                frame[column] = [("" if pd.isna(value) else text(value)) for value in frame[column]]
        frame[""] = np.where(self["best"].to_numpy(), "<- best", "")
        return frame

    def _footer_lines(self) -> list[str]:
        lines = [
            "elpd_diff: elpd minus the best model's; SE_diff: its standard error (paired over observations).",
            "A difference larger than about 4 and than 2 SE_diff is clear; smaller ones are not.",
        ]
        if "Chisq" in self.columns:
            lines += [
                "AIC ... P-val: lme4's anova(refit = TRUE) of the maximum-likelihood refits; Chisq, Df, P-val test each "
                "model against the row above, where it is nested in it (none otherwise).",
                "The likelihood-ratio test asks whether the extra parameters are exactly 0; elpd_diff asks how much "
                "better the model predicts new observations. A clear elpd gain usually comes with a small P-val, but not "
                "the other way round: with many observations tiny effects are significant yet predict no better, and "
                "P-vals of variance parameters (tested at their boundary, 0) are conservative.",
            ]
        if self.criterion != "kfold" and self["n_high_k"].fillna(0).sum():
            # the full advice is in the ParetoKWarning (and in .notes); the table only points to it
            lines.append(
                f"k>{K_THRESHOLD}: observations whose PSIS-LOO estimate is unreliable; lrt(..., reloo=True) "
                "or lrt(..., kfold=10) replaces it (see the warning)"
            )
        return lines

    def summary_parts(self) -> SummaryParts:
        """The printed form as :class:`~bayeslmm.results.report.SummaryParts`: title, models, table, how to read it."""
        formats = {"npar": "{:d}".format, "weight": "{:.2f}".format}
        frame = self._display_frame()
        formats |= {
            c: "{:.1f}".format for c in frame.columns if c not in formats and c not in ("", f"k>{K_THRESHOLD}", "Chisq", "Df", "P-val")
        }
        formats |= {c: "{:.2f}".format for c in ("AIC", "BIC", "logLik", "deviance") if c in frame.columns}
        models = [f"{label}: {formula}" for label, formula in zip(self._short_labels(), self["formula"])]
        header = self._title().split("\n") + ["Models:", *models]
        return SummaryParts(header, [("", frame)], footer=self._footer_lines(), formats=formats)

    def to_text(self) -> str:
        """The printed form: title, model list, table, how to read it."""
        return layout_text(self.summary_parts())

    def __repr__(self) -> str:
        return self.to_text()

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, ax=None):
        """elpd with SE bars per model; see :func:`bayeslmm.plots.plot_compare`."""
        from bayeslmm.plots import plot_compare

        return plot_compare(self, ax=ax)

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())

