"""Results of binomial, Poisson and negative binomial models: pooling references against statsmodels,
the pooling tables, ``data`` with Pearson residuals, R2, summaries, save/load and the command line.

The Bayesian tables are tested on a small stand-in posterior (draws around the Laplace fit, attached
with ``Lmer.restore``): these tests are about how the tables are computed from draws, not about
sampling, which the sampler's own tests cover.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import expit

from bayeslmm import Lmer, load, load_dataset
from bayeslmm.analysis import pooling
from bayeslmm.analysis.comparison import n_parameters, r2
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.engines.sampling import SamplerSettings
from bayeslmm.errors import UnsupportedSyntaxError
from bayeslmm.io import cli

CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
NB = "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)"


def _stand_in_posterior(model: Lmer, chains: int = 2, draws: int = 40, seed: int = 0) -> Lmer:
    """Attach draws around the model's Laplace fit as its posterior (the variables and dims of a fit)."""
    fit = model.fit_frequentist()
    design = model.design
    rng = np.random.default_rng(seed)
    shape = (chains, draws)
    coords = {"chain": np.arange(chains), "draw": np.arange(draws), "fixed_term": list(design.fixed_terms)}
    beta = rng.multivariate_normal(fit.beta, fit.vcov.to_numpy(), size=shape)
    data = {"beta": (("chain", "draw", "fixed_term"), beta)}
    for name, value in fit.aux.items():
        data[name] = (("chain", "draw"), value * np.exp(0.05 * rng.standard_normal(shape)))
    modes = fit.ranef if isinstance(fit.ranef, dict) else {design.blocks[0].factor: fit.ranef}
    for block in design.blocks:
        names = var_names(block)
        coords[names["level"]], coords[names["term"]] = list(block.levels), list(block.terms)
        sd = fit.ranef_var.loc[[block.factor], "Std"].to_numpy()
        data[names["sd"]] = (("chain", "draw", names["term"]), sd * np.exp(0.1 * rng.standard_normal((*shape, len(sd)))))
        centre = modes[block.factor][list(block.terms)].to_numpy()
        effects = centre + 0.1 * rng.standard_normal((*shape, *centre.shape))
        data[names["ranef"]] = (("chain", "draw", names["level"], names["term"]), effects)
    idata = xr.DataTree.from_dict({"posterior": xr.Dataset(data, coords=coords)})
    model.restore(idata, SamplerSettings("stand-in", draws, 0, chains, seed, 0.0), [])
    return model


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return load_dataset("cbpp")


@pytest.fixture(scope="module")
def binomial(cbpp) -> Lmer:
    return _stand_in_posterior(Lmer(CBPP, cbpp, family="binomial"))


@pytest.fixture(scope="module")
def negbin() -> Lmer:
    return _stand_in_posterior(Lmer(NB, load_dataset("grouseticks"), family="negbinomial"))


def _draws(model: Lmer, name: str) -> np.ndarray:
    return model.posterior[name].transpose("chain", "draw", ...).values.reshape(-1, *model.posterior[name].shape[2:])


def _binomial_means(model: Lmer) -> np.ndarray:
    """Probabilities of every draw and row, shape (draws, n), computed directly from the draws."""
    design = model.design
    block = design.blocks[0]
    ranef = _draws(model, var_names(block)["ranef"])[:, :, 0]  # (draws, G)
    return expit(_draws(model, "beta") @ design.X.T + ranef[:, block.group_index])


# ------------------------------------------------------------------------------------------ GLM references
def test_complete_pooling_glms_match_statsmodels(cbpp, binomial):
    sm = pytest.importorskip("statsmodels.api")
    X = binomial.design.X
    counts = np.column_stack([cbpp["incidence"], cbpp["size"] - cbpp["incidence"]])
    logistic = sm.GLM(counts, X, family=sm.families.Binomial()).fit(tol=1e-12)
    np.testing.assert_allclose(pooling.complete_pooling(binomial), logistic.params, rtol=1e-7)
    rates = Lmer("incidence ~ period + offset(log(size)) + (1 | herd)", cbpp, family="poisson")
    poisson = sm.GLM(cbpp["incidence"], X, family=sm.families.Poisson(), offset=np.log(cbpp["size"])).fit(tol=1e-12)
    np.testing.assert_allclose(pooling.complete_pooling(rates), poisson.params, rtol=1e-7)
    # least squares on the same design, whatever the family
    np.testing.assert_allclose(pooling.complete_pooling_ols(binomial), np.linalg.lstsq(X, binomial.design.y, rcond=None)[0])


