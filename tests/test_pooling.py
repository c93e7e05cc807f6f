"""Complete, no and partial pooling: Lm, Lm2, the least-squares references and the comparison tables.

Four models are fitted once each (2 chains x 500 draws after 500 tuning steps): Lm2 and Lmer
``(1 | Subject)`` on sleepstudy, Lm and Lmer ``(x | participant)`` on the Simpson's-paradox data.
Monte Carlo tolerances are ``4 * posterior SD / sqrt(ESS_bulk)`` per quantity.
"""

from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from bayeslmm import DataError, FormulaError, Lmer, NotFittedError, Prior, load_dataset, results, simulate_simpson
from bayeslmm.analysis import pooling
from bayeslmm.spec.design import build_design
from bayeslmm.spec.formula import parse_formula
from bayeslmm.results.frequentist import fit_frequentist
from bayeslmm import Lm, Lm2
from bayeslmm.analysis.pooling import (
    compare_fixed_effects,
    compare_group_estimates,
    compare_variance_components,
    complete_pooling_ols,
    no_pooling_ols,
)

SETTINGS = {"draws": 500, "tune": 500, "chains": 2, "random_seed": 5}
MEAN_OLS_DAYS_SLOPE = 10.467286  # mean of the 18 per-subject OLS slopes (= the pooled OLS slope: balanced)


def _fit(model, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**(SETTINGS | settings))
    return model


@pytest.fixture(scope="module")
def sleepstudy() -> pd.DataFrame:
    return load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def simpson() -> pd.DataFrame:
    return simulate_simpson()


@pytest.fixture(scope="module")
def lm2_and_sample_calls(sleepstudy):
    """Lm2 with a weak slope prior (the intercept's default prior is centred at each group's OLS value)."""
    model = Lm2("Reaction ~ Days", sleepstudy, group="Subject", priors={"Days": Prior("Normal", mu=0, sigma=1000)})
    from bayeslmm.engines import pymc_model, regression

    with mock.patch.object(regression, "sample_regression", wraps=regression.sample_regression) as exact, \
            mock.patch.object(pymc_model, "build_group_regressions", side_effect=AssertionError("compiled")):
        _fit(model)
    return model, exact.call_count


@pytest.fixture(scope="module")
def lm2(lm2_and_sample_calls) -> Lm2:
    return lm2_and_sample_calls[0]


@pytest.fixture(scope="module")
def intercepts(sleepstudy) -> Lmer:
    return _fit(Lmer("Reaction ~ Days + (1 | Subject)", sleepstudy))


@pytest.fixture(scope="module")
def simpson_lm(simpson) -> Lm:
    return _fit(Lm("y ~ x", simpson))


@pytest.fixture(scope="module")
def simpson_lmer(simpson) -> Lmer:
    return _fit(Lmer("y ~ x + (x | participant)", simpson))


def _same_fit(model: Lmer) -> Lmer:
    """A new model object with ``model``'s posterior (its caches empty)."""
    twin = Lmer(model.formula, model.design.data)
    twin.restore(model.idata, model.sampler, model.warnings)
    return twin


def _per_subject_ols(data: pd.DataFrame) -> pd.DataFrame:
    rows = {s: np.polyfit(g["Days"], g["Reaction"], 1)[::-1] for s, g in data.groupby("Subject")}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["(Intercept)", "Days"])


# ----------------------------------------------------------------------------- least squares
def test_no_pooling_ols_is_per_subject_regression(sleepstudy):
    design = build_design(parse_formula("Reaction ~ Days + (Days | Subject)"), sleepstudy)
    table = no_pooling_ols(design)
    assert list(table.columns) == ["(Intercept)", "Days"] and table.index.name == "Subject"
    np.testing.assert_allclose(table.to_numpy(), _per_subject_ols(sleepstudy).to_numpy(), rtol=1e-10)
    assert table["Days"].mean() == pytest.approx(MEAN_OLS_DAYS_SLOPE, abs=1e-5)


