"""predict() and simulate(): posterior and REML predictions for new rows, new groups, new factor levels.

Identities are exact (posterior means are linear in the draws); the REML predictions reproduce lme4's
``predict(m, newdata, allow.new.levels = TRUE)`` (tests/reference/lmer_extra.json) to 1e-5 relative.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm import DataError, Lm, Lmer, NotFittedError, load_dataset

REFERENCE = json.loads((Path(__file__).parent / "reference" / "lmer_extra.json").read_text())["predict_sleepstudy"]
# lme4's new data, with the subject ids of bayeslmm's sleepstudy (integers); "new1" is a new subject
NEW = pd.DataFrame({"Days": [0, 5, 9, 0, 5], "Subject": [308, 308, 372, "new1", "new1"]})


def test_predictions_are_the_fitted_lines(sleep_corr):
    table = sleep_corr.predict(NEW)
    assert list(table.columns) == ["Estimate", "2.5_ci", "97.5_ci", "SE", "random_effects"]
    fixef, coefs = sleep_corr.fixef, sleep_corr.coefs["Estimate"]
    line = lambda b0, b1, days: b0 + b1 * days  # noqa: E731
    expected = [
        line(*fixef.loc[308, ["(Intercept)", "Days"]], 0),
        line(*fixef.loc[308, ["(Intercept)", "Days"]], 5),
        line(*fixef.loc[372, ["(Intercept)", "Days"]], 9),
        line(coefs["(Intercept)"], coefs["Days"], 0),  # a new subject: the population line
        line(coefs["(Intercept)"], coefs["Days"], 5),
    ]
    np.testing.assert_allclose(table["Estimate"], expected, rtol=1e-10)
    assert list(table["random_effects"]) == ["fitted"] * 3 + ["population level for new Subject"] * 2
    assert (table["2.5_ci"] < table["Estimate"]).all() and (table["Estimate"] < table["97.5_ci"]).all()
    population = sleep_corr.predict(NEW, use_rfx=False)
    np.testing.assert_allclose(population["Estimate"], line(coefs["(Intercept)"], coefs["Days"], NEW["Days"]), rtol=1e-10)
    assert (population["random_effects"] == "none (population level)").all()
    # the fitted rows by default: model.fits, as pymer4's
    np.testing.assert_allclose(sleep_corr.predict()["Estimate"], sleep_corr.fits, rtol=1e-10)
    np.testing.assert_allclose(sleep_corr.fits + sleep_corr.residuals, sleep_corr.design.y)


def test_new_groups_drawn_from_the_fitted_distribution(sleep_corr):
    population = sleep_corr.predict(NEW)
    drawn = sleep_corr.predict(NEW, unseen="sample", random_seed=1)
    np.testing.assert_allclose(drawn.iloc[:3, :4], population.iloc[:3, :4])  # seen subjects unchanged
    assert list(drawn["random_effects"][3:]) == ["drawn for new Subject"] * 2
    # a new subject's line is uncertain by the spread between subjects (SD about 25 ms at day 0)
    assert (drawn["SE"].iloc[3:] > 2 * population["SE"].iloc[3:]).all()
    assert abs(drawn["Estimate"].iloc[3] - population["Estimate"].iloc[3]) < 2.0
    with pytest.raises(DataError, match=r"Subject: \['new1'\].*unseen='population'.*unseen='sample'"):
        sleep_corr.predict(NEW, unseen="error")


def test_predictive_interval_and_draws(sleep_corr):
    table, draws = sleep_corr.predict(NEW, predictive=True, return_draws=True, n_draws=1000, random_seed=2)
    assert draws.shape == (1000, len(NEW))
    assert ((table["2.5_pi"] < table["2.5_ci"]) & (table["97.5_pi"] > table["97.5_ci"])).all()
    # the width of a new observation's interval is about 2 x 1.96 x sigma (25.6 ms) around the line
    width = (table["97.5_pi"] - table["2.5_pi"]).iloc[0]
    assert 80 < width < 140
    link, eta = sleep_corr.predict(NEW, pred_type="link", return_draws=True)
    np.testing.assert_allclose(link["Estimate"], sleep_corr.predict(NEW)["Estimate"])  # identity link
    assert eta.shape == (4000, len(NEW))
    with pytest.raises(ValueError, match="pred_type must be"):
        sleep_corr.predict(NEW, pred_type="probability")
    with pytest.raises(ValueError, match="predictive=True.*pred_type='response'"):
        sleep_corr.predict(NEW, pred_type="link", predictive=True)


def test_bad_new_data_is_refused_clearly(sleep_corr):
    with pytest.raises(DataError, match=r"grouping column\(s\) \['Subject'\].*use_rfx=False"):
        sleep_corr.predict(NEW[["Days"]])
    assert len(sleep_corr.predict(NEW[["Days"]], use_rfx=False)) == 5
    with pytest.raises(DataError, match="column 'Days' is missing"):
        sleep_corr.predict(NEW[["Subject"]])
    with pytest.raises(DataError, match=r"\['308'\] match fitted levels only as text.*int"):
        sleep_corr.predict(pd.DataFrame({"Days": [1], "Subject": ["308"]}))
    with pytest.raises(DataError, match=r"missing values in \['Days'\] \(rows \[0\]\)"):
        sleep_corr.predict(pd.DataFrame({"Days": [np.nan, 1.0], "Subject": [308, 308]}))
    with pytest.raises(DataError, match=r"missing values in \['Subject'\]"):
        sleep_corr.predict(pd.DataFrame({"Days": [1.0, 1.0], "Subject": [308, None]}))
    with pytest.raises(ValueError, match="unseen must be one of"):
        sleep_corr.predict(NEW, unseen="zero")
    original = NEW.copy()
    sleep_corr.predict(NEW, unseen="sample", predictive=True)
    pd.testing.assert_frame_equal(NEW, original)


def test_frequentist_predictions_match_lme4(sleep_corr):
    reml = sleep_corr.fit_frequentist()
    np.testing.assert_allclose(reml.predict(NEW), REFERENCE["allow_new_levels"], rtol=1e-5)
    np.testing.assert_allclose(reml.predict(NEW, use_rfx=False), REFERENCE["re_form_NA"], rtol=1e-5)
    np.testing.assert_allclose(reml.predict(), reml.fitted)
    with pytest.raises(DataError, match="new1"):
        reml.predict(NEW, unseen="error")
    with pytest.raises(ValueError, match="'population'.*'error'"):
        reml.predict(NEW, unseen="sample")


def test_factor_levels_missing_from_new_data_and_unseen_levels(cake_interaction, cake):
    # one recipe and two temperatures of an ordered categorical: the other levels are not needed
    rows = cake[(cake["recipe"] == "A") & cake["temperature"].isin(["185", "225"])].head(4)
    new = rows[["recipe", "temperature", "replicate"]].copy()
    new["temperature"] = new["temperature"].astype(str)  # plain strings work as well as the categorical
    np.testing.assert_allclose(
        cake_interaction.predict(new)["Estimate"], cake_interaction.fits[rows.index.to_numpy()], rtol=1e-10
    )
    unseen = pd.DataFrame({"recipe": ["D"], "temperature": ["175"], "replicate": ["1"]})
    with pytest.raises(DataError, match=r"fixed-effects part on the new data.*\(D\) in 'recipe'"):
        cake_interaction.predict(unseen)


def test_simulate_conditions_on_the_groups_or_draws_new_ones(sleep_corr):
    sims = sleep_corr.simulate(200, random_seed=3)
    assert sims.shape == (180, 200) and list(sims.columns[:2]) == ["sim_1", "sim_2"]
    assert sims.index.equals(sleep_corr.data.index)
    pd.testing.assert_frame_equal(sims, sleep_corr.simulate(200, random_seed=3))
    subjects = sleep_corr.data["Subject"].to_numpy()
    observed = pd.Series(sleep_corr.design.y).groupby(subjects).mean()
    conditional = sims.groupby(subjects).mean().mean(axis=1)
    # with the fitted group effects each subject keeps its own level ...
    assert np.corrcoef(observed, conditional)[0, 1] > 0.95
    # ... and the residual spread around the fitted lines is sigma (25.6 ms)
    assert 22 < (sims.sub(sleep_corr.fits, axis=0)).to_numpy().std() < 30
    new_groups = sleep_corr.simulate(200, use_rfx=False, random_seed=3)
    averaged = new_groups.groupby(subjects).mean().mean(axis=1)
    # new subjects every time: averaged over simulations every subject is at the population mean
    assert averaged.std() < 0.2 * conditional.std()
    # but within one simulation subjects differ by the between-subject SD
    assert new_groups.groupby(subjects).mean().std().mean() > 20
    with pytest.raises(ValueError, match="n must be a positive number"):
        sleep_corr.simulate(0)
    with pytest.raises(ValueError, match="need as many posterior draws"):
        sleep_corr.simulate(5000)


def test_frequentist_simulate(sleep_corr):
    reml = sleep_corr.fit_frequentist()
    sims = reml.simulate(100, random_seed=1)
    assert sims.shape == (180, 100)
    assert abs((sims.sub(reml.fitted, axis=0)).to_numpy().std() - reml.sigma) < 1.5
    subjects = sleep_corr.data["Subject"].to_numpy()
    assert reml.simulate(100, use_rfx=False, random_seed=1).groupby(subjects).mean().mean(axis=1).std() < 5


def test_lm_predicts_and_needs_a_fit(sleep):
    model = Lm("Reaction ~ Days", sleep)
    with pytest.raises(NotFittedError):
        model.predict(NEW)
    model.fit(draws=300, tune=300, chains=2, random_seed=1, progressbar=False)
    table = model.predict(NEW[["Days"]])
    coefs = model.coefs["Estimate"]
    np.testing.assert_allclose(table["Estimate"], coefs["(Intercept)"] + coefs["Days"] * NEW["Days"], rtol=1e-10)
    assert model.simulate(3, random_seed=1).shape == (180, 3)


def test_every_family_predicts_simulates_and_compares():
    """A Poisson GLMM: predictions on both scales, count simulations, posterior-only ANOVA and post-hoc."""
    cbpp = load_dataset("cbpp")
    model = Lmer("incidence ~ period + (1 | herd)", cbpp, family="poisson")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=200, tune=300, chains=2, random_seed=4, progressbar=False)
    rows = cbpp.head(4)
    link, eta = model.predict(rows, pred_type="link", return_draws=True)
    response, mu = model.predict(rows, return_draws=True, predictive=False)
    np.testing.assert_allclose(mu, np.exp(eta))  # the inverse link, draw by draw
    np.testing.assert_allclose(response["Estimate"], np.exp(eta).mean(axis=0))
    assert (response["Estimate"] > np.exp(link["Estimate"])).all()  # Jensen: E exp(eta) > exp(E eta)
    predictive = model.predict(rows, predictive=True, random_seed=1)
    assert (predictive["2.5_pi"] == np.floor(predictive["2.5_pi"])).all() and (predictive["2.5_pi"] >= 0).all()
    sims = model.simulate(5, random_seed=1)
    assert ((sims.to_numpy() >= 0) & (sims.to_numpy() == np.round(sims.to_numpy()))).all()
    table = model.anova(elpd=False)
    assert list(table.columns) == ["Chisq", "Df", "P-val", "Sig", "pd"] and "Wald chi-square" in repr(table)
    means, contrasts = model.post_hoc("period")
    assert "freq_Z-stat" in contrasts.columns and "On the link scale (log)" in repr(means)
    # period 1 (the reference) against the others: the contrast is minus the coefficient, draw by draw
    np.testing.assert_allclose(contrasts["Estimate"].iloc[0], -model.coefs.loc["period[2]", "Estimate"], rtol=1e-10)
