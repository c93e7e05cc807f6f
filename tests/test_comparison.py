"""Model comparison by cross-validation (bayeslmm.comparison), on sleepstudy as lme4's LRTs.

Each sleepstudy model is fitted once (2 chains x 1000 draws after 1000 tuning steps). Tolerances:

- The Monte Carlo error of elpd_loo with 2000 draws is a few tenths (the pointwise terms are averages
  of 2000 importance-weighted draws); the differences tested here are 10-60 elpd units, with SE_diff
  of 6-12, so a ranking or a "> 2 SE_diff" check cannot flip by Monte Carlo noise.
- K-fold vs PSIS-LOO: 10-fold trains on 90% of the rows, so it is slightly pessimistic (about 1-3
  elpd here); the issue's criterion, within 2 SE of elpd (SE ~ 17), has a wide margin. The pointwise
  values must also agree row by row (correlation > 0.9), which catches misaligned held-out rows.
- Refits with unit weights against the original fit: posterior means differ by Monte Carlo error
  only, about sqrt(2) * SD / sqrt(ESS) < 0.1 SD with ESS > 200, so 0.3 SD is a 3-sigma bound.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
import xarray as xr

from bayeslmm import DataError, Lmer, NotFittedError, load_dataset
from bayeslmm.analysis import comparison, pointwise, refits
from bayeslmm.engines import collapsed as marginal
from bayeslmm.analysis.comparison import (
    ModelComparison, ParetoKWarning, compare, kfold, loo, lrt, n_parameters, nested, r2, waic,
)

NULL = "Reaction ~ 1 + (1|Subject)"
DAYS = "Reaction ~ Days + (1|Subject)"
SLOPE_ONLY = "Reaction ~ Days + (0 + Days|Subject)"
SLOPES = "Reaction ~ Days + (1 + Days|Subject)"
# lme4: anova() of the ML fits gives npar 3, 4, 4, 6
LME4_NPAR = {NULL: 3, DAYS: 4, SLOPE_ONLY: 4, SLOPES: 6}


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def fits(sleep) -> dict[str, Lmer]:
    models = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed, formula in enumerate(LME4_NPAR, start=1):
            model = Lmer(formula, sleep)
            model.fit(draws=1000, tune=1000, chains=2, random_seed=seed)
            models[formula] = model
    return models


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _pretend_fitted(model: Lmer, fitted: Lmer) -> Lmer:
    """Give an unfitted model another model's draws: the data checks run before any draw is read."""
    model.idata, model.sampler = fitted.idata, fitted.sampler
    return model


# ------------------------------------------------------------------------------ the LRTs of the course
def test_days_effect_beats_intercept_only_by_more_than_two_se(fits):
    # lme4: chisq 116.5 on 1 df, p < 1e-26
    table = _quiet(lrt, fits[NULL], fits[DAYS])
    assert list(table.index) == [NULL, DAYS]
    assert table.loc[DAYS, "best"] and not table.loc[NULL, "best"]
    diff, se = table.loc[NULL, ["elpd_diff", "SE_diff"]]
    assert diff < -2 * se and diff < -4
    assert table.loc[DAYS, "elpd_diff"] == 0


def test_random_slopes_ranked_above_slope_only_with_high_k_warning(fits):
    # lme4: chisq 22.1 on 2 df. About 10 +/- 7 elpd here, and 2-4 points with Pareto k > 0.7.
    with pytest.warns(ParetoKWarning, match=r"\d+ observations? of .*Pareto k > 0.7.*reloo=True.*kfold=10"):
        table = lrt(fits[SLOPES], fits[SLOPE_ONLY])
    assert table.loc[SLOPES, "best"]
    assert table.loc[SLOPE_ONLY, "elpd_diff"] < 0
    assert table["n_high_k"].sum() >= 1
    assert table.notes and "Pareto k" in table.notes[0]


def test_table_columns_order_and_values(fits):
    table = _quiet(lrt, *fits.values())
    assert isinstance(table, ModelComparison) and isinstance(table, pd.DataFrame)
    assert list(table.columns) == [
        "formula", "npar", "elpd_loo", "SE", "p_loo", "looic", "elpd_diff", "SE_diff", "weight", "n_high_k",
        "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "P-val", "best",
    ]
    assert table.index.name == "model"
    # ordered by complexity as lrt orders models; ties by formula
    assert list(table.index) == [NULL, SLOPE_ONLY, DAYS, SLOPES]
    assert list(table["npar"]) == [LME4_NPAR[f] for f in table.index]
    np.testing.assert_allclose(table["looic"], -2 * table["elpd_loo"])
    assert table["best"].sum() == 1
    best = table.index[table["best"]][0]
    assert best == SLOPES and table["elpd_loo"].idxmax() == best
    assert table.loc[best, "elpd_diff"] == 0 and table.loc[best, "SE_diff"] == 0
    assert (table["elpd_diff"] <= 0).all() and (table["SE_diff"] >= 0).all()
    assert table["weight"].sum() == pytest.approx(1, abs=1e-6)
    assert (table["p_loo"] > 0).all() and (table["SE"] > 0).all()


