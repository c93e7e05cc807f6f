"""Factor codings: factors={...}, ordered=True, custom contrasts and C(x, levels=[...]).

The REML fits of the coded models reproduce lme4/lmerTest's coefficients for the same codings
(tests/reference): treatment against another reference (releveled), polynomial contrasts (an ordered
factor), and a custom contrast, whose coefficient is the contrast of the level means that emmeans
reports. Tolerance 1e-5 relative (the REML fits agree to about 1e-6).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm import DataError, FormulaError, Lm, Lmer, load
from bayeslmm.spec.contrasts import custom_coding, polynomial_coding, treatment_coding

REFERENCE = Path(__file__).parent / "reference"
EXTRA = json.loads((REFERENCE / "lmer_extra.json").read_text())
WORKFLOW = json.loads((REFERENCE / "lmer_workflow.json").read_text())
TEMPERATURES = ["175", "185", "195", "205", "215", "225"]


def _coefficients(reference: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = [reference[name] for name in names]
    return np.array([r["Estimate"] for r in rows]), np.array([r["Std. Error"] for r in rows])


def test_contrast_matrices():
    poly = polynomial_coding("temperature", TEMPERATURES)
    np.testing.assert_allclose(poly.matrix, EXTRA["poly_contrasts"]["contrast_matrix"], atol=1e-12)
    assert poly.labels == tuple(EXTRA["poly_contrasts"]["contrast_colnames"])
    treatment = treatment_coding("recipe", ["B", "A", "C"])
    np.testing.assert_array_equal(treatment.matrix, [[0, 0], [1, 0], [0, 1]])
    custom = custom_coding("recipe", {"A": 1, "B": -0.5, "C": -0.5})
    # with the intercept column the coding is invertible and its first row of the inverse is the contrast
    hypothesis = np.linalg.inv(np.column_stack([np.ones(3), custom.matrix]))
    np.testing.assert_allclose(hypothesis[1], [1, -0.5, -0.5], atol=1e-12)
    np.testing.assert_allclose(custom.matrix[:, 1:].T @ custom.matrix[:, 1:], np.eye(1), atol=1e-12)
    assert custom.labels == ("A - 0.5 B - 0.5 C", "orth1")


def test_treatment_coding_in_a_given_order_matches_releveled_lme4(cake):
    reference = WORKFLOW["releveled"]
    model = Lmer("angle ~ recipe + temperature + (1 | recipe:replicate)", cake, factors={"recipe": ["B", "A", "C"]})
    assert model.design.fixed_terms[:3] == ("(Intercept)", "recipe[A]", "recipe[C]")
    coefs = model.fit_frequentist().coefs
    estimate, se = _coefficients(reference["coefficients"], reference["coef_names"])
    np.testing.assert_allclose(coefs["Estimate"], estimate, rtol=1e-5)
    np.testing.assert_allclose(coefs["SE"], se, rtol=1e-5)
    # the same order through the formula
    inline = Lmer("angle ~ C(recipe, levels=['B', 'A', 'C']) + temperature + (1 | recipe:replicate)", cake)
    assert inline.design.fixed_terms == model.design.fixed_terms
    np.testing.assert_allclose(inline.design.X, model.design.X)


def test_polynomial_contrasts_match_lme4(cake):
    reference = EXTRA["poly_contrasts"]
    model = Lmer("angle ~ temperature + (1 | recipe:replicate)", cake, factors={"temperature": TEMPERATURES}, ordered=True)
    assert model.design.fixed_terms == ("(Intercept)", "temperature[.L]", "temperature[.Q]", "temperature[.C]",
                                        "temperature[^4]", "temperature[^5]")
    coefs = model.fit_frequentist().coefs
    estimate, se = _coefficients(reference["coefficients"], reference["coef_names"])
    np.testing.assert_allclose(coefs["Estimate"], estimate, rtol=1e-5)
    np.testing.assert_allclose(coefs["SE"], se, rtol=1e-5)


def test_custom_contrast_estimates_the_contrast_of_means(cake):
    model = Lmer("angle ~ recipe + (1 | recipe:replicate)", cake, factors={"recipe": {"A": 1, "B": -1, "C": 0}})
    assert model.design.fixed_terms == ("(Intercept)", "recipe[A - B]", "recipe[orth1]")
    coefs = model.fit_frequentist().coefs
    # lme4 with the coding cbind(AvsB = c(1, -1, 0), ABvsC = c(1, 1, -2)) estimates (muA - muB) / 2 and
    # ((muA + muB) / 2 - muC) / 3; here the first coefficient is muA - muB itself, and the second the
    # unit-length contrast (muA + muB - 2 muC) / sqrt(6)
    reference = EXTRA["custom_contrasts"]["coefficients"]
    np.testing.assert_allclose(coefs.loc["recipe[A - B]", "Estimate"], 2 * reference["recipeAvsB"]["Estimate"], rtol=1e-5)
    np.testing.assert_allclose(coefs.loc["recipe[A - B]", "SE"], 2 * reference["recipeAvsB"]["Std. Error"], rtol=1e-5)
    np.testing.assert_allclose(abs(coefs.loc["recipe[orth1]", "Estimate"]),
                               6 / np.sqrt(6) * reference["recipeABvsC"]["Estimate"], rtol=1e-5)
    np.testing.assert_allclose(coefs.loc["(Intercept)", "Estimate"], reference["(Intercept)"]["Estimate"], rtol=1e-5)
    # and the A - B contrast of emmeans
    emmeans = EXTRA["emmeans"]["recipe"]["contrasts"]["none"]["rows"][0]
    np.testing.assert_allclose(coefs.loc["recipe[A - B]", "Estimate"], emmeans["estimate"], rtol=1e-5)


def test_fit_accepts_factors_and_rebuilds_the_design(cake):
    model = Lmer("angle ~ recipe + (1 | recipe:replicate)", cake)
    before = model.fit_frequentist()
    assert model.design.fixed_terms[1:] == ("recipe[B]", "recipe[C]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coefs = model.fit(draws=200, tune=200, chains=2, random_seed=1, progressbar=False, factors={"recipe": ["C", "A", "B"]})
    assert list(coefs.index) == ["(Intercept)", "recipe[A]", "recipe[B]"]
    assert model.factors == {"recipe": ["C", "A", "B"]}
    after = model.fit_frequentist()
    assert after is not before  # the REML fit of the old coding is not reused
    means = cake.groupby("recipe", observed=True)["angle"].mean()
    np.testing.assert_allclose(after.coefs.loc["recipe[A]", "Estimate"], means["A"] - means["C"], rtol=1e-6)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'REML'.*factors, ordered"):
        model.fit(REML=False, factors={"recipe": ["A", "B", "C"]})
    assert model.design.fixed_terms[1:] == ("recipe[A]", "recipe[B]")  # unchanged by the refused call


def test_coded_models_predict_new_rows_and_round_trip(cake, tmp_path):
    model = Lmer("angle ~ temperature + (1 | recipe:replicate)", cake, factors={"temperature": TEMPERATURES}, ordered=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)
    rows = cake[cake["temperature"].isin(["185", "205"])].head(3)  # an ordered categorical, two of six levels
    np.testing.assert_allclose(model.predict(rows)["Estimate"], model.fits[rows.index.to_numpy()], rtol=1e-10)
    with pytest.raises(DataError, match=r"'temperature'"):
        model.predict(pd.DataFrame({"temperature": ["250"], "recipe": ["A"], "replicate": ["1"]}))
    loaded = load(model.save(tmp_path / "coded.zarr"))
    assert loaded.factors == model.factors and loaded.design.fixed_terms == model.design.fixed_terms
    pd.testing.assert_frame_equal(loaded.coefs, model.coefs)


def test_inline_levels_work_in_every_model(cake):
    lm = Lm("angle ~ C(recipe, levels=['C', 'B', 'A'])", cake)
    assert lm.design.fixed_terms == ("(Intercept)", "recipe[B]", "recipe[A]")


def test_bad_factors_are_refused_before_fitting(cake):
    formula = "angle ~ recipe + (1 | recipe:replicate)"
    with pytest.raises(TypeError, match="factors must be a dict"):
        Lmer(formula, cake, factors=["recipe"])
    with pytest.raises(DataError, match="'receipe' is not a column"):
        Lmer(formula, cake, factors={"receipe": ["A", "B", "C"]})
    with pytest.raises(DataError, match=r"level\(s\) \['C'\] are not listed"):
        Lmer(formula, cake, factors={"recipe": ["A", "B"]})
    with pytest.raises(DataError, match=r"\['D'\] are not levels of the column"):
        Lmer(formula, cake, factors={"recipe": ["A", "B", "C", "D"]})
    with pytest.raises(DataError, match="sum to 1"):
        Lmer(formula, cake, factors={"recipe": {"A": 1, "B": 0, "C": 0}})
    with pytest.raises(ValueError, match="ordered=True gives polynomial contrasts.*factors="):
        Lmer(formula, cake, ordered=True)
    with pytest.raises(FormulaError, match="coded twice"):
        Lmer("angle ~ C(recipe, levels=['B', 'A', 'C']) + (1 | replicate)", cake, factors={"recipe": ["A", "B", "C"]})
    with pytest.raises(DataError, match=r"levels given for 'recipe' do not match"):
        Lmer("angle ~ C(recipe, levels=['B', 'A']) + (1 | replicate)", cake)
