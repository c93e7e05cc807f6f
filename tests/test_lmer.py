"""Bayesian fits against lme4's published estimates, and the shape of every result.

Tolerances: with the default 4 chains x 1000 draws the Monte Carlo SE of a posterior mean is about
posterior SD / sqrt(ESS) ~ 0.03 SD, so "within 0.25 posterior SD of REML" leaves room for the small
prior and REML-vs-posterior-mean differences and still fails on any real error (a wrong
centring, a swapped coefficient, a missing group effect move estimates by whole SDs).
"""

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from bayeslmm import ConvergenceWarning, Lmer, NotFittedError, Prior, PriorError, load_dataset

LME4_SLEEP = {
    "fixed": {"(Intercept)": 251.4051, "Days": 10.4673},
    "sd": {"(Intercept)": 24.7407, "Days": 5.9221},
    "corr": 0.0656,
    "sigma": 25.5918,
    "coef_308": (253.6637, 19.6663),
}


# ------------------------------------------------------------------------- sleepstudy (Days|Subject)
def test_fixed_effects_match_lme4(sleep_corr):
    coefs = sleep_corr.coefs
    assert list(coefs.columns) == ["Estimate", "2.5_ci", "97.5_ci", "SE", "pd", "R_hat", "ESS_bulk", "ESS_tail"]
    assert list(coefs.index) == ["(Intercept)", "Days"]
    for term, reml in LME4_SLEEP["fixed"].items():
        assert abs(coefs.loc[term, "Estimate"] - reml) < 0.25 * coefs.loc[term, "SE"], term
        assert coefs.loc[term, "2.5_ci"] < reml < coefs.loc[term, "97.5_ci"]
    assert (coefs["pd"] > 0.999).all()


def test_variance_components_match_lme4(sleep_corr):
    sd = sleep_corr.posterior["sd_Subject"]
    medians = sd.median(("chain", "draw"))
    spreads = sd.std(("chain", "draw"))
    for term, reml in LME4_SLEEP["sd"].items():
        assert abs(float(medians.sel(Subject__term=term)) - reml) < float(spreads.sel(Subject__term=term)), term
    sigma = sleep_corr.posterior["sigma"]
    assert abs(float(sigma.median()) - LME4_SLEEP["sigma"]) < float(sigma.std())


def test_ranef_var_table(sleep_corr):
    table = sleep_corr.ranef_var
    assert list(table.index) == ["Subject", "Subject", "Residual"]
    assert list(table.columns) == ["Name", "Var", "Std", "2.5_ci", "97.5_ci"]
    assert list(table["Name"]) == ["(Intercept)", "Days", ""]
    np.testing.assert_allclose(table["Var"], table["Std"] ** 2)
    np.testing.assert_allclose(table["Std"].iloc[-1], float(sleep_corr.posterior["sigma"].median()))
    assert ((table["2.5_ci"] < table["Std"]) & (table["Std"] < table["97.5_ci"])).all()


def test_ranef_corr_table(sleep_corr):
    corr = sleep_corr.ranef_corr
    assert corr.shape[0] == 1
    row = corr.iloc[0]
    assert (corr.index[0], row.IV1, row.IV2) == ("Subject", "(Intercept)", "Days")
    assert row["2.5_ci"] < LME4_SLEEP["corr"] < row["97.5_ci"]
    draws = sleep_corr.posterior["corr_Subject"].values[..., 1, 0].reshape(-1)
    assert row.Corr == pytest.approx(np.median(draws))  # the posterior median, as the title says


def test_fixef_and_ranef(sleep_corr, sleep):
    fixef, ranef = sleep_corr.fixef, sleep_corr.ranef
    for table in (fixef, ranef):
        assert table.shape == (18, 2)
        assert list(table.columns) == ["(Intercept)", "Days"]
        assert list(table.index) == sorted(sleep.Subject.unique())
    np.testing.assert_allclose(fixef.to_numpy(), ranef.to_numpy() + sleep_corr.coefs["Estimate"].to_numpy())
    # lme4's coef() for subject 308, within the posterior SD of that subject's coefficients
    long = sleep_corr.ranef_summary(total=True).set_index(["level", "term"])
    for term, value in zip(["(Intercept)", "Days"], LME4_SLEEP["coef_308"]):
        assert abs(long.loc[(308, term), "Estimate"] - value) < 0.5 * long.loc[(308, term), "SE"]


def test_ranef_summary_is_tidy(sleep_corr):
    long = sleep_corr.ranef_summary()
    assert long.shape == (36, 8)
    assert list(long.columns[:3]) == ["factor", "level", "term"]
    np.testing.assert_allclose(
        long.set_index(["level", "term"])["Estimate"].unstack()[["(Intercept)", "Days"]].to_numpy(),
        sleep_corr.ranef.to_numpy(),
    )
    hdi = sleep_corr.ranef_summary(prob=0.9, hdi=True)
    assert {"5_ci", "95_ci"} <= set(hdi.columns)