def test_negative_binomial_glm_matches_statsmodels(negbin):
    sm = pytest.importorskip("statsmodels.api")
    design = negbin.design
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sm.NegativeBinomial(design.y, design.X, loglike_method="nb2").fit(method="newton", tol=1e-12, disp=0)
    np.testing.assert_allclose(pooling.complete_pooling(negbin), reference.params[:-1], rtol=1e-6)
    from bayeslmm.engines.least_squares import glm

    fit = glm(design.X, design.y, negbin.family)
    assert fit.aux["dispersion"] == pytest.approx(1.0 / reference.params[-1], rel=1e-5)  # statsmodels' alpha = 1/k
    assert fit.log_lik == pytest.approx(reference.llf, abs=1e-6)


def test_no_pooling_is_one_glm_with_herd_intercepts(cbpp, binomial):
    """(1 | herd): own intercepts, a common period effect; a herd without cases has no finite intercept."""
    sm = pytest.importorskip("statsmodels.api")
    data = cbpp.copy()
    data.loc[data["herd"] == 9, "incidence"] = 0
    model = Lmer(CBPP, data, family="binomial")
    with pytest.warns(UserWarning, match=r"1 group\(s\) of 'herd'.*every response 0.*: 9"):
        table = pooling.no_pooling(model)
    assert list(table.columns) == ["(Intercept)", "period[2]", "period[3]", "period[4]"]
    kept = data["herd"] != 9
    herds = pd.get_dummies(data.loc[kept, "herd"]).to_numpy(dtype=float)
    X = np.column_stack([herds, model.design.X[kept.to_numpy(), 1:]])
    counts = np.column_stack([data.loc[kept, "incidence"], data.loc[kept, "size"] - data.loc[kept, "incidence"]])
    reference = sm.GLM(counts, X, family=sm.families.Binomial()).fit(tol=1e-12).params
    np.testing.assert_allclose(table["(Intercept)"].drop(9).to_numpy(), reference[:14], rtol=1e-6)
    np.testing.assert_allclose(table.iloc[0, 1:].to_numpy(dtype=float), reference[14:], rtol=1e-6)
    assert np.isnan(table.loc[9, "(Intercept)"])


def test_compare_group_estimates_for_a_glmm(binomial):
    table = binomial.compare_group_estimates()
    fit = binomial.fit_frequentist()
    assert table.attrs["frequentist"] == "Laplace"
    np.testing.assert_allclose(table["partial_freq"], fit.fixef["(Intercept)"].to_numpy())
    np.testing.assert_allclose(table["no_pooling"], pooling.no_pooling(binomial)["(Intercept)"].to_numpy())
    np.testing.assert_allclose(table["complete_pooling"], pooling.complete_pooling(binomial)["(Intercept)"])
    effects = _draws(binomial, "ranef_herd")[:, :, 0] + _draws(binomial, "beta")[:, [0]]
    np.testing.assert_allclose(table["partial_bayes"], effects.mean(axis=0))
    # partial pooling lies between the herd's own estimate and the common one for most herds
    between = (table["partial_freq"] - table["no_pooling"]) * (table["partial_freq"] - table["complete_pooling"]) <= 0
    assert between.mean() > 0.8


def test_compare_fixed_effects_uses_wald_z(binomial):
    table = binomial.compare_fixed_effects()
    fit = binomial.fit_frequentist()
    assert "freq_DF" not in table.columns and table.attrs["df_method"] == "Wald z"
    np.testing.assert_allclose(table["freq_2.5_ci"], fit.coefs["2.5_ci"])
    np.testing.assert_allclose(table["freq_P-val"], fit.coefs["P-val"])
    np.testing.assert_allclose(table["bayes_Estimate"], _draws(binomial, "beta").mean(axis=0))
    narrow = binomial.compare_fixed_effects(prob=0.5)
    np.testing.assert_allclose(narrow["freq_75_ci"] - narrow["freq_Estimate"], 0.6744898 * fit.coefs["SE"], rtol=1e-6)


def test_compare_variance_components_bootstraps_the_family(binomial):
    table = binomial.compare_variance_components(n_boot=4, random_seed=2)
    assert list(table["group"]) == ["herd"] and table.attrs["frequentist"] == "Laplace"
    assert table["freq_Estimate"].iloc[0] == pytest.approx(binomial.fit_frequentist().ranef_var["Std"].iloc[0])
    assert np.isfinite(table[["freq_2.5_ci", "freq_97.5_ci"]].to_numpy()).all()
    assert table.attrs["n_boot"] == 4
    with pytest.raises(UnsupportedSyntaxError, match="no REML criterion"):
        binomial.compare_variance_components(REML=True)


