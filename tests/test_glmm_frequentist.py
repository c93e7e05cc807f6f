"""The Laplace engine (lme4's glmer) against lme4 1.1-31 and glmmTMB 1.1.5.

Reference numbers: tests/reference/glmer.json, made by validation/r/make_reference.R from the data
sets the package ships. "n significant digits" means a difference of at most half a unit in the n-th
significant digit of the reference. Estimates, standard errors and SDs agree to 4 digits (the issue's
requirement); lme4's own optimiser stops 1e-5 to 1e-4 (relative) from the optimum of its deviance, so
more digits would test lme4's stopping rule. Log-likelihoods agree to 1e-4 absolute. Term names differ
in spelling only: formulae writes ``period[2]`` where R writes ``period2``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm import Lmer, load_dataset
from bayeslmm.engines import laplace
from bayeslmm.errors import ConvergenceWarning, DataError, UnsupportedSyntaxError
from bayeslmm.results.frequentist import FrequentistResult, fit_frequentist

REFERENCE = json.loads((Path(__file__).parent / "reference" / "glmer.json").read_text())
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"


def _digits(actual: float, expected: float, digits: int = 4) -> None:
    """``actual`` agrees with ``expected`` to ``digits`` significant digits (half a unit of the last)."""
    unit = 10.0 ** (math.floor(math.log10(abs(expected))) - digits + 1)
    assert abs(actual - expected) <= 0.5 * unit, (actual, expected)


def _r_name(term: str) -> str:
    """formulae's ``period[2]`` is R's ``period2``."""
    return term.replace("[", "").replace("]", "")


def _check_modes(table: pd.DataFrame, modes: dict, atol: float) -> None:
    """Conditional modes (levels x terms) against lme4's ``ranef()``, matched by level name."""
    for term, values in modes.items():
        ours = {str(level): value for level, value in table[term].items()}
        assert ours.keys() == values.keys()
        np.testing.assert_allclose([ours[level] for level in values], list(values.values()), atol=atol)


def _fit(formula: str, data: pd.DataFrame, family: str, nAGQ: int = 1, **options) -> FrequentistResult:
    return Lmer(formula, data, family=family, **options).fit_frequentist(nAGQ=nAGQ)


def _check_reference(
    result: FrequentistResult, key: str, loglik_key: str = "logLik", se: bool = True, within_se: float | None = None
) -> None:
    """Fixed effects, SEs, z values, SDs, correlations, logLik, AIC, BIC and df.resid against a reference.

    ``within_se``: compare the estimates to this fraction of their SE instead of to 4 digits (for a
    coefficient with a large SE, lme4's optimiser stops further from the optimum than 4 digits).
    """
    reference = REFERENCE[key]
    assert [_r_name(t) for t in result.coefs.index] == list(reference["fixef"])
    for term, row in result.coefs.iterrows():
        if within_se is None:
            _digits(row["Estimate"], reference["fixef"][_r_name(term)])
        else:
            assert abs(row["Estimate"] - reference["fixef"][_r_name(term)]) <= within_se * row["SE"], term
        if se:
            _digits(row["SE"], reference["SE"][_r_name(term)])
            if within_se is None:
                _digits(row["Z-stat"], reference["z"][_r_name(term)])
            else:  # z is in SE units
                assert abs(row["Z-stat"] - reference["z"][_r_name(term)]) <= within_se, term
    sds = {f"{group}:{name}": std for group, name, std in result.ranef_var[["Name", "Std"]].itertuples()}
    assert sds.keys() == reference["sd"].keys()
    for name, value in reference["sd"].items():
        _digits(sds[name], value)
    if reference.get("cor"):
        corr = result.ranef_corr.iloc[0]
        _digits(corr["Corr"], reference["cor"][f"{result.ranef_corr.index[0]}:{corr['IV1']}:{corr['IV2']}"])
    assert result.logLike == pytest.approx(reference[loglik_key], abs=1e-4)
    assert result.AIC + 2 * result.logLike == pytest.approx(reference["AIC"] + 2 * reference["logLik"])  # 2 npar
    assert result.BIC - result.AIC == pytest.approx(reference["BIC"] - reference["AIC"])
    assert result.n_obs == reference["nobs"]
    assert result.converged and not result.singular


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return load_dataset("cbpp")