# ------------------------------------------------------------------------------ lme4's columns beside LOO
LRT = json.loads((Path(__file__).parent / "reference" / "lmer_extra.json").read_text())["lrt_sleepstudy"]["table"]
LRT_SLOPES = json.loads((Path(__file__).parent / "reference" / "lmer_workflow.json").read_text())["lrt_slopes"]["table"]


def test_likelihood_ratio_tests_of_the_course_match_lme4(fits):
    # anova(s1, s2, s3): ML refits; Chisq 116.46 (Days) and 42.14 ((Days | Subject) against (1 | Subject))
    table = _quiet(lrt, fits[NULL], fits[DAYS], fits[SLOPES])
    for label, key in ((NULL, "s1"), (DAYS, "s2"), (SLOPES, "s3")):
        for column, theirs in (("AIC", "AIC"), ("BIC", "BIC"), ("logLik", "logLik"), ("deviance", "deviance")):
            assert table.loc[label, column] == pytest.approx(LRT[key][theirs], rel=1e-6)
    assert np.isnan(table.loc[NULL, "Chisq"]) and pd.isna(table.loc[NULL, "Df"])
    assert table.loc[DAYS, "Chisq"] == pytest.approx(LRT["s2"]["Chisq"], rel=1e-5)
    assert table.loc[SLOPES, "Chisq"] == pytest.approx(LRT["s3"]["Chisq"], rel=1e-5)
    assert list(table["Df"][1:]) == [1, 2]
    assert table.loc[DAYS, "P-val"] == pytest.approx(LRT["s2"]["Pr(>Chisq)"], rel=1e-3)
    # the course's second pair: (0 + Days | Subject) against (Days | Subject), Chisq 22.14 on 2 df
    pair = _quiet(lrt, fits[SLOPE_ONLY], fits[SLOPES])
    assert pair.loc[SLOPES, "Chisq"] == pytest.approx(LRT_SLOPES["s3b"]["Chisq"], rel=1e-5)
    assert pair.loc[SLOPES, "P-val"] == pytest.approx(LRT_SLOPES["s3b"]["Pr(>Chisq)"], rel=1e-3)
    text = repr(pair)
    assert "22.14" in text and "likelihood-ratio test asks whether" in text and "elpd_diff asks" in text


def test_only_nested_pairs_are_tested(fits):
    table = _quiet(lrt, *fits.values())  # NULL, SLOPE_ONLY, DAYS, SLOPES by npar
    # (1 | Subject) is not within (0 + Days | Subject); DAYS has as many parameters as SLOPE_ONLY
    assert table["Chisq"].isna().tolist() == [True, True, True, False]
    assert nested(fits[NULL].design, fits[DAYS].design) and not nested(fits[DAYS].design, fits[NULL].design)
    assert nested(fits[SLOPE_ONLY].design, fits[SLOPES].design) and not nested(fits[NULL].design, fits[SLOPE_ONLY].design)
    first = next(line for line in repr(table).splitlines() if line.startswith("m1 "))
    assert "nan" not in first.lower() and "<NA>" not in first


def test_refit_false_keeps_only_the_loo_columns(fits):
    table = _quiet(lrt, fits[NULL], fits[DAYS], refit=False)
    assert "Chisq" not in table.columns and "AIC" not in table.columns and list(table.columns)[-1] == "best"
    assert "likelihood-ratio" not in repr(table)


def test_result_does_not_depend_on_argument_order(fits):
    models = list(fits.values())
    first = _quiet(lrt, *models)
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        other = _quiet(lrt, [models[i] for i in order])
        pd.testing.assert_frame_equal(first.table, other.table, rtol=1e-6)


def test_compare_is_lrt(fits):
    a = _quiet(lrt, fits[NULL], fits[DAYS])
    b = _quiet(compare, [fits[DAYS], fits[NULL]])
    pd.testing.assert_frame_equal(a.table, b.table)