# ------------------------------------------------------------------------------------------ Bayesian tables
def test_data_has_response_scale_fits_and_pearson_residuals(binomial, cbpp):
    data = binomial.data
    p = _binomial_means(binomial)
    n, successes = cbpp["size"].to_numpy(), cbpp["incidence"].to_numpy()
    np.testing.assert_allclose(data["fits"], p.mean(axis=0))
    np.testing.assert_allclose(data["residuals"], successes / n - p.mean(axis=0))
    pearson = ((successes - n * p) / np.sqrt(n * p * (1 - p))).mean(axis=0)
    np.testing.assert_allclose(data["pearson_residuals"], pearson)


def test_negative_binomial_pearson_residuals_use_each_draws_dispersion(negbin):
    design = negbin.design
    block = design.blocks[0]
    mu = np.exp(_draws(negbin, "beta") @ design.X.T + _draws(negbin, "ranef_LOCATION")[:, block.group_index, 0])
    size = _draws(negbin, "dispersion")[:, None]
    expected = ((design.y - mu) / np.sqrt(mu + mu**2 / size)).mean(axis=0)
    np.testing.assert_allclose(negbin.data["pearson_residuals"], expected)


def test_r2_is_brms_bayes_r2_on_expected_counts(binomial, cbpp):
    n, y = cbpp["size"].to_numpy(), cbpp["incidence"].to_numpy()
    design = binomial.design
    conditional = n * _binomial_means(binomial)
    marginal = n * expit(_draws(binomial, "beta") @ design.X.T)

    def bayes_r2(mu):
        fit, residual = mu.var(axis=1, ddof=1), (y - mu).var(axis=1, ddof=1)
        return fit / (fit + residual)

    table = r2(binomial)
    assert table.loc["conditional", "Estimate"] == pytest.approx(bayes_r2(conditional).mean())
    assert table.loc["marginal", "Estimate"] == pytest.approx(bayes_r2(marginal).mean())
    assert 0 < table.loc["marginal", "Estimate"] < table.loc["conditional", "Estimate"] < 1


def test_bayesian_summary_of_glmms(binomial, negbin):
    text = str(binomial.summary())
    assert "Bayesian generalized linear mixed model" in text and "Family: binomial (logit link)" in text
    assert "logit scale" in text and "Residual" not in text and binomial.family_params is None
    assert list(binomial.ranef_var.index) == ["herd"]
    table = negbin.family_params
    assert list(table.index) == ["dispersion"]
    assert table.loc["dispersion", "Estimate"] == pytest.approx(np.median(_draws(negbin, "dispersion")))
    assert "Family parameters (posterior median, 95% interval):" in str(negbin.summary())
    assert n_parameters(negbin) == 4 + 1 + 1 and n_parameters(binomial) == 4 + 1


# ------------------------------------------------------------------------------------------ saving, command line
def test_save_and_load_keep_family_link_and_trials(cbpp, tmp_path):
    data = cbpp.assign(proportion=cbpp["incidence"] / cbpp["size"])
    model = _stand_in_posterior(Lmer("proportion ~ period + (1 | herd)", data, family="binomial", link="probit", weights="size"))
    loaded = load(model.save(tmp_path / "probit.zarr"))
    assert loaded.family == model.family and loaded.family.link.name == "probit"
    np.testing.assert_array_equal(loaded.design.trials, data["size"])
    np.testing.assert_array_equal(loaded.design.y, cbpp["incidence"])
    pd.testing.assert_frame_equal(loaded.coefs, model.coefs)
    pd.testing.assert_frame_equal(loaded.data, model.data)
    np.testing.assert_allclose(loaded.fit_frequentist().beta, model.fit_frequentist().beta, rtol=1e-10)


def test_save_and_load_keep_offsets(cbpp, tmp_path):
    model = _stand_in_posterior(Lmer("incidence ~ period + (1 | herd)", cbpp, family="poisson", offset=np.log(cbpp["size"])))
    loaded = load(model.save(tmp_path / "offset.zarr"))
    np.testing.assert_allclose(loaded.design.offset, np.log(cbpp["size"]))
    pd.testing.assert_frame_equal(loaded.data, model.data)


