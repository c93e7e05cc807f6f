"""Post-hoc comparisons: estimated marginal means and their pairwise contrasts (pymer4's ``post_hoc``).

The marginal means are emmeans' (:func:`bayeslmm.spec.hypotheses.marginal_means`): on the reference
grid of all factor levels, numeric predictors at their means, averaged with equal weights over the
levels of the factors not named; contrasts are all pairwise differences within each level (combination)
of the grouping variables. A numeric marginal variable gives its marginal slopes (trends) instead, at
each level of the grouping variables, and their pairwise differences, as pymer4 does with emmeans'
``emtrends(model, pairwise ~ grouping, var = marginal)``
(:func:`bayeslmm.spec.hypotheses.marginal_trends`). Each is a linear function ``l' beta`` and gets two
answers:

Bayesian (every family)
    ``Estimate`` (posterior mean), the equal-tailed credible interval, ``SE`` (posterior SD) and ``pd``
    (probability of direction), from the draws of ``beta``. No multiplicity adjustment: every contrast
    is a statement about the same joint posterior, not a separate test.

Frequentist, as emmeans on an lmerTest fit (gaussian) or a glmer fit (other families)
    ``freq_Estimate``, ``freq_SE``, ``freq_DF`` (Satterthwaite; infinite for a GLMM, whose tests are
    emmeans' asymptotic z tests), the confidence interval, and for contrasts ``freq_T-stat`` (or
    ``freq_Z-stat``), ``freq_P-val`` and ``Sig``, adjusted for the number of contrasts in each group as
    emmeans does: ``"tukey"`` (studentized range with each contrast's df and the number of means
    compared), ``"bonferroni"`` (``"bonf"``), ``"holm"``, ``"sidak"``, ``"fdr"`` (Benjamini-Hochberg) or
    ``"none"``. Intervals use the Tukey, Sidak or Bonferroni critical value (Bonferroni also for holm
    and fdr, as emmeans); intervals of the means are not adjusted.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, NotFittedError
from bayeslmm.results import summaries
from bayeslmm.results.report import ReportTable, p_value_format, significance_stars
from bayeslmm.spec.hypotheses import marginal_means, marginal_trends, numeric_predictors

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel

__all__ = ["post_hoc", "adjust_p_values", "critical_value", "P_ADJUST"]

#: Multiplicity adjustments: name -> what the intervals use.
P_ADJUST = {"tukey": "tukey", "bonferroni": "bonferroni", "holm": "bonferroni", "sidak": "sidak",
            "fdr": "bonferroni", "none": "none"}
_ALIASES = {"bonf": "bonferroni", "bh": "fdr", "fdr_bh": "fdr"}


def _resolve_adjust(p_adjust: str) -> str:
    name = _ALIASES.get(str(p_adjust).lower(), str(p_adjust).lower())
    if name not in P_ADJUST:
        raise ValueError(f"p_adjust must be one of {sorted(P_ADJUST) + sorted(_ALIASES)}, got {p_adjust!r}")
    return name


def adjust_p_values(p: np.ndarray, t: np.ndarray, df: np.ndarray, n_means: int, method: str) -> np.ndarray:
    """Adjusted two-sided p-values of one family of contrasts, as emmeans.

    Parameters
    ----------
    p : ndarray, shape (m,)
        Unadjusted two-sided p-values.
    t, df : ndarray, shape (m,)
        t statistics and their degrees of freedom (for Tukey).
    n_means : int
        Number of means compared (Tukey's family size).
    method : str
        One of :data:`P_ADJUST`.
    """
    from scipy import stats

    p = np.asarray(p, dtype=float)
    m = len(p)
    if method == "none" or m == 0:
        return p
    if method == "tukey":
        return stats.studentized_range.sf(np.sqrt(2.0) * np.abs(t), n_means, df)
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    if method == "sidak":
        return 1.0 - (1.0 - p) ** m
    order = np.argsort(p)
    if method == "holm":
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    else:  # fdr: Benjamini-Hochberg step-up
        stepped = np.minimum.accumulate((m / np.arange(m, 0, -1)) * p[order][::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(1.0, stepped)
    return out


def critical_value(prob: float, df: float, m: int, n_means: int, method: str) -> float:
    """The multiplier of the SE in a two-sided interval of one of ``m`` contrasts (emmeans' ``confint``)."""
    from scipy import stats

    kind = P_ADJUST[method]
    if kind == "tukey":
        return _tukey_quantile(prob, n_means, round(float(df), 6))
    if kind == "bonferroni":
        return float(stats.t.ppf(1.0 - (1.0 - prob) / (2 * m), df))
    if kind == "sidak":
        return float(stats.t.ppf(1.0 - (1.0 - prob ** (1.0 / m)) / 2.0, df))
    return float(stats.t.ppf((1.0 + prob) / 2.0, df))


@functools.lru_cache(maxsize=256)
def _tukey_quantile(prob: float, n_means: int, df: float) -> float:
    from scipy import stats

    return float(stats.studentized_range.ppf(prob, n_means, df) / np.sqrt(2.0))


def post_hoc(
    model: "FittedModel",
    marginal_vars: str | list[str],
    grouping_vars: str | list[str] | None = None,
    p_adjust: str = "tukey",
    prob: float = 0.95,
) -> tuple[ReportTable, ReportTable]:
    """Estimated marginal means and pairwise contrasts, Bayesian next to emmeans' frequentist answer.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    marginal_vars : str or list of str
        Factor(s) of the fixed part whose marginal means are compared (combinations of their levels
        when several); or one numeric predictor, whose slopes (trends) are compared between the
        levels of ``grouping_vars``.
    grouping_vars : str or list of str, optional
        Factor(s) within whose levels the means are computed and compared (emmeans' ``| by``); for a
        numeric marginal variable, the factor(s) at whose levels its slope is estimated.
    p_adjust : str
        Adjustment of the frequentist p-values and contrast intervals; see the module docstring.
    prob : float
        Probability of the credible and confidence intervals.

    Returns
    -------
    means : ReportTable
        One row per (grouping, marginal) level: the factors' columns, ``Estimate``, ``<lo>_ci``,
        ``<hi>_ci``, ``SE``, ``pd``; where the model has a frequentist fit ``freq_Estimate``, ``freq_SE``,
        ``freq_DF``, ``freq_<lo>_ci``, ``freq_<hi>_ci``.
    contrasts : ReportTable
        One row per pair: ``Contrast`` (``"a - b"``), the grouping columns, the Bayesian columns, and
        ``freq_Estimate``, ``freq_SE``, ``freq_DF``, ``freq_<lo>_ci``, ``freq_<hi>_ci``, ``freq_T-stat``
        (``freq_Z-stat`` for a GLMM), ``freq_P-val``, ``Sig``.

    Raises
    ------
    NotFittedError
        The model is not fitted.
    DataError
        A name that is not a factor of the fixed part.
    ValueError
        An unknown ``p_adjust``.
    """
    if model.idata is None:
        raise NotFittedError("post_hoc() needs a fitted model: call .fit() first")
    method = _resolve_adjust(p_adjust)
    specs = [marginal_vars] if isinstance(marginal_vars, str) else list(marginal_vars)
    by = [] if grouping_vars is None else [grouping_vars] if isinstance(grouping_vars, str) else list(grouping_vars)
    trend = _trend_variable(model.design, specs)
    if trend is not None:  # emtrends: the slope of `trend` at each level of the grouping factors
        mm = marginal_trends(model.design, trend, by)
        what, noun = f"{trend}" + (f" by {' x '.join(by)}" if by else ""), "trends (slopes)"
    else:
        mm = marginal_means(model.design, specs, by)
        what, noun = " x ".join(specs) + (f" within {' x '.join(by)}" if by else ""), "means"
    low, high = summaries.interval_columns(prob)
    beta = summaries.stack_draws(model.posterior, "beta")
    means = mm.means.join(_bayes(beta, mm.L, prob))
    contrasts = mm.contrasts.join(_bayes(beta, mm.C, prob))
    frequentist = hasattr(model, "fit_frequentist")
    if frequentist:
        reference = model.fit_frequentist()
        freq_means = _with_df(reference.test_contrasts(mm.L))
        half = np.array([critical_value(prob, df, 1, 1, "none") for df in freq_means["DF"]]) * freq_means["SE"]
        means = means.join(
            pd.DataFrame({
                "freq_Estimate": freq_means["Estimate"], "freq_SE": freq_means["SE"], "freq_DF": freq_means["DF"],
                f"freq_{low}": freq_means["Estimate"] - half, f"freq_{high}": freq_means["Estimate"] + half,
            })
        )
        contrasts = contrasts.join(_freq_contrasts(_with_df(reference.test_contrasts(mm.C)), mm, method, prob))
    averaged = sorted(set(mm.averaged_over))
    header = [f"Estimated marginal {noun} of {what} (bayeslmm)", f"Formula: {model.formula}"]
    notes = []
    if averaged:
        notes.append(f"Averaged with equal weights over the levels of {', '.join(averaged)}.")
    held = {k: v for k, v in mm.covariates.items() if k != trend}
    if held:
        notes.append(f"Numeric predictors at their means: {', '.join(f'{k} = {v:.4g}' for k, v in held.items())}.")
    if trend is not None:
        notes.append(f"Slopes of the linear predictor per unit of {trend}, as emmeans' emtrends.")
    if model.family.link.name != "identity":
        notes.append(f"On the link scale ({model.family.link.name}).")
    mean_notes = notes + [
        f"Estimate, {low}, {high}, SE, pd: posterior mean, {prob:.0%} credible interval, posterior SD, probability of direction."
    ]
    contrast_notes = list(mean_notes)
    if frequentist:
        fit = "the REML fit, as emmeans on an lmerTest model (Satterthwaite df)" if model.family.name == "gaussian" else (
            "the Laplace (ML) fit, as emmeans on a glmer model (asymptotic z tests, df = inf)"
        )
        mean_notes.append(f"freq_: {fit}.")
        contrast_notes.append(
            f"freq_: {fit}; P-values and intervals adjusted by the {method} method within each family of {_family_text(mm)}."
        )
        contrast_notes.append("Posterior intervals need no adjustment: every contrast comes from the same joint posterior.")
    formats = {"freq_P-val": p_value_format, "pd": "{:.3f}".format, "freq_DF": "{:.2f}".format}
    means_table = ReportTable.build(means, header, mean_notes, formats)
    contrasts_header = [f"Pairwise contrasts of {what} (bayeslmm)", f"Formula: {model.formula}"]
    contrasts_table = ReportTable.build(contrasts, contrasts_header, contrast_notes, formats)
    return means_table, contrasts_table


def _trend_variable(design, specs: list[str]) -> str | None:
    """The numeric predictor whose trends are asked for (one numeric marginal variable), else None."""
    numeric = [name for name in specs if name in numeric_predictors(design)]
    if not numeric:
        return None
    if len(specs) > 1:
        raise DataError(
            f"post_hoc: {numeric[0]!r} is numeric, so its slopes (trends) are compared; give it alone as "
            "marginal_vars and the factors to compare them across as grouping_vars"
        )
    return numeric[0]


def _with_df(tests: pd.DataFrame) -> pd.DataFrame:
    """A GLMM's Wald z tests with emmeans' ``df = Inf`` (so one code path adjusts and intervals both)."""
    if "DF" in tests.columns:
        return tests
    return tests.assign(DF=np.inf)


def _bayes(beta: np.ndarray, L: np.ndarray, prob: float) -> pd.DataFrame:
    draws = beta @ L.T  # (chain, draw, rows)
    table = summaries.summarize(draws, pd.RangeIndex(L.shape[0]), prob=prob, diagnostics=False)
    return table


def _freq_contrasts(tests: pd.DataFrame, mm, method: str, prob: float) -> pd.DataFrame:
    low, high = (f"freq_{c}" for c in summaries.interval_columns(prob))
    p = np.empty(len(tests))
    half = np.empty(len(tests))
    statistic = "T-stat" if "T-stat" in tests.columns else "Z-stat"  # Z-stat: a GLMM's Wald z tests
    for group in np.unique(mm.group):
        rows = np.flatnonzero(mm.group == group)
        n_means = int(mm.family_size[rows[0]])
        p[rows] = adjust_p_values(
            tests["P-val"].to_numpy()[rows], tests[statistic].to_numpy()[rows], tests["DF"].to_numpy()[rows],
            n_means, method,
        )
        for row in rows:
            half[row] = critical_value(prob, tests["DF"].iloc[row], len(rows), n_means, method) * tests["SE"].iloc[row]
    out = pd.DataFrame({
        "freq_Estimate": tests["Estimate"], "freq_SE": tests["SE"], "freq_DF": tests["DF"],
        low: tests["Estimate"] - half, high: tests["Estimate"] + half,
        f"freq_{statistic}": tests[statistic], "freq_P-val": p,
    })
    out["Sig"] = [significance_stars(value) for value in p]
    return out


def _family_text(mm) -> str:
    sizes = sorted(set(int(s) for s in mm.family_size))
    counts = sorted(set(int(np.sum(mm.group == g)) for g in np.unique(mm.group)))
    return f"{'/'.join(map(str, counts))} contrasts among {'/'.join(map(str, sizes))} means"