def test_no_pooling_ols_random_intercepts_share_the_slope(sleepstudy):
    """(1 | Subject): one intercept per subject and a common Days slope, as lm(Reaction ~ 0 + Subject + Days)."""
    design = build_design(parse_formula("Reaction ~ Days + (1 | Subject)"), sleepstudy)
    table = no_pooling_ols(design)
    dummies = pd.get_dummies(sleepstudy["Subject"]).to_numpy(float)
    coef = np.linalg.lstsq(np.column_stack([dummies, sleepstudy["Days"]]), sleepstudy["Reaction"], rcond=None)[0]
    np.testing.assert_allclose(table["(Intercept)"], coef[:-1], rtol=1e-10)
    np.testing.assert_allclose(table["Days"], coef[-1], rtol=1e-10)


def test_complete_pooling_ols(sleepstudy):
    design = build_design(parse_formula("Reaction ~ Days + (1 | Subject)"), sleepstudy)
    slope, intercept = np.polyfit(sleepstudy["Days"], sleepstudy["Reaction"], 1)
    np.testing.assert_allclose(complete_pooling_ols(design), [intercept, slope], rtol=1e-10)


def test_no_pooling_ols_warns_for_unidentified_group(sleepstudy):
    data = sleepstudy[(sleepstudy["Subject"] != 308) | (sleepstudy["Days"] == 0)]
    design = build_design(parse_formula("Reaction ~ Days + (Days | Subject)"), data)
    with pytest.warns(UserWarning, match=r"1 group\(s\) of 'Subject'.*NaN: 308"):
        table = no_pooling_ols(design)
    assert table.loc[308].isna().all() and table.drop(index=308).notna().all().all()


# ----------------------------------------------------------------------------- Lm2
def test_lm2_is_one_model_for_all_groups(lm2_and_sample_calls):
    """Every group by the exact regression engine (one call each), no PyMC model compiled; one posterior."""
    model, calls = lm2_and_sample_calls
    assert calls == 18 and model.sampler.sampler.startswith("exact regression")
    assert dict(model.posterior["beta"].sizes) == {"chain": 2, "draw": 500, "group": 18, "fixed_term": 2}
    assert dict(model.posterior["sigma"].sizes) == {"chain": 2, "draw": 500, "group": 18}


def test_lm2_group_coefficients_match_per_subject_ols(lm2, sleepstudy):
    ols = _per_subject_ols(sleepstudy)
    np.testing.assert_allclose(no_pooling_ols(lm2).to_numpy(), ols.to_numpy(), rtol=1e-10)
    long = lm2.fixef_summary().set_index(["level", "term"])
    expected = ols.stack().reindex(long.index)
    tolerance = 4 * long["SE"] / np.sqrt(long["ESS_bulk"])
    assert (np.abs(long["Estimate"] - expected) < tolerance).all(), (long["Estimate"] - expected) / tolerance
    np.testing.assert_allclose(lm2.fixef.stack().reindex(long.index), long["Estimate"])


def test_lm2_coefs_are_the_population_summary(lm2):
    coefs = lm2.coefs
    assert list(coefs.columns) == ["Estimate", "2.5_ci", "97.5_ci", "SE", "DF", "T-stat", "P-val"]
    assert coefs.loc["Days", "Estimate"] == pytest.approx(MEAN_OLS_DAYS_SLOPE, abs=0.1)
    # pymer4's SE: SD of the group estimates over sqrt(G), here close to the per-subject OLS slopes' 1.546
    assert coefs.loc["Days", "SE"] == pytest.approx(lm2.fixef["Days"].std() / np.sqrt(18))
    assert coefs.loc["Days", "SE"] == pytest.approx(1.546, abs=0.05)
    assert (coefs["DF"] == 17).all() and (coefs["P-val"] < 1e-4).all()
    assert (coefs["2.5_ci"] < coefs["Estimate"]).all() and (coefs["Estimate"] < coefs["97.5_ci"]).all()