@pytest.fixture(scope="module")
def grouse() -> pd.DataFrame:
    return load_dataset("grouseticks")


@pytest.fixture(scope="module")
def logit(cbpp) -> FrequentistResult:
    return _fit(CBPP, cbpp, "binomial")


@pytest.fixture(scope="module")
def verbagg() -> FrequentistResult:
    return _fit(VERBAGG, load_dataset("verbagg"), "binomial")


# ------------------------------------------------------------------------------------------ cbpp logit
def test_cbpp_reproduces_the_issue_numbers(logit):
    estimates = logit.coefs["Estimate"]
    for term, value in {"(Intercept)": -1.398343, "period[2]": -0.991925, "period[3]": -1.128216, "period[4]": -1.579745}.items():
        _digits(estimates[term], value)
    _digits(logit.ranef_var.loc["herd", "Std"], 0.6420699)
    _digits(logit.logLike, -92.02657, 7)


def test_cbpp_logit_against_lme4(logit):
    _check_reference(logit, "cbpp_logit")
    reference = REFERENCE["cbpp_logit"]
    assert logit.n_obs - len(logit.beta) - len(logit.theta) == reference["df_resid"]
    # Wald z tests and intervals, as summary(glmer)
    for term, row in logit.coefs.iterrows():
        assert row["P-val"] == pytest.approx(reference["p"][_r_name(term)], rel=1e-3)
        assert row["97.5_ci"] - row["Estimate"] == pytest.approx(1.959964 * row["SE"], rel=1e-6)
    assert list(logit.coefs.columns) == ["Estimate", "SE", "2.5_ci", "97.5_ci", "Z-stat", "P-val"]
    assert logit.vcov.to_numpy() == pytest.approx(np.array(reference["vcov"]), rel=1e-3)


def test_cbpp_conditional_modes_and_fitted_values(logit):
    reference = REFERENCE["cbpp_logit"]
    _check_modes(logit.ranef, reference["ranef"]["herd"], atol=1e-4)
    ranef = logit.ranef["(Intercept)"]
    # lme4's fitted(): probabilities at the conditional modes
    np.testing.assert_allclose(logit.fitted, reference["fitted"], rtol=2e-4)
    assert logit.fixef.loc[ranef.index[0], "(Intercept)"] == pytest.approx(logit.beta[0] + ranef.iloc[0])


def test_cbpp_response_and_pearson_residuals(logit, cbpp):
    data = logit.data
    fitted = np.asarray(REFERENCE["cbpp_logit"]["fitted"])
    proportion = cbpp["incidence"] / cbpp["size"]
    np.testing.assert_allclose(data["residuals"], proportion - fitted, atol=2e-4)
    pearson = (proportion - fitted) / np.sqrt(fitted * (1 - fitted) / cbpp["size"])
    np.testing.assert_allclose(data["pearson_residuals"], pearson, rtol=1e-3, atol=1e-4)
    assert list(data.columns[-3:]) == ["fits", "residuals", "pearson_residuals"]


def test_cbpp_wald_chisquare_test_of_a_factor_against_car(logit):
    """car::Anova(glmer(...), type = 3) with lme4 1.1-31: period Chisq 25.48818 on 3 df, p 1.2205e-05."""
    from bayeslmm.spec.hypotheses import type3_hypotheses

    test = logit.wald_test(type3_hypotheses(logit.design, logit.family)["period"])
    _digits(test["Chisq"], 25.48818)
    assert test["Df"] == 3
    _digits(test["P-val"], 1.2205e-05)
    # one coefficient: the square of its Wald z
    single = logit.wald_test(np.eye(4)[[1]])
    assert single["Chisq"] == pytest.approx(logit.coefs.loc["period[2]", "Z-stat"] ** 2, rel=1e-12)


def test_cbpp_summary_reads_like_glmer(logit):
    text = str(logit.summary())
    for piece in [
        "Generalized linear mixed model fit by maximum likelihood (Laplace approximation",
        "Family: binomial (logit link)",
        "AIC: 194.0531",
        "logLik: -92.0266",
        "df.resid: 51",
        "Number of obs: 56, groups: herd, 15",
        "Fixed effects (Wald z tests):",
        "z value",
        "Pr(>|z|)",
        "0.6421",
    ]:
        assert piece in text, piece
    assert "Residual" not in text and "Residual" not in logit.ranef_var.index
    assert "logLik: -92.0266" in repr(logit) and logit.sigma is None and logit.aux == {}