def test_command_line_passes_family_link_and_weights(cbpp, tmp_path, monkeypatch, capsys):
    data = cbpp.assign(proportion=cbpp["incidence"] / cbpp["size"])
    data.to_csv(tmp_path / "cbpp.csv", index=False)
    built = []

    def fit(self, **settings):  # the stand-in posterior instead of sampling
        built.append(self)
        _stand_in_posterior(self)

    monkeypatch.setattr(Lmer, "fit", fit)
    code = cli.main([
        "fit", "proportion ~ period + (1 | herd)", str(tmp_path / "cbpp.csv"), "--family", "binomial",
        "--link", "cloglog", "--weights", "size", "--save", str(tmp_path / "cli.zarr"),
    ])
    out = capsys.readouterr().out
    assert code == 0 and "Family: binomial (cloglog link)" in out
    assert built[0].family.link.name == "cloglog"
    np.testing.assert_array_equal(built[0].design.trials, cbpp["size"])
    assert cli.main(["summary", str(tmp_path / "cli.zarr")]) == 0
    assert "Family: binomial (cloglog link)" in capsys.readouterr().out
    assert cli.main(["fit", CBPP, str(tmp_path / "cbpp.csv"), "--family", "binomial", "--link", "identity"]) == 2
    assert "has links logit, probit, cloglog" in capsys.readouterr().err


def test_pointwise_log_likelihood_and_lrt(binomial, cbpp):
    from scipy import stats

    from bayeslmm import lrt

    p = _binomial_means(binomial)
    expected = stats.binom.logpmf(cbpp["incidence"].to_numpy(), cbpp["size"].to_numpy(), p)
    np.testing.assert_allclose(binomial.log_likelihood().values.reshape(len(p), -1), expected, rtol=1e-10)
    smaller = _stand_in_posterior(Lmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", cbpp, family="binomial"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k of a 80-draw stand-in posterior
        table = lrt(smaller, binomial)
    assert list(table["npar"]) == [2, 5] and table["best"].sum() == 1
    # lme4's anova(m0, m1) of the two Laplace fits
    import json
    from pathlib import Path

    reference = json.loads((Path(__file__).parent / "reference" / "glmer.json").read_text())["cbpp_lrt"]
    assert table["logLik"].iloc[0] == pytest.approx(reference["logLik_null"], abs=1e-4)
    assert table["Chisq"].iloc[1] == pytest.approx(reference["Chisq"], abs=2e-4)
    assert table["Df"].iloc[1] == reference["Df"]
    assert table["P-val"].iloc[1] == pytest.approx(reference["p"], rel=1e-3)


def test_frequentist_predict_simulate_and_contrasts(binomial, cbpp):
    fit = binomial.fit_frequentist()
    import json
    from pathlib import Path

    fitted = json.loads((Path(__file__).parent / "reference" / "glmer.json").read_text())["cbpp_logit"]["fitted"]
    np.testing.assert_allclose(fit.predict(), fitted, rtol=2e-4)  # lme4's fitted(): probabilities
    np.testing.assert_allclose(fit.predict(pred_type="link"), np.log(fit.fitted / (1 - fit.fitted)), rtol=1e-10)
    new_herd = cbpp.head(4).assign(herd=99)  # an unseen herd gets the population level
    np.testing.assert_allclose(fit.predict(new_herd), expit(binomial.design.X[:4] @ fit.beta), rtol=1e-12)
    sims = fit.simulate(400, random_seed=3).to_numpy()
    n = cbpp["size"].to_numpy()[:, None]
    assert ((sims >= 0) & (sims <= n) & (sims == np.round(sims))).all()
    # binomial draws around trials x fitted probability: within 4 standard errors of the mean of 400
    mean, sd = n[:, 0] * fit.fitted, np.sqrt(n[:, 0] * fit.fitted * (1 - fit.fitted) / 400)
    assert (np.abs(sims.mean(axis=1) - mean) < 4 * sd).all()
    contrasts = fit.test_contrasts(np.eye(4)[[1]] - np.eye(4)[[2]])
    assert list(contrasts.columns) == ["Estimate", "SE", "Z-stat", "P-val"]
    assert contrasts["Estimate"].iloc[0] == pytest.approx(fit.beta[1] - fit.beta[2])
    single = fit.test_contrasts(np.eye(4)[[3]])
    assert single["P-val"].iloc[0] == pytest.approx(fit.coefs["P-val"].iloc[3])
    with pytest.raises(UnsupportedSyntaxError, match="Satterthwaite df are for gaussian models"):
        fit.anova()