def test_lm2_tables_and_text(lm2, sleepstudy):
    assert lm2.fixef.shape == (18, 2) and lm2.fixef.index.name == "Subject"
    long = lm2.fixef_summary(prob=0.9)
    assert long.shape[0] == 36 and {"factor", "level", "term", "5_ci", "95_ci", "R_hat"} <= set(long.columns)
    assert lm2.sigma.shape[0] == 18 and (lm2.sigma["Estimate"] > 0).all()
    data = lm2.data
    assert len(data) == 180 and {"fits", "residuals"} <= set(data.columns)
    row = data.iloc[0]
    assert row["fits"] == pytest.approx(lm2.fixef.loc[row["Subject"]] @ np.array([1.0, row["Days"]]))
    np.testing.assert_allclose(data["fits"] + data["residuals"], data["Reaction"])
    assert dict(lm2.idata["log_likelihood"].to_dataset()["y"].sizes) == {"chain": 2, "draw": 500, "obs": 180}
    text = lm2.summary()
    assert "no pooling" in text and "Population summary" in text and "Diagnostics" in text
    assert repr(lm2).startswith("Lm2('Reaction ~ Days', group='Subject', n=180, 18 groups; fitted")
    assert sleepstudy.shape == (180, 3)  # input untouched


def test_lm2_bad_input(sleepstudy):
    with pytest.raises(DataError, match="did you mean 'Subject'"):
        Lm2("Reaction ~ Days", sleepstudy, group="subject")
    with pytest.raises(FormulaError, match="without random-effects terms"):
        Lm2("Reaction ~ Days + (1 | Subject)", sleepstudy, group="Subject")
    short = sleepstudy[(sleepstudy["Subject"] != 308) | (sleepstudy["Days"] < 2)]  # 308 keeps 2 rows for 2 coefs
    flat = sleepstudy[(sleepstudy["Subject"] != 309) | (sleepstudy["Days"] == 0)]
    flat = pd.concat([flat] + [flat[flat["Subject"] == 309]] * 2)  # 309: three rows, all at Days 0
    for data, level in [(short, 308), (flat, 309)]:
        with pytest.warns(UserWarning, match=rf"1 group\(s\) of 'Subject' excluded.*{level}"):
            model = Lm2("Reaction ~ Days", data, group="Subject")
        assert model.excluded == [level] and len(model.levels) == 17 and level not in model.levels
    one = sleepstudy[(sleepstudy["Subject"] == 308) | (sleepstudy["Days"] == 0)]  # others: 1 row each
    with pytest.raises(DataError, match="at least two groups"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Lm2("Reaction ~ Days", one, group="Subject")
    model = Lm2("Reaction ~ Days", sleepstudy, group="Subject")
    for what in ("coefs", "fixef", "data", "sigma"):
        with pytest.raises(NotFittedError, match="call .fit"):
            getattr(model, what)
    with pytest.raises(NotFittedError):
        model.summary()
    with pytest.raises(ValueError, match="draws"):
        model.fit(draws=0)


# ----------------------------------------------------------------------------- Lm
def test_lm_results_api(simpson_lm, simpson):
    coefs = simpson_lm.coefs
    assert list(coefs.index) == ["(Intercept)", "x"]
    assert list(coefs.columns) == ["Estimate", "2.5_ci", "97.5_ci", "SE", "pd", "R_hat", "ESS_bulk", "ESS_tail"]
    slope, intercept = np.polyfit(simpson["x"], simpson["y"], 1)
    assert abs(coefs.loc["x", "Estimate"] - slope) < 0.25 * coefs.loc["x", "SE"]
    data = simpson_lm.data
    line = coefs.loc["(Intercept)", "Estimate"] + coefs.loc["x", "Estimate"] * simpson["x"]
    np.testing.assert_allclose(data["fits"], line)
    np.testing.assert_allclose(data["fits"] + data["residuals"], simpson["y"])
    assert list(simpson_lm.sigma.index) == ["Residual"] and simpson_lm.sigma["Std"].iloc[0] > 0
    text = simpson_lm.summary()
    assert "complete pooling" in text and "Coefficients" in text and "Residual SD" in text
    assert repr(simpson_lm).startswith("Lm('y ~ x'")
    for name in ("fixef", "ranef", "ranef_var", "ranef_corr", "ranef_summary"):
        assert not hasattr(simpson_lm, name)


def test_lm_bad_input(simpson):
    with pytest.raises(FormulaError, match="use Lmer"):
        Lm("y ~ x + (1 | participant)", simpson)
    model = Lm("y ~ x", simpson)
    with pytest.raises(NotFittedError):
        model.coefs


# ----------------------------------------------------------------------------- Simpson's paradox
def test_simpson_complete_pooling_positive_partial_pooling_negative(simpson_lm, simpson_lmer):
    assert simpson_lm.coefs.loc["x", "97.5_ci"] > simpson_lm.coefs.loc["x", "2.5_ci"] > 0
    assert simpson_lmer.coefs.loc["x", "2.5_ci"] < simpson_lmer.coefs.loc["x", "97.5_ci"] < 0
    table = compare_fixed_effects(simpson_lmer)
    assert table.loc["x", "freq_Estimate"] < 0 and table.loc["x", "freq_97.5_ci"] < 0
    groups = compare_group_estimates(simpson_lmer)
    slopes = groups[groups["term"] == "x"]
    assert (slopes["no_pooling"] < 0).all() and (slopes["partial_bayes"] < 0).all()
    assert (slopes["complete_pooling"] > 0).all()


# ----------------------------------------------------------------------------- comparison tables
def test_shrinkage_between_no_and_complete_pooling(intercepts):
    table = compare_group_estimates(intercepts)
    assert table.shape[0] == 18 and (table["term"] == "(Intercept)").all() and (table["n"] == 10).all()
    low = np.minimum(table["no_pooling"], table["complete_pooling"])
    high = np.maximum(table["no_pooling"], table["complete_pooling"])
    assert ((low < table["partial_freq"]) & (table["partial_freq"] < high)).all()
    # The posterior mean is between for every draw's variance; allow its Monte Carlo error only.
    posterior = intercepts.posterior
    totals = results.stack_draws(posterior, "ranef_Subject") + results.stack_draws(posterior, "beta")[..., None, :1]
    ess = results.summarize(totals[..., 0], pd.RangeIndex(18))["ESS_bulk"].to_numpy()
    slack = 4 * table["partial_bayes_SE"] / np.sqrt(ess)
    assert ((low - slack < table["partial_bayes"]) & (table["partial_bayes"] < high + slack)).all()
    distance = np.abs(table[["no_pooling", "partial_freq", "partial_bayes"]].sub(table["complete_pooling"], axis=0))
    assert distance["partial_bayes"].sum() < 0.97 * distance["no_pooling"].sum()
    assert distance["partial_freq"].sum() < 0.97 * distance["no_pooling"].sum()


def test_group_table_columns_and_values(intercepts, sleepstudy):
    table = compare_group_estimates(intercepts, prob=0.9)
    assert list(table.columns) == [
        "factor", "level", "term", "n", "no_pooling", "partial_freq", "partial_bayes", "partial_bayes_SE",
        "partial_bayes_5_ci", "partial_bayes_95_ci", "complete_pooling",
    ]  # fmt: skip
    reference = fit_frequentist(intercepts.design)
    np.testing.assert_allclose(table["partial_freq"], reference.fixef["(Intercept)"].to_numpy())
    np.testing.assert_allclose(table["partial_bayes"], intercepts.fixef["(Intercept)"].to_numpy())
    assert (table["partial_bayes_5_ci"] < table["partial_bayes"]).all()
    assert (table["partial_bayes"] < table["partial_bayes_95_ci"]).all()
    assert table.attrs["frequentist"] == "REML"


def test_fixed_effects_table(intercepts):
    table = compare_fixed_effects(intercepts)
    assert list(table.columns) == [
        "freq_Estimate", "freq_SE", "freq_2.5_ci", "freq_97.5_ci", "freq_DF", "freq_P-val",
        "bayes_Estimate", "bayes_SE", "bayes_2.5_ci", "bayes_97.5_ci", "bayes_pd",
    ]  # fmt: skip
    reference = fit_frequentist(intercepts.design).coefs
    np.testing.assert_allclose(table["freq_Estimate"], reference["Estimate"])
    np.testing.assert_allclose(table[["freq_2.5_ci", "freq_97.5_ci"]], reference[["2.5_ci", "97.5_ci"]])
    np.testing.assert_allclose(table["bayes_Estimate"], intercepts.coefs["Estimate"])
    assert "Satterthwaite" in table.attrs["df_method"]
    narrow = compare_fixed_effects(intercepts, prob=0.8, REML=False)
    assert (narrow["freq_90_ci"] - narrow["freq_10_ci"] < table["freq_97.5_ci"] - table["freq_2.5_ci"]).all()
    assert narrow.attrs["frequentist"] == "ML"


def test_variance_components_table(intercepts):
    table = compare_variance_components(intercepts, n_boot=20, random_seed=1)
    assert list(table["group"]) == ["Subject", "Residual"] and list(table["parameter"]) == ["sd", "sd"]
    reference = fit_frequentist(intercepts.design).ranef_var
    np.testing.assert_allclose(table["freq_Estimate"], reference["Std"])
    np.testing.assert_allclose(table["bayes_Estimate"], intercepts.ranef_var["Std"])
    assert ((table["freq_2.5_ci"] < table["freq_Estimate"]) & (table["freq_Estimate"] < table["freq_97.5_ci"])).all()
    assert table.attrs["n_boot"] == 20
    plain = compare_variance_components(intercepts)
    assert "freq_2.5_ci" not in plain.columns and "bayes_97.5_ci" in plain.columns


def test_variance_components_with_correlation(simpson_lmer):
    table = compare_variance_components(simpson_lmer)
    assert list(table["parameter"]) == ["sd", "sd", "sd", "corr"]
    assert table["term"].iloc[-1] == "(Intercept), x"
    assert table["bayes_Estimate"].iloc[-1] == pytest.approx(simpson_lmer.ranef_corr["Corr"].iloc[0])


def test_stored_frequentist_fit_is_reused(intercepts, monkeypatch):
    import bayeslmm.models.lmer

    intercepts = _same_fit(intercepts)  # a fresh model object: nothing cached yet
    stored = intercepts.fit_frequentist()
    monkeypatch.setattr(bayeslmm.models.lmer, "fit_frequentist", mock.Mock(side_effect=AssertionError("refitted")))
    monkeypatch.setattr(pooling, "fit_frequentist", mock.Mock(side_effect=AssertionError("refitted")))
    assert intercepts.fit_frequentist() is stored and intercepts.frequentist is stored
    compare_fixed_effects(intercepts)
    with pytest.raises(AssertionError, match="refitted"):  # ML was asked for: the REML fit does not do
        compare_fixed_effects(intercepts, REML=False)


def test_tables_bad_input(sleepstudy, simpson_lm, intercepts, monkeypatch):
    unfitted = Lmer("Reaction ~ Days + (1 | Subject)", sleepstudy)
    monkeypatch.setattr(pooling, "fit_frequentist", mock.Mock(side_effect=AssertionError("fitted first")))
    for table in (compare_group_estimates, compare_fixed_effects, compare_variance_components):
        with pytest.raises(NotFittedError, match="call model.fit"):
            table(unfitted)
        with pytest.raises(TypeError, match="pass a fitted Lmer"):
            table(simpson_lm)
    with pytest.raises(FormulaError, match="no random-effects term"):  # refused before any table
        Lmer("Reaction ~ Days", sleepstudy)
    with pytest.raises(DataError, match="not a grouping factor"):
        compare_group_estimates(intercepts, factor="Days")
    with pytest.raises(ValueError, match="n_boot"):
        compare_variance_components(intercepts, n_boot=-1)
    with pytest.raises(DataError, match="no grouping factor"):
        no_pooling_ols(build_design(parse_formula("Reaction ~ Days"), sleepstudy))