# ------------------------------------------------------------------------------------------ links, weights, offsets
@pytest.mark.parametrize("link", ["probit", "cloglog"])
def test_cbpp_other_links_against_lme4(cbpp, link):
    result = _fit(CBPP, cbpp, "binomial", link=link)
    assert result.family.link.name == link
    _check_reference(result, f"cbpp_{link}")


def test_proportion_with_weights_equals_cbind(cbpp, logit):
    data = cbpp.assign(proportion=cbpp["incidence"] / cbpp["size"])
    result = _fit("proportion ~ period + (1 | herd)", data, "binomial", weights="size")
    _check_reference(result, "cbpp_prop_weights")
    np.testing.assert_allclose(result.beta, logit.beta, rtol=1e-10)
    assert result.logLike == pytest.approx(logit.logLike, abs=1e-10)


def test_observation_level_random_effect(cbpp):
    data = cbpp.assign(obs=[str(i) for i in range(1, len(cbpp) + 1)])
    result = _fit("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", data, "binomial")
    _check_reference(result, "cbpp_olre")
    assert result.n_groups == {"herd": 15, "obs": 56}


def test_correlated_slope(cbpp):
    data = cbpp.assign(t=cbpp["period"].astype(int))
    result = _fit("cbind(incidence, size - incidence) ~ t + (t | herd)", data, "binomial")
    _check_reference(result, "cbpp_slope")


def test_poisson_with_log_exposure_offset(cbpp):
    result = _fit("incidence ~ period + offset(log(size)) + (1 | herd)", cbpp, "poisson")
    _check_reference(result, "cbpp_poisson_offset")
    np.testing.assert_allclose(result.fitted, REFERENCE["cbpp_poisson_offset"]["fitted"], rtol=2e-4)
    # the same offset given as an argument
    argument = _fit("incidence ~ period + (1 | herd)", cbpp, "poisson", offset=np.log(cbpp["size"]))
    np.testing.assert_allclose(argument.beta, result.beta, rtol=1e-10)


def test_grouseticks_three_crossed_factors(grouse):
    result = _fit("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", grouse, "poisson")
    _check_reference(result, "grouse_poisson")
    for factor in ("BROOD", "LOCATION"):
        _check_modes(result.ranef[factor], REFERENCE["grouse_poisson"]["ranef"][factor], atol=2e-4)


def test_negative_binomial_is_glmmtmb_nbinom2(grouse):
    result = _fit("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", grouse, "negbinomial")
    tmb, nb = REFERENCE["grouse_nb_tmb"], REFERENCE["grouse_nb"]
    for term, row in result.coefs.iterrows():
        _digits(row["Estimate"], tmb["fixef"][_r_name(term)])
        _digits(row["SE"], tmb["SE"][_r_name(term)])
    _digits(result.ranef_var.loc["LOCATION", "Std"], tmb["sd"]["LOCATION:(Intercept)"])
    _digits(result.aux["dispersion"], tmb["sigma"])
    assert result.logLike == pytest.approx(tmb["logLik"], abs=1e-4)
    assert result.AIC == pytest.approx(tmb["AIC"], abs=2e-4)  # 6 parameters: dispersion counted
    # glmer.nb stops short of the maximum that glmmTMB and this engine find
    assert result.logLike > nb["logLik"] + 0.1
    assert "dispersion" in str(result.summary()) and "Family parameters:" in str(result.summary())


# ------------------------------------------------------------------------------------------ VerbAgg
def test_verbagg_reproduces_the_issue_numbers(verbagg):
    issue = {
        "(Intercept)": 0.19924746, "Anger": 0.05741017, "Gender[M]": 0.32061082, "btype[scold]": -1.05865318,
        "btype[shout]": -2.10506866, "situ[self]": -1.05527039,
    }
    for term, value in issue.items():
        _digits(verbagg.coefs.loc[term, "Estimate"], value)
    _digits(verbagg.ranef_var.loc["id", "Std"], 1.3395329)
    _digits(verbagg.ranef_var.loc["item", "Std"], 0.4952398)


