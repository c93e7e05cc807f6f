"""post_hoc: estimated marginal means and pairwise contrasts, against R's emmeans (lmerTest fit).

The frequentist columns reproduce emmeans 1.8.4 (Satterthwaite df) to 4 significant digits; the JSON was
written by validation/r/make_reference.R. Tolerances: estimates, SEs and intervals to 1e-4 relative;
the df to 1e-4 relative (both sides differentiate the REML deviance numerically; the fits agree to about
1e-6); adjusted p-values to 1e-4 absolute.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm import DataError, Lmer, NotFittedError
from bayeslmm.analysis.posthoc import adjust_p_values

REFERENCE = Path(__file__).parent / "reference"
EMMEANS = json.loads((REFERENCE / "lmer_extra.json").read_text())["emmeans"]
WORKFLOW = json.loads((REFERENCE / "lmer_workflow.json").read_text())


@pytest.fixture(scope="module")
def recipe(cake_interaction):
    return cake_interaction.post_hoc("recipe")


def _check_means(table: pd.DataFrame, rows: list[dict]) -> None:
    assert len(table) == len(rows)
    np.testing.assert_allclose(table["freq_Estimate"], [r["emmean"] for r in rows], rtol=1e-4)
    np.testing.assert_allclose(table["freq_SE"], [r["SE"] for r in rows], rtol=1e-4)
    np.testing.assert_allclose(table["freq_DF"], [r["df"] for r in rows], rtol=1e-4)
    np.testing.assert_allclose(table["freq_2.5_ci"], [r["lower.CL"] for r in rows], rtol=1e-4)
    np.testing.assert_allclose(table["freq_97.5_ci"], [r["upper.CL"] for r in rows], rtol=1e-4)


def _check_contrasts(table: pd.DataFrame, rows: list[dict], ci: list[dict] | None = None) -> None:
    assert len(table) == len(rows)
    np.testing.assert_allclose(table["freq_Estimate"], [r["estimate"] for r in rows], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(table["freq_SE"], [r["SE"] for r in rows], rtol=1e-4)
    np.testing.assert_allclose(table["freq_DF"], [r["df"] for r in rows], rtol=1e-4)
    np.testing.assert_allclose(table["freq_T-stat"], [r["t.ratio"] for r in rows], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(table["freq_P-val"], [r["p.value"] for r in rows], atol=1e-4)
    if ci is not None:
        np.testing.assert_allclose(table["freq_2.5_ci"], [r["lower.CL"] for r in ci], rtol=1e-4)
        np.testing.assert_allclose(table["freq_97.5_ci"], [r["upper.CL"] for r in ci], rtol=1e-4)


def test_recipe_means_and_tukey_contrasts_match_emmeans(recipe):
    means, contrasts = recipe
    assert list(means["recipe"]) == ["A", "B", "C"]
    _check_means(means, EMMEANS["recipe"]["emmeans"]["rows"])
    # equal weights over temperature: the mean of the six cell means of each recipe
    np.testing.assert_allclose(means["freq_Estimate"], list(EMMEANS["recipe"]["equal_weight_cellmean_average"].values()), rtol=1e-6)
    assert list(contrasts["Contrast"]) == ["A - B", "A - C", "B - C"]
    _check_contrasts(contrasts, EMMEANS["recipe"]["contrasts"]["tukey"]["rows"], EMMEANS["recipe"]["contrasts_confint_tukey"]["rows"])
    assert "Averaged with equal weights over the levels of temperature" in repr(means)
    assert "tukey method" in repr(contrasts) and contrasts._repr_html_().count("<table") == 1


@pytest.mark.parametrize("method", ["none", "bonferroni", "holm"])
def test_recipe_p_value_adjustments(cake_interaction, method):
    _, contrasts = cake_interaction.post_hoc("recipe", p_adjust=method)
    _check_contrasts(contrasts, EMMEANS["recipe"]["contrasts"][method]["rows"])


@pytest.mark.parametrize("method", ["tukey", "none", "bonferroni", "holm", "sidak", "fdr"])
def test_temperature_adjusted_p_values_and_intervals(cake_interaction, method):
    means, contrasts = cake_interaction.post_hoc("temperature", p_adjust=method)
    _check_means(means, EMMEANS["temperature"]["emmeans"]["rows"])
    reference = WORKFLOW["temperature_adjustments"][method]
    _check_contrasts(contrasts, reference["p"]["rows"], reference["ci"]["rows"])
    assert contrasts["Contrast"].iloc[0] == "175 - 185" and len(contrasts) == 15


def test_means_and_contrasts_within_groups(cake_interaction):
    means, contrasts = cake_interaction.post_hoc("recipe", grouping_vars="temperature")
    reference = EMMEANS["recipe_by_temperature"]
    assert list(means.columns[:2]) == ["recipe", "temperature"]
    assert [(r["recipe"], r["temperature"]) for r in reference["emmeans"]["rows"]] == list(
        zip(means["recipe"], means["temperature"].astype(str))
    )
    _check_means(means, reference["emmeans"]["rows"])
    assert [(r["contrast"], r["temperature"]) for r in reference["contrasts"]["rows"]] == list(
        zip(contrasts["Contrast"], contrasts["temperature"].astype(str))
    )
    # Tukey within each temperature: a family of 3 means
    _check_contrasts(contrasts, reference["contrasts"]["rows"])


def test_covariate_held_at_its_mean(cake):
    model = Lmer("angle ~ recipe * temp + (1 | recipe:replicate)", cake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 2 x 200 draws are enough for the frequentist columns checked here
        model.fit(draws=200, tune=200, chains=2, random_seed=2, progressbar=False)
    means, contrasts = model.post_hoc("recipe")
    reference = WORKFLOW["factor_by_covariate"]
    _check_means(means, reference["emmeans"]["rows"])
    _check_contrasts(contrasts, reference["contrasts"]["rows"])
    assert f"temp = {reference['temp_mean']:.4g}" in repr(means)


def test_bayesian_columns_are_posterior_summaries_of_the_same_draws(cake_interaction, recipe):
    means, contrasts = recipe
    assert list(means.columns[:6]) == ["recipe", "Estimate", "2.5_ci", "97.5_ci", "SE", "pd"]
    # means and differences come from the same draws, so the posterior mean of a difference is the
    # difference of the posterior means
    a, b, c = means["Estimate"]
    np.testing.assert_allclose(contrasts["Estimate"], [a - b, a - c, b - c], rtol=1e-10)
    assert ((contrasts["pd"] >= 0.5) & (contrasts["pd"] <= 1)).all()
    # the cell mean of recipe A at 175 is the intercept: its marginal mean averages the six cells
    beta = cake_interaction.posterior["beta"]
    terms = list(beta["fixed_term"].values)
    cell = lambda t: beta.sel(fixed_term="(Intercept)") + (beta.sel(fixed_term=t) if t else 0)  # noqa: E731
    a_mean = sum(cell(f"temperature[{t}]" if t != "175" else None) for t in ["175", "185", "195", "205", "215", "225"]) / 6
    assert "temperature[185]" in terms
    np.testing.assert_allclose(means["Estimate"].iloc[0], float(a_mean.mean()), rtol=1e-10)
    # the posterior and emmeans agree within the posterior SD
    assert (np.abs(means["Estimate"] - means["freq_Estimate"]) < means["SE"]).all()


def test_emmeans_is_post_hoc(cake_interaction, recipe):
    means, contrasts = cake_interaction.emmeans("recipe")
    pd.testing.assert_frame_equal(means.table, recipe[0].table)
    pd.testing.assert_frame_equal(contrasts.table, recipe[1].table)


def test_bad_requests_are_clear(cake_interaction, cake):
    with pytest.raises(DataError, match=r"'temp' is not a predictor of the fixed effects; factors: \['recipe', 'temperature'\]"):
        cake_interaction.post_hoc("temp")
    with pytest.raises(DataError, match="'angle' is not a predictor"):
        cake_interaction.post_hoc("angle")
    with pytest.raises(DataError, match="both as marginal and as grouping"):
        cake_interaction.post_hoc("recipe", "recipe")
    with pytest.raises(ValueError, match="p_adjust must be one of"):
        cake_interaction.post_hoc("recipe", p_adjust="scheffe")
    with pytest.raises(NotFittedError):
        Lmer("angle ~ recipe + (1 | replicate)", cake).post_hoc("recipe")


def test_adjustments_closed_forms():
    p = np.array([0.01, 0.04, 0.03])
    np.testing.assert_allclose(adjust_p_values(p, p, p, 3, "bonferroni"), [0.03, 0.12, 0.09])
    np.testing.assert_allclose(adjust_p_values(p, p, p, 3, "holm"), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(adjust_p_values(p, p, p, 3, "fdr"), [0.03, 0.04, 0.04])
    np.testing.assert_allclose(adjust_p_values(p, p, p, 3, "sidak"), 1 - (1 - p) ** 3)
    # Tukey with two means is the t test
    from scipy import stats

    np.testing.assert_allclose(
        adjust_p_values(np.array([0.2]), np.array([1.3]), np.array([12.0]), 2, "tukey"), 2 * stats.t.sf(1.3, 12), rtol=1e-6
    )


# ============================================================================== trends and GLMMs
# R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, emmeans 1.8.4-1:
#   m <- lmer(angle ~ recipe * temp + (1 | replicate), cake)
#   emtrends(m, pairwise ~ recipe, var = "temp")            # Satterthwaite df, Tukey
#   g <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
#   emmeans(g, pairwise ~ period)                           # asymptotic z, Tukey
EMTRENDS = {
    "trend": [0.1537142857, 0.1645714286, 0.1558095238], "SE": 0.02981897552, "df": 250,
    "estimate": [-0.01085714286, -0.002095238095, 0.008761904762], "contrast_SE": 0.0421703996,
    "t.ratio": [-0.2574588564, -0.04968504247, 0.207773814], "p.value": [0.9641249501, 0.9986399279, 0.9764845089],
    "lower.CL": [-0.1102847772, -0.1015228725, -0.09066572961],
}
GLMER_EMMEANS = {
    "emmean": [-1.398342864, -2.390267839, -2.52655908, -2.978088278],
    "SE": [0.2312140481, 0.3073938702, 0.3270801371, 0.4251646778],
    "estimate": [0.991924975, 1.128216216, 1.579745414, 0.136291241, 0.5878204387, 0.4515291977],
    "z.ratio": [3.272052997, 3.494767154, 3.743036512, 0.362569793, 1.266551009, 0.9447239329],
    "p.value": [0.005883568736, 0.002672957552, 0.001043498513, 0.9837001243, 0.5843188576, 0.7806739646],
    "asymp.LCL": [0.2131213358, 0.2988552936, 0.4954877114, -0.8294167022, -0.6044958404, -0.776335173],
}


def test_numeric_marginal_variable_gives_emtrends(cake):
    """A numeric marginal variable: its slope per recipe and the slopes' Tukey contrasts, as emtrends;
    the Bayesian slopes are the posterior means of beta[temp] + beta[recipe:temp] exactly."""
    model = Lmer("angle ~ recipe * temp + (1 | replicate)", cake)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=300, tune=300, chains=2, random_seed=3, progressbar=False)
    trends, contrasts = model.post_hoc("temp", "recipe")
    assert list(trends["recipe"]) == ["A", "B", "C"] and "trends (slopes) of temp by recipe" in str(trends)
    np.testing.assert_allclose(trends["freq_Estimate"], EMTRENDS["trend"], rtol=1e-4)
    np.testing.assert_allclose(trends["freq_SE"], EMTRENDS["SE"], rtol=1e-4)
    np.testing.assert_allclose(trends["freq_DF"], EMTRENDS["df"], rtol=1e-4)
    np.testing.assert_allclose(contrasts["freq_Estimate"], EMTRENDS["estimate"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(contrasts["freq_SE"], EMTRENDS["contrast_SE"], rtol=1e-4)
    np.testing.assert_allclose(contrasts["freq_T-stat"], EMTRENDS["t.ratio"], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(contrasts["freq_P-val"], EMTRENDS["p.value"], atol=1e-4)
    np.testing.assert_allclose(contrasts["freq_2.5_ci"], EMTRENDS["lower.CL"], rtol=1e-4)
    beta = model.posterior["beta"]
    slope = beta.sel(fixed_term="temp")
    expected = [slope] + [slope + beta.sel(fixed_term=f"recipe[{r}]:temp") for r in "BC"]
    np.testing.assert_allclose(trends["Estimate"], [float(d.mean()) for d in expected], rtol=1e-9)
    # the overall slope, without grouping: the average of the three
    overall, none = model.post_hoc("temp")
    assert len(overall) == 1 and len(none) == 0
    assert overall["freq_Estimate"].iloc[0] == pytest.approx(np.mean(EMTRENDS["trend"]), rel=1e-4)
    with pytest.raises(DataError, match="'temp' is numeric, so its slopes"):
        model.post_hoc(["temp", "recipe"])
    with pytest.raises(DataError, match="'temp' is a numeric predictor, not a factor"):
        model.post_hoc("recipe", "temp")
    reference = model.fit_frequentist()
    with pytest.raises(ValueError, match=r"L must be a finite \(r, 6\) matrix"):
        reference.wald_test(np.ones((1, 3)))
    with pytest.raises(ValueError, match="linearly dependent"):
        reference.wald_test(np.eye(6)[[1, 1]])


def test_glmm_means_and_contrasts_are_emmeans_z_tests_on_glmer():
    """A binomial model: emmeans' asymptotic z tests of the glmer fit (df = inf), Tukey-adjusted."""
    from bayeslmm import load_dataset

    model = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_dataset("cbpp"), family="binomial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=300, tune=300, chains=2, random_seed=3, progressbar=False)
    means, contrasts = model.post_hoc("period")
    np.testing.assert_allclose(means["freq_Estimate"], GLMER_EMMEANS["emmean"], rtol=1e-4)
    np.testing.assert_allclose(means["freq_SE"], GLMER_EMMEANS["SE"], rtol=1e-4)
    assert np.all(np.isinf(means["freq_DF"])) and np.all(np.isinf(contrasts["freq_DF"]))
    np.testing.assert_allclose(contrasts["freq_Estimate"], GLMER_EMMEANS["estimate"], rtol=1e-4)
    np.testing.assert_allclose(contrasts["freq_Z-stat"], GLMER_EMMEANS["z.ratio"], rtol=1e-4)
    np.testing.assert_allclose(contrasts["freq_P-val"], GLMER_EMMEANS["p.value"], atol=1e-4)
    np.testing.assert_allclose(contrasts["freq_2.5_ci"], GLMER_EMMEANS["asymp.LCL"], rtol=1e-4)
    assert "asymptotic z tests" in str(contrasts) and "logit" in str(means)