def test_printed_form_reads_like_lrt(fits):
    table = _quiet(lrt, fits[DAYS], fits[NULL], fits[SLOPES])
    text = repr(table)
    assert text == str(table)
    assert "PSIS-LOO" in text and "Models:" in text
    assert f"m1: {NULL}" in text and f"m3: {SLOPES}" in text
    header = next(line for line in text.splitlines() if "elpd_loo" in line)
    for column in ("npar", "elpd_loo", "SE", "p_loo", "looic", "elpd_diff", "SE_diff", "weight", "k>0.7"):
        assert column in header
    best_line = next(line for line in text.splitlines() if line.startswith("m3 "))
    assert best_line.rstrip().endswith("<- best")
    assert "2 SE_diff" in text
    html = table._repr_html_()
    assert "<table" in html and "&lt;- best" in html
    named = _quiet(lrt, fits[DAYS], fits[NULL], names=["days", "null"])
    assert list(named.index) == ["null", "days"] and "null " in repr(named)


def test_n_parameters_as_lme4(fits):
    for formula, npar in LME4_NPAR.items():
        assert n_parameters(fits[formula]) == npar


# ------------------------------------------------------------------------------ refusals
def test_refuses_a_single_model(fits):
    with pytest.raises(ValueError, match="two or more models, got 1.*loo"):
        lrt(fits[DAYS])
    with pytest.raises(ValueError, match="two or more models"):
        compare([fits[DAYS]])


def test_refuses_unfitted_models(fits, sleep):
    unfitted = Lmer(NULL, sleep)
    with pytest.raises(NotFittedError, match=r"model 2 .* is not fitted; call .fit\(\)"):
        lrt(fits[DAYS], unfitted)
    for function in (loo, waic, r2, kfold):
        with pytest.raises(NotFittedError, match="not fitted"):
            function(unfitted)


def test_refuses_things_that_are_not_models(fits):
    with pytest.raises(TypeError, match="argument 2 is a str"):
        lrt(fits[DAYS], "Reaction ~ 1")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.iloc[:-18], "numbers of observations differ"),
        (lambda d: d.set_axis(np.arange(1000, 1000 + len(d))), "different rows"),
        (lambda d: d.iloc[::-1], "different order"),
        (lambda d: d.assign(Reaction=d["Reaction"] + 1.0), "response values differ in 180"),
    ],
)
def test_refuses_models_fitted_to_different_data(fits, sleep, change, message):
    other = _pretend_fitted(Lmer(NULL, change(sleep)), fits[NULL])
    with pytest.raises(DataError, match=f"fitted to different data: .*{message}.*same rows"):
        lrt(fits[DAYS], other)


def test_refuses_a_different_response(fits, sleep):
    other = _pretend_fitted(Lmer("np.log(Reaction) ~ Days + (1|Subject)", sleep), fits[DAYS])
    with pytest.raises(DataError, match="responses differ"):
        lrt(fits[DAYS], other)


def test_refuses_kfold_with_reloo(fits):
    with pytest.raises(ValueError, match="one of kfold= and reloo=True"):
        lrt(fits[NULL], fits[DAYS], kfold=5, reloo=True)


# ------------------------------------------------------------------------------ per-model criteria
def test_log_likelihood_computed_on_demand(fits):
    model = fits[DAYS]
    bare = copy.copy(model)
    bare.idata = xr.DataTree.from_dict(
        {name: model.idata[name].to_dataset() for name in ("posterior", "sample_stats", "observed_data")}
    )
    assert "log_likelihood" not in bare.idata.children
    expected = loo(model, warn=False)
    result = loo(bare, warn=False)
    assert "log_likelihood" in bare.idata.children
    assert result.elpd == pytest.approx(expected.elpd, abs=1e-8)
    np.testing.assert_allclose(result.pareto_k, expected.pareto_k)


def test_loo_warns_with_count_and_remedy(fits):
    with pytest.warns(ParetoKWarning, match=r"unreliable for \d+ observations? of .*reloo=True.*kfold"):
        result = loo(fits[SLOPES])
    assert comparison.n_high_k(result) >= 1


def test_waic_is_close_to_loo(fits):
    result = _quiet(waic, fits[DAYS])
    reference = loo(fits[DAYS], warn=False)
    # both estimate the same elpd; they differ by far less than its SE for a model without high-k points
    assert abs(result.elpd - reference.elpd) < 2
    assert result.waic == pytest.approx(-2 * result.elpd)
    assert result.p > 0 and "elpd_waic" in repr(result)


def test_r2_marginal_and_conditional(fits, sleep):
    table = r2(fits[SLOPES])
    assert list(table.index) == ["marginal", "conditional"]
    assert list(table.columns) == ["Estimate", "2.5_ci", "97.5_ci", "SE"]
    assert ((table["2.5_ci"] < table["Estimate"]) & (table["Estimate"] < table["97.5_ci"])).all()
    assert 0 < table.loc["marginal", "Estimate"] < table.loc["conditional", "Estimate"] < 1
    # the marginal R2 is about the OLS R2 of Days (balanced design: the fixed slope is the OLS slope)
    ols = np.corrcoef(sleep["Days"], sleep["Reaction"])[0, 1] ** 2
    assert abs(table.loc["marginal", "Estimate"] - ols) < 2 * table.loc["marginal", "SE"]
    # the subjects explain most of the rest: conditional R2 around 0.8
    assert 0.7 < table.loc["conditional", "Estimate"] < 0.9