def test_verbagg_against_lme4(verbagg):
    _check_reference(verbagg, "verbagg", se=False)
    reference = REFERENCE["verbagg"]
    for term, se in verbagg.coefs["SE"].items():
        # lme4's SEs use Hessian steps of 1e-4, where rounding noise moves the intercept's by 4e-4;
        # with steps of 1e-3 lme4 agrees with this engine to 5 digits
        _digits(se, reference["SE_hessian_step_1e3"][_r_name(term)], 5)
        _digits(se, reference["SE"][_r_name(term)], 3)
    for factor in ("id", "item"):
        _check_modes(verbagg.ranef[factor], reference["ranef"][factor], atol=2e-4)
    assert "Response: r2 == 'Y' is a success ('N' a failure)" in str(verbagg.summary())


# ------------------------------------------------------------------------------------------ quadrature
def test_adaptive_gauss_hermite_against_lme4(cbpp):
    result = _fit(CBPP, cbpp, "binomial", nAGQ=25)
    # lme4 prints nAGQ > 1 log-likelihoods without the saturated model's; this is the full one
    _check_reference(result, "cbpp_logit_agq25", loglik_key="logLik_full_scale")
    assert result.nAGQ == 25 and "nAGQ = 25" in str(result.summary())


def test_adaptive_gauss_hermite_on_verbagg_against_lme4():
    result = _fit("r2 ~ Anger + Gender + btype + situ + (1 | id)", load_dataset("verbagg"), "binomial", nAGQ=8)
    # 0/1 data: the saturated log-likelihood is 0, so lme4's printed logLik is the full one here. The
    # log-likelihoods agree to 1e-6; lme4 stops 2e-4 SE short on the intercept (0.20543 for 0.20536)
    _check_reference(result, "verbagg_agq", loglik_key="logLik_full_scale", within_se=1e-3)


def test_quadrature_with_one_node_is_laplace(cbpp, logit):
    design = Lmer(CBPP, cbpp, family="binomial").design
    model = laplace._LaplaceDeviance(design, logit.family, 1)
    model.start_eta = logit.family.link(logit.fitted)
    quadrature = laplace._LaplaceDeviance(design, logit.family, 1)
    quadrature.nAGQ, quadrature.nodes, quadrature.log_node_weights = 1, np.zeros(1), np.zeros(1)
    quadrature.start_eta = model.start_eta
    assert quadrature._quadrature(logit.theta, quadrature.pirls(logit.theta, logit.beta, {}), {}) == pytest.approx(
        model.deviance(logit.theta, logit.beta, {}), rel=1e-12
    )


# ------------------------------------------------------------------------------------------ boundary and errors
def test_singular_fit_is_the_glm():
    """Identical groups: the group variance's estimate is 0 and the fit is the binomial GLM (closed form)."""
    data = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(8)], 2), "y": [3, 6] * 8, "n": [10, 20] * 8})
    with pytest.warns(ConvergenceWarning, match="singular"):
        result = _fit("cbind(y, n - y) ~ 1 + (1 | g)", data, "binomial")
    assert result.singular and result.theta[0] == 0.0
    assert result.beta[0] == pytest.approx(np.log(0.3 / 0.7), abs=1e-5)
    from scipy import stats

    assert result.logLike == pytest.approx(stats.binom.logpmf(data["y"], data["n"], 0.3).sum(), abs=1e-8)
    assert "boundary (singular) fit" in str(result.summary())


def test_reml_and_nagq_arguments(cbpp, logit):
    model = Lmer(CBPP, cbpp, family="binomial")
    with pytest.raises(UnsupportedSyntaxError, match="no REML criterion"):
        model.fit_frequentist(REML=True)
    assert model.fit_frequentist(REML=False).logLike == pytest.approx(logit.logLike)
    crossed = Lmer(VERBAGG, load_dataset("verbagg").iloc[::10], family="binomial")
    with pytest.raises(UnsupportedSyntaxError, match="single scalar random effect"):
        crossed.fit_frequentist(nAGQ=3)
    for bad in (-1, 2.5, True):
        with pytest.raises(DataError, match="nAGQ must be a non-negative integer"):
            model.fit_frequentist(nAGQ=bad)
    nb = Lmer("TICKS ~ YEAR + (1 | LOCATION)", load_dataset("grouseticks"), family="negbinomial")
    with pytest.raises(UnsupportedSyntaxError, match="nAGQ = 0 leaves the negative binomial's dispersion"):
        nb.fit_frequentist(nAGQ=0)
    sleep = Lmer("Reaction ~ Days + (1 | Subject)", load_dataset("sleepstudy"))
    with pytest.raises(UnsupportedSyntaxError, match="quadrature is for generalized"):
        sleep.fit_frequentist(nAGQ=5)
    assert sleep.fit_frequentist().REML and not sleep.fit_frequentist(REML=False).REML