def test_no_divergences_and_no_warnings(sleep_corr):
    assert int(sleep_corr.idata["sample_stats"]["diverging"].sum()) == 0
    assert sleep_corr.warnings == []


def test_data_fits_and_residuals(sleep_corr, sleep):
    data = sleep_corr.data
    assert list(data.columns) == ["Reaction", "Days", "Subject", "fits", "residuals", "pearson_residuals"]
    np.testing.assert_allclose(data["fits"] + data["residuals"], sleep["Reaction"])
    row = data.iloc[0]  # subject 308, day 0: fits = coef(308) intercept
    assert row["fits"] == pytest.approx(sleep_corr.fixef.loc[308, "(Intercept)"])
    assert abs(data["residuals"].mean()) < 1.0
    # partial pooling explains most of the variance: residual SD close to sigma
    assert data["residuals"].std() < 1.1 * float(sleep_corr.posterior["sigma"].mean())


def test_inference_data_groups(sleep_corr):
    assert {"posterior", "sample_stats", "observed_data", "log_likelihood"} <= set(sleep_corr.idata.children)
    log_lik = sleep_corr.idata["log_likelihood"]["y"]
    assert log_lik.shape == (4, 1000, 180)
    # pointwise log-likelihood of one draw equals the normal density at that draw's linear predictor
    post = sleep_corr.posterior.isel(chain=0, draw=0)
    subject = sleep_corr.design.blocks[0].group_index[5]
    mu = float(post.beta[0] + post.ranef_Subject[subject, 0] + 5 * (post.beta[1] + post.ranef_Subject[subject, 1]))
    expected = -0.5 * np.log(2 * np.pi * post.sigma**2) - (sleep_corr.design.y[5] - mu) ** 2 / (2 * post.sigma**2)
    assert float(log_lik[0, 0, 5]) == pytest.approx(float(expected))


def test_summary_and_repr(sleep_corr, capsys):
    text = sleep_corr.summary()
    for piece in [
        "Formula: Reaction ~ Days + (Days | Subject)",
        "Family: gaussian",
        "Number of obs: 180; groups: Subject, 18",
        "4 chains x 1000 draws after 1000 tuning steps",
        "Random effects",
        "Correlations",
        "Fixed effects",
        "Diagnostics: no problems",
    ]:
        assert piece in text
    assert re.search(r"Residual\s+\d+\.\d+\s+2[4-7]\.\d+", text)
    assert repr(sleep_corr).startswith("Lmer('Reaction ~ Days + (Days | Subject)'")
    assert "fitted: 4x1000 draws" in repr(sleep_corr)


def test_design_matrix_grps_priors(sleep_corr):
    assert list(sleep_corr.design_matrix.columns) == ["(Intercept)", "Days"]
    assert sleep_corr.design_matrix.shape == (180, 2)
    assert sleep_corr.grps == {"Subject": 18}
    priors = sleep_corr.priors["prior"]
    assert priors["sd(Days|Subject)"].startswith("HalfNormal(sigma=48.")
    assert priors["corr(Subject)"] == "LKJ(eta=1)"


# ------------------------------------------------------------------------- other random structures
@pytest.mark.parametrize(
    ("formula", "var_rows", "terms"),
    [
        ("Reaction ~ Days + (1 | Subject)", [("Subject", "(Intercept)")], ["(Intercept)"]),
        ("Reaction ~ Days + (0 + Days | Subject)", [("Subject", "Days")], ["Days"]),
        ("Reaction ~ Days + (Days || Subject)", [("Subject", "(Intercept)"), ("Subject", "Days")], ["(Intercept)", "Days"]),
        ("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", [("Subject", "(Intercept)"), ("Subject", "Days")], ["(Intercept)", "Days"]),
    ],
)
def test_shapes_of_other_structures(fit_model, sleep, formula, var_rows, terms):
    model = fit_model(formula, sleep)
    assert list(model.coefs.index) == ["(Intercept)", "Days"]
    assert list(zip(model.ranef_var.index, model.ranef_var.Name)) == var_rows + [("Residual", "")]
    assert model.ranef_corr is None
    assert list(model.ranef.columns) == terms and model.ranef.shape == (18, len(terms))
    assert list(model.fixef.columns) == ["(Intercept)", "Days"] and model.fixef.shape == (18, 2)
    assert model.data.shape == (180, 6)  # Reaction, Days, Subject, fits, residuals, pearson_residuals
    assert int(model.idata["sample_stats"]["diverging"].sum()) == 0
    if terms == ["Days"]:  # (0 + Days | Subject): every subject shares the fixed intercept
        np.testing.assert_allclose(model.fixef["(Intercept)"], model.coefs.loc["(Intercept)", "Estimate"])