# ------------------------------------------------------------------------------ refits
def test_unit_weights_reproduce_the_fit(fits):
    model = fits[SLOPE_ONLY]
    posterior, _, _ = refits.refitter(model).sample(np.ones(model.design.n_obs), draws=1000, tune=1000, chains=2, seed=7)
    for name in ("beta", "sigma"):
        original = model.posterior[name]
        difference = np.abs(posterior[name].mean(("chain", "draw")) - original.mean(("chain", "draw")))
        assert (difference < 0.3 * original.std(("chain", "draw"))).all(), name


def test_kfold_agrees_with_psis_loo_and_holds_each_fold_out(fits):
    model = fits[SLOPE_ONLY]
    folds = refits.make_folds(model.design.n_obs, 10, 4)
    result = kfold(model, folds=folds, random_seed=4)
    reference = loo(model, warn=False)
    assert abs(result.elpd - reference.elpd) < 2 * reference.se
    assert np.corrcoef(result.elpd_i, reference.elpd_i)[0, 1] > 0.9
    assert len(result.fold_seconds) == 10
    # the held-out rows of a fold are predicted by a posterior that never saw them: an independent
    # refit without them gives the same log predictive densities (up to Monte Carlo error)
    held = folds == 1
    refit, _ = marginal.sample_marginal(
        model.design.subset(~held), model.model_priors, draws=2000, tune=1000, chains=2, random_seed=99
    )
    log_lik = pointwise.log_likelihood(model, refit["posterior"].to_dataset(), np.flatnonzero(held))
    expected = logsumexp(log_lik.reshape(-1, held.sum()), axis=0) - np.log(4000)
    np.testing.assert_allclose(np.asarray(result.elpd_i)[held], expected, atol=0.1)
    in_sample = logsumexp(model.log_likelihood().values.reshape(-1, model.design.n_obs), axis=0)
    in_sample -= np.log(in_sample.size and model.log_likelihood().values.reshape(-1, model.design.n_obs).shape[0])
    assert np.mean(np.asarray(result.elpd_i)[held]) < np.mean(in_sample[held])  # held out: worse predicted
    # Gaussian models are refitted by the collapsed sampler: nothing is compiled
    assert refits.refitter(model).collapsed and result.compile_seconds < 0.5


def test_group_folds_keep_groups_together(fits):
    design = fits[DAYS].design
    folds = refits.resolve_folds(design, 6, None, "Subject", random_seed=1)
    assert sorted(set(folds)) == [1, 2, 3, 4, 5, 6]
    per_subject = pd.Series(folds).groupby(design.data["Subject"].to_numpy()).nunique()
    assert (per_subject == 1).all()
    with pytest.raises(ValueError, match="not a column"):
        refits.resolve_folds(design, 6, None, "Patient", random_seed=1)
    with pytest.raises(ValueError, match="k must be between 2"):
        refits.resolve_folds(design, 1, None, None, random_seed=1)


def test_reloo_refits_the_high_k_points(fits):
    models = [fits[SLOPES], fits[SLOPE_ONLY]]
    plain = _quiet(lrt, *models)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParetoKWarning)
        refitted = lrt(*models, reloo=True)
    assert refitted.criterion == "reloo" and (refitted["n_high_k"] == 0).all()
    assert refitted.loc[SLOPES, "best"]
    for label, before in plain.elpd_results.items():
        after = refitted.elpd_results[label]
        flagged = np.asarray(before.pareto_k) > comparison.K_THRESHOLD
        np.testing.assert_allclose(np.asarray(after.elpd_i)[~flagged], np.asarray(before.elpd_i)[~flagged])
        assert len(after.refit_seconds) == flagged.sum()


def test_lrt_with_kfold_uses_the_same_folds(fits):
    # the two models refitted above: already compiled
    table = lrt(fits[SLOPE_ONLY], fits[SLOPES], kfold=5, random_seed=3, draws=500, tune=500)
    assert table.criterion == "kfold"
    assert {"elpd_kfold", "p_kfold", "kfoldic"} <= set(table.columns)
    assert table["n_high_k"].isna().all()
    assert table.loc[SLOPES, "best"]
    assert table.loc[SLOPE_ONLY, "elpd_diff"] < 0
    assert "5-fold cross-validation" in repr(table)