def test_gaussian_family_is_not_for_the_laplace_engine():
    model = Lmer("Reaction ~ Days + (1 | Subject)", load_dataset("sleepstudy"))
    with pytest.raises(UnsupportedSyntaxError, match="Laplace engine fits"):
        laplace.fit_laplace(model.design, model.family)


def test_aliased_fixed_effect_dropped_as_lme4(cbpp):
    data = cbpp.assign(size2=2 * cbpp["size"], size1=cbpp["size"])
    with pytest.warns(UserWarning, match="dropping 1 column / coefficient: size2"):
        aliased = _fit("incidence ~ size1 + size2 + (1 | herd)", data, "poisson")
    plain = _fit("incidence ~ size1 + (1 | herd)", data, "poisson")
    assert list(aliased.coefs.index) == ["(Intercept)", "size1"]
    np.testing.assert_allclose(aliased.beta, plain.beta, rtol=1e-6)  # the same model; rounding moves COBYQA's path


def test_fit_is_cached_per_criterion(cbpp):
    model = Lmer(CBPP, cbpp, family="binomial")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = model.fit_frequentist()
    assert model.fit_frequentist() is first and model.frequentist is first


def test_complete_separation_is_flagged(cbpp):
    """No case in period 4: its coefficient runs off to -infinity; lme4 and glm warn, and so does this."""
    data = cbpp.assign(incidence=np.where(cbpp["period"].astype(int) == 4, 0, cbpp["incidence"]))
    with pytest.warns(ConvergenceWarning, match=r"numerically 0 or 1 occurred \(rows 3, 10, 14"):
        result = _fit(CBPP, data, "binomial")
    assert result.coefs.loc["period[4]", "Estimate"] < -10


# lme4 1.1-31: glmer(..., nAGQ = 0), fixef, sqrt(diag(vcov)), theta, logLik
NAGQ0 = {
    "cbpp": {"fixef": [-1.360475728, -0.9761732361, -1.111072784, -1.559675684],
             "SE": [0.2275790229, 0.303286175, 0.323510369, 0.4244519095], "theta": [0.6418385553], "logLik": -92.0543465},
    "VerbAgg": {"fixef": [0.2082792821, 0.05437777992, 0.3040826971, -1.016481457, -2.021770803, -1.013426091],
                "SE": [0.4053879911, 0.01675137229, 0.1912016043, 0.2575246794, 0.2592278095, 0.2108826066],
                "theta": [1.339396144, 0.4968192635], "logLik": -4075.794968},
}


@pytest.mark.parametrize("name", ["cbpp", "VerbAgg"])
def test_nagq0_reproduces_lme4(name, cbpp):
    """lme4's fast fit: theta optimised with the fixed effects inside PIRLS; SEs from RX."""
    if name == "cbpp":
        fit = _fit(CBPP, cbpp, "binomial", nAGQ=0)
    else:
        fit = _fit(VERBAGG, load_dataset("verbagg"), "binomial", nAGQ=0)
    reference = NAGQ0[name]
    for ours, theirs in zip(fit.coefs["Estimate"], reference["fixef"]):
        _digits(ours, theirs, 5)
    for ours, theirs in zip(fit.coefs["SE"], reference["SE"]):
        _digits(ours, theirs, 4)
    for ours, theirs in zip(fit.theta, reference["theta"]):
        _digits(ours, theirs, 5)
    # lme4 reports the log-likelihood of its last evaluation: 5e-5 (cbpp) and 3e-3 (VerbAgg) from ours
    _digits(fit.logLike, reference["logLik"], 5)
    assert fit.nAGQ == 0 and "nAGQ = 0" in str(fit.summary())
