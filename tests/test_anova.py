"""anova(): lmerTest's Type III F tests next to the elpd gained by each term and its joint pd.

The F tests reproduce lmerTest 3.1-3 (``anova(m, type = 3)``, Satterthwaite): F and the sums of squares
to 1e-5 relative (the REML fits agree to about 1e-6), the denominator df to 1e-5 relative (numerical
derivatives on both sides), p-values to 1e-4 relative (a p-value of 3e-6 moves about ten times as
fast as F).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeslmm import Lmer, NotFittedError, load_dataset
from bayeslmm.analysis.anova import joint_pd

REFERENCE = Path(__file__).parent / "reference"
TYPE3 = json.loads((REFERENCE / "lmer_extra.json").read_text())["anova_type3"]
WORKFLOW = json.loads((REFERENCE / "lmer_workflow.json").read_text())
COLUMNS = {"SS": "Sum Sq", "MS": "Mean Sq", "NumDF": "NumDF", "DenomDF": "DenDF", "F-stat": "F value", "P-val": "Pr(>F)"}


def _check(table: pd.DataFrame, reference: dict) -> None:
    assert list(table.index) == list(reference)
    for ours, theirs in COLUMNS.items():
        want = [row[theirs] for row in reference.values()]
        rtol = 1e-4 if ours == "P-val" else 1e-5  # small p-values move 10x faster than F
        np.testing.assert_allclose(table[ours].to_numpy(dtype=float), want, rtol=rtol, err_msg=ours)


def _frequentist_anova(formula: str, data: pd.DataFrame, **options) -> pd.DataFrame:
    return Lmer(formula, data, **options).fit_frequentist().anova()


@pytest.fixture(scope="module")
def cake_unordered(cake) -> pd.DataFrame:
    data = cake.copy()
    data["temperature"] = pd.Categorical(data["temperature"].astype(str))  # as in the R script
    return data


def test_cake_interaction_matches_lmertest(cake_unordered):
    table = _frequentist_anova("angle ~ recipe * temperature + (1 | recipe:replicate)", cake_unordered)
    _check(table, TYPE3["cake_interaction"]["anova"])
    assert list(table.columns) == ["SS", "MS", "NumDF", "DenomDF", "F-stat", "P-val", "Sig"]
    assert list(table["Sig"]) == ["", "***", ""]


@pytest.mark.parametrize(
    "factors, ordered",
    [({"recipe": ["C", "B", "A"]}, False), ({"temperature": ["175", "185", "195", "205", "215", "225"]}, True),
     ({"recipe": {"A": 1, "B": -0.5, "C": -0.5}}, False)],
)
def test_type3_tests_do_not_depend_on_the_coding(cake_unordered, factors, ordered):
    # lmerTest gives the same table for treatment and sum-to-zero contrasts (anova_contr_sum)
    table = _frequentist_anova(
        "angle ~ recipe * temperature + (1 | recipe:replicate)", cake_unordered, factors=factors, ordered=ordered
    )
    _check(table, TYPE3["cake_interaction"]["anova_contr_sum"])


def test_numeric_predictors_match_lmertest(cake_unordered):
    _check(_frequentist_anova("angle ~ recipe + temp + (1 | recipe:replicate)", cake_unordered),
           TYPE3["cake_additive"]["anova"])
    # a factor interacting with a covariate: the factor's test is at temp = 0, as lmerTest's
    _check(_frequentist_anova("angle ~ recipe * temp + (1 | recipe:replicate)", cake_unordered),
           WORKFLOW["factor_by_covariate"]["anova"])
    table = _frequentist_anova("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    _check(table, TYPE3["sleepstudy"]["anova"])
    # one numerator df: F is the square of the coefficient's t
    reference = TYPE3["sleepstudy"]["coefficients"]["Days"]
    np.testing.assert_allclose(table.loc["Days", "F-stat"], reference["t value"] ** 2, rtol=1e-5)


@pytest.fixture(scope="module")
def bayesian_anova(cake_interaction):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cake_interaction.anova()


def test_bayesian_anova_table(bayesian_anova, cake_interaction):
    table = bayesian_anova
    assert list(table.columns) == ["SS", "MS", "NumDF", "DenomDF", "F-stat", "P-val", "Sig", "elpd_diff", "SE_diff", "pd"]
    _check(table, TYPE3["cake_interaction"]["anova"])  # the REML columns do not depend on the draws
    # temperature (F = 20.5 on 5 and 210 df) improves predictions clearly; the others do not
    assert table.loc["temperature", "elpd_diff"] > max(4, 2 * table.loc["temperature", "SE_diff"])
    for term in ("recipe", "recipe:temperature"):
        assert abs(table.loc[term, "elpd_diff"]) < 2 * table.loc[term, "SE_diff"] + 4
    assert table.loc["temperature", "pd"] == 1.0
    assert ((table["pd"] >= 0.5) & (table["pd"] <= 1)).all()
    # F-test p of 0.78 for recipe: the recipe means are not jointly away from 0 with any certainty
    assert table.loc["recipe", "pd"] < 0.9
    text = repr(table)
    assert "Type III analysis of variance" in text and "lmerTest" in text and "elpd_diff" in text
    assert "<table" in table._repr_html_()


def test_anova_without_refits_and_errors(cake_interaction, cake):
    table = cake_interaction.anova(elpd=False, force_orthogonal=True)
    assert "elpd_diff" not in table.columns and "pd" in table.columns
    assert "do not depend on the contrasts" in repr(table)
    with pytest.raises(NotFittedError):
        Lmer("angle ~ recipe + (1 | replicate)", cake).anova()
    model = Lmer("angle ~ 1 + (1 | replicate)", cake)
    model.idata = cake_interaction.idata  # the check runs before any draw is read
    with pytest.raises(ValueError, match="no fixed term besides the intercept"):
        model.anova()


def test_joint_pd_is_the_wald_probability_for_gaussian_draws():
    rng = np.random.default_rng(0)
    covariance = np.array([[1.0, 0.5, 0.2], [0.5, 2.0, 0.3], [0.2, 0.3, 1.5]])
    mean = np.array([0.8, -1.2, 0.9])
    draws = rng.multivariate_normal(mean, covariance, size=200_000)
    wald = mean @ np.linalg.solve(covariance, mean)
    # pd = (1 + P(chi2_3 < wald)) / 2, i.e. 2 (1 - pd) is the Wald test's p-value
    assert joint_pd(draws) == pytest.approx(0.5 * (1 + stats.chi2.cdf(wald, 3)), abs=3e-3)
    # one coefficient with a symmetric posterior: the usual probability of direction
    single = rng.normal(0.4, 1.0, size=200_000)
    assert joint_pd(single[:, None]) == pytest.approx(max((single > 0).mean(), (single < 0).mean()), abs=3e-3)
    # centred on 0: no evidence of direction
    assert joint_pd(rng.normal(size=(50_000, 2))) == pytest.approx(0.5, abs=0.02)


def test_glmm_anova_has_car_wald_chisquare_tests():
    """A Poisson model: car::Anova(glmer(TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)), type = 3) with lme4
    1.1-31 and car 3.1-1 gives YEAR 549.2873262 (2 df), cHEIGHT 38.23772288 (1 df, p 6.262988255e-10)."""
    model = Lmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", load_dataset("grouseticks"), family="poisson")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=200, tune=200, chains=2, random_seed=1, progressbar=False)
    table = model.anova(elpd=False)
    assert list(table.index) == ["YEAR", "cHEIGHT"] and list(table["Df"]) == [2, 1]
    np.testing.assert_allclose(table["Chisq"], [549.2873262, 38.23772288], rtol=1e-4)
    assert table.loc["cHEIGHT", "P-val"] == pytest.approx(6.262988255e-10, rel=1e-3)
    assert table.loc["YEAR", "Sig"] == "***" and "car::Anova(type = 3)" in str(table)
    assert 0.5 <= table.loc["cHEIGHT", "pd"] <= 1
