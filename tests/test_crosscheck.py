"""Cross-checks against independent implementations under identical priors.

- an uncorrelated model, which Bambi can also express, against Bambi;
- the correlated model, which Bambi cannot express, against a hand-written PyMC model that uses a
  different parametrisation (centred group effects, ``LKJCholeskyCov``) of the same prior.

Tolerance: posterior means agree within 4 combined Monte Carlo standard errors,
``4 * sqrt(mcse_a**2 + mcse_b**2)``; a real difference in the model (a prior, the centring, a
missing correlation) moves means by many MCSEs, while chance alone exceeds 4 with probability ~6e-5.
``Days`` is centred in the data so that the intercept prior means the same thing in every program.
"""

import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest

from bayeslmm import Lmer, Prior

DRAWS = {"draws": 1000, "tune": 1000, "chains": 2, "random_seed": 7}


@pytest.fixture(scope="module")
def centred(sleep):
    return sleep.assign(Days_c=sleep.Days - sleep.Days.mean())


def _priors(data):
    y_sd, x_sd = np.std(data.Reaction), np.std(data.Days_c)
    return {
        "intercept": (float(data.Reaction.mean()), 2.5 * y_sd),
        "slope_sd": 2.5 * y_sd / x_sd,
        "sigma": y_sd,
        "group_sd": (2.5 * y_sd, 2.5 * y_sd / x_sd),
    }


def _fit(formula, data):
    model = Lmer(formula, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**DRAWS)
    return model


def _assert_agree(ours, theirs, label):
    """``ours`` and ``theirs``: DataArrays of draws (chain, draw) for one scalar quantity."""
    tolerance = 4 * np.hypot(float(az.mcse(ours.to_dataset(name="x"))["x"]), float(az.mcse(theirs.to_dataset(name="x"))["x"]))
    difference = abs(float(ours.mean()) - float(theirs.mean()))
    assert difference < tolerance, f"{label}: means differ by {difference:.3f} > 4 MCSE = {tolerance:.3f}"


def test_uncorrelated_model_agrees_with_bambi(centred):
    bmb = pytest.importorskip("bambi")
    p = _priors(centred)
    formula = "Reaction ~ Days_c + (1 | Subject) + (0 + Days_c | Subject)"
    ours = _fit(formula, centred)
    # bayeslmm's documented defaults are exactly these priors; check that, then give Bambi the same
    table = ours.priors["prior"]
    assert table["(Intercept)"] == f"Normal(mu={p['intercept'][0]:.4g}, sigma={p['intercept'][1]:.4g})"
    assert table["sigma"] == f"HalfStudentT(nu=4, sigma={p['sigma']:.4g})"
    bambi_priors = {
        "Intercept": bmb.Prior("Normal", mu=p["intercept"][0], sigma=p["intercept"][1]),
        "Days_c": bmb.Prior("Normal", mu=0, sigma=p["slope_sd"]),
        "sigma": bmb.Prior("HalfStudentT", nu=4, sigma=p["sigma"]),
        "1|Subject": bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfNormal", sigma=p["group_sd"][0])),
        "Days_c|Subject": bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfNormal", sigma=p["group_sd"][1])),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = bmb.Model(formula, centred, priors=bambi_priors).fit(inference_method="nutpie", **DRAWS)
    theirs = theirs["posterior"].to_dataset()
    post = ours.posterior
    _assert_agree(post.beta.sel(fixed_term="(Intercept)"), theirs["Intercept"], "intercept")
    _assert_agree(post.beta.sel(fixed_term="Days_c"), theirs["Days_c"], "slope")
    _assert_agree(post.sigma, theirs["sigma"], "sigma")
    _assert_agree(post["sd_Subject"].sel(Subject__term="(Intercept)"), theirs["1|Subject_sigma"], "sd intercept")
    _assert_agree(post["sd_Subject.1"].sel(**{"Subject.1__term": "Days_c"}), theirs["Days_c|Subject_sigma"], "sd slope")
    # one subject's group effect
    _assert_agree(
        post["ranef_Subject"].isel(Subject__level=0, Subject__term=0),
        theirs["1|Subject"].isel({theirs["1|Subject"].dims[-1]: 0}),
        "ranef of subject 308",
    )


def test_correlated_model_agrees_with_handwritten_pymc(centred):
    p = _priors(centred)
    ours = _fit("Reaction ~ Days_c + (Days_c | Subject)", centred)
    codes = ours.design.blocks[0].group_index
    with pm.Model(coords={"subject": np.arange(18), "term": ["int", "slope"]}):
        intercept = pm.Normal("intercept", *p["intercept"])
        slope = pm.Normal("slope", 0, p["slope_sd"])
        chol, corr, sds = pm.LKJCholeskyCov(
            "cov", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(sigma=np.array(p["group_sd"])), compute_corr=True
        )
        pm.Deterministic("corr", corr[0, 1])
        pm.Deterministic("sds", sds)
        effects = pm.MvNormal("effects", mu=np.zeros(2), chol=chol, dims=("subject", "term"))
        sigma = pm.HalfStudentT("sigma", nu=4, sigma=p["sigma"])
        mu = intercept + effects[codes, 0] + (slope + effects[codes, 1]) * centred.Days_c.to_numpy()
        pm.Normal("y", mu, sigma, observed=centred.Reaction.to_numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = pm.sample(nuts_sampler="nutpie", progressbar=False, target_accept=0.9, **DRAWS)
    theirs = theirs["posterior"].to_dataset()
    post = ours.posterior
    _assert_agree(post.beta.sel(fixed_term="(Intercept)"), theirs["intercept"], "intercept")
    _assert_agree(post.beta.sel(fixed_term="Days_c"), theirs["slope"], "slope")
    _assert_agree(post.sigma, theirs["sigma"], "sigma")
    _assert_agree(post["sd_Subject"].isel(Subject__term=0), theirs["sds"].isel({theirs["sds"].dims[-1]: 0}), "sd intercept")
    _assert_agree(post["sd_Subject"].isel(Subject__term=1), theirs["sds"].isel({theirs["sds"].dims[-1]: 1}), "sd slope")
    _assert_agree(post["corr_Subject"].isel(Subject__term=1, Subject__term_=0), theirs["corr"], "correlation")