def test_dyestuff_matches_lme4(fit_model):
    model = fit_model("Yield ~ 1 + (1 | Batch)", load_dataset("Dyestuff"), draws=1000, tune=1000)
    coefs = model.coefs.loc["(Intercept)"]
    assert abs(coefs.Estimate - 1527.50) < 0.25 * coefs.SE
    var = model.ranef_var.set_index("Name", append=True)["Std"]
    sd_batch, sigma = model.posterior["sd_Batch"], model.posterior["sigma"]
    assert abs(float(sd_batch.median()) - 42.00) < float(sd_batch.std())
    assert abs(float(sigma.median()) - 49.51) < float(sigma.std())
    assert var.loc[("Batch", "(Intercept)")] == pytest.approx(float(sd_batch.median()))


def test_penicillin_crossed_matches_lme4(fit_model):
    model = fit_model("diameter ~ 1 + (1 | plate) + (1 | sample)", load_dataset("Penicillin"), draws=1000, tune=1000)
    coefs = model.coefs.loc["(Intercept)"]
    assert abs(coefs.Estimate - 22.9722) < 0.25 * coefs.SE
    for name, reml in [("sd_plate", 0.8467), ("sd_sample", 1.9316), ("sigma", 0.5499)]:
        draws = model.posterior[name]
        assert abs(float(draws.median()) - reml) < float(draws.std()), name
    assert isinstance(model.ranef, dict) and list(model.ranef) == ["plate", "sample"]
    assert model.ranef["plate"].shape == (24, 1) and model.fixef["sample"].shape == (6, 1)
    assert model.grps == {"plate": 24, "sample": 6}


def test_nested_gives_two_factors(fit_model):
    pen = load_dataset("Penicillin")
    pen["batch"] = np.tile(np.repeat(["b1", "b2", "b3", "b4"], 6), 6)
    model = fit_model("diameter ~ 1 + (1 | batch/sample)", pen)
    assert model.grps == {"batch": 4, "batch:sample": 24}
    assert list(model.ranef) == ["batch", "batch:sample"]
    assert list(model.ranef_var.index) == ["batch", "batch:sample", "Residual"]


