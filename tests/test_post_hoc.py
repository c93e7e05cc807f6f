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
    with pytest.raises(DataError, match="'temp' is not a factor of the fixed effects"):
        cake_interaction.post_hoc("temp")
    with pytest.raises(DataError, match="'angle' is not a factor.*numeric"):
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