# ------------------------------------------------------------------------- behaviour
def test_same_seed_same_draws(sleep):
    draws = []
    for _ in range(2):
        model = Lmer("Reaction ~ Days + (1 | Subject)", sleep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(draws=100, tune=100, chains=2, random_seed=42)
        draws.append(model.posterior["beta"].values)
    np.testing.assert_array_equal(draws[0], draws[1])


def test_diagnostics_warn_and_are_kept(sleep):
    model = Lmer("Reaction ~ Days + (Days | Subject)", sleep)
    with pytest.warns(ConvergenceWarning, match="effective sample size of .* is \\d+ \\(< 400\\)"):
        model.fit(draws=30, tune=30, chains=2, random_seed=1)
    assert any("Draw more, e.g. fit(draws=2000)" in message for message in model.warnings)
    assert any("R-hat of" in message and "the chains disagree" in message for message in model.warnings)
    assert "warning(s)" in model.summary()


def test_unfitted_model_errors(sleep):
    model = Lmer("Reaction ~ Days + (1 | Subject)", sleep)
    for attribute in ["coefs", "fixef", "ranef", "ranef_var", "ranef_corr", "data", "posterior"]:
        with pytest.raises(NotFittedError, match=f"{attribute} is not available before the model is fitted"):
            getattr(model, attribute)
    with pytest.raises(NotFittedError, match="call .fit\\(\\) first"):
        model.summary()
    assert "not fitted" in repr(model)


def test_bad_sampler_arguments(sleep):
    model = Lmer("Reaction ~ Days + (1 | Subject)", sleep)
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        model.fit(draws=0)
    with pytest.raises(ValueError, match="chains must be a positive integer"):
        model.fit(chains=1.5)


def test_input_unchanged_after_fit(fit_model, sleep):
    before = sleep.copy()
    fit_model("Reaction ~ Days + (Days | Subject)", sleep, draws=50, tune=50)
    pd.testing.assert_frame_equal(sleep, before)


def test_polars_fit_matches_pandas(fit_model, sleep):
    pl = pytest.importorskip("polars")
    a = fit_model("Reaction ~ Days + (1 | Subject)", sleep, draws=100, tune=100)
    b = fit_model("Reaction ~ Days + (1 | Subject)", pl.from_pandas(sleep), draws=100, tune=100)
    np.testing.assert_array_equal(a.posterior["beta"].values, b.posterior["beta"].values)


# ------------------------------------------------------------------------- priors
def test_user_priors_are_used(sleep):
    strong = {"Days": Prior("Normal", mu=0.0, sigma=0.01), "Days|Subject": Prior("Exponential", lam=1.0), "eta": 4}
    model = Lmer("Reaction ~ Days + (Days | Subject)", sleep, priors=strong)
    table = model.priors["prior"]
    assert table["Days"] == "Normal(mu=0, sigma=0.01)"
    assert table["sd(Days|Subject)"] == "Exponential(lam=1)"
    assert table["corr(Subject)"] == "LKJ(eta=4)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=200, tune=200, chains=2, random_seed=5)
    # a prior SD of 0.01 pins the slope at 0 whatever the data say
    assert abs(model.coefs.loc["Days", "Estimate"]) < 0.05


@pytest.mark.parametrize(
    ("priors", "message"),
    [
        ({"Dayz": Prior("Normal", mu=0, sigma=1)}, "'Dayz' is not a parameter of this model"),
        ({"sigma": Prior("Normal", mu=0, sigma=1)}, "must be on positive values"),
        ({"Days|Subjekt": Prior("HalfNormal", sigma=1)}, "no group term 'Days' on factor 'Subjekt'"),
        ({"eta": -1}, "eta must be positive"),
        ({"Days": 3.0}, "must be a bayeslmm.Prior"),
    ],
)
def test_bad_priors(sleep, priors, message):
    with pytest.raises(PriorError, match=message):
        Lmer("Reaction ~ Days + (Days | Subject)", sleep, priors=priors)


def test_unknown_distribution():
    with pytest.raises(PriorError, match="'Normall' is not a PyMC distribution"):
        Prior("Normall", mu=0, sigma=1)


def test_block_with_two_slopes_has_three_correlations(fit_model, sleep):
    data = sleep.assign(late=(sleep.Days > 4).astype(float))
    model = fit_model("Reaction ~ Days + late + (1 + Days + late | Subject)", data, draws=300, tune=300)
    pairs = list(zip(model.ranef_corr.IV1, model.ranef_corr.IV2))
    assert pairs == [("(Intercept)", "Days"), ("(Intercept)", "late"), ("Days", "late")]
    assert model.posterior["corr_Subject"].shape[-2:] == (3, 3)
    assert model.ranef.shape == (18, 3) and list(model.ranef_var.Name) == ["(Intercept)", "Days", "late", ""]
    # the posterior correlation matrices are valid: symmetric with unit diagonal
    corr = model.posterior["corr_Subject"].values
    np.testing.assert_allclose(corr, np.swapaxes(corr, -1, -2), atol=1e-12)
    np.testing.assert_allclose(np.diagonal(corr, axis1=-2, axis2=-1), 1.0, atol=1e-12)


def test_sampling_path_choice(fit_model, sleep):
    fast = fit_model("Reaction ~ Days + (1 | Subject)", sleep, draws=100, tune=100)
    assert fast.sampler.sampler == "nutpie, marginal"
    full = fit_model("Reaction ~ Days + (1 | Subject)", sleep, draws=100, tune=100, marginalize=False)
    assert full.sampler.sampler == "nutpie"
    # a Student-t fixed-effect prior is not conjugate: the exact GLMM engine takes it
    heavy = fit_model("Reaction ~ Days + (1 | Subject)", sleep, draws=100, tune=100,
                      priors={"Days": Prior("StudentT", nu=3, mu=0, sigma=10)})
    assert heavy.sampler.sampler == "nutpie, Laplace-informed parametrization"
    # a prior neither exact sampler knows: the full model, or refused on request before sampling
    model = Lmer("Reaction ~ Days + (1 | Subject)", sleep, priors={"Days": Prior("Laplace", mu=0, b=10)})
    with pytest.raises(ValueError, match="marginalize=True: no exact sampler takes this model"):
        model.fit(marginalize=True)
    assert model.idata is None


def test_large_log_likelihood_is_computed_on_demand(monkeypatch, sleep):
    import bayeslmm.results.fitted

    monkeypatch.setattr(bayeslmm.results.fitted, "LOG_LIKELIHOOD_MAX_VALUES", 1000)
    model = Lmer("Reaction ~ Days + (1 | Subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=300, tune=300, chains=2, random_seed=4)
        assert "log_likelihood" not in model.idata.children
        elpd = model.loo()
    assert model.idata["log_likelihood"]["y"].shape == (2, 300, 180)
    assert -900 < float(elpd.elpd) < -870  # sleepstudy (1|Subject): about -885
