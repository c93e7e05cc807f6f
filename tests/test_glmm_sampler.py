"""The GLMM engine (bayeslmm.engines.glmm): exact gradients, the posterior it returns, its routing, and
short honest comparisons with independent samplers (Bambi under identical priors; an independent
random-walk Metropolis sampler near the boundary). The long versions, SBC and the benchmarks are in
validation/glmm_validation.py and bench/bench_glmm.py (summarised in docs/glmm-engine.md)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeslmm import Lmer, Prior, load_dataset
from bayeslmm.engines import glmm
from bayeslmm.engines.glmm import pack
from bayeslmm.engines.posterior_names import var_names

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "validation"))


def _fit(model: Lmer, **settings) -> Lmer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(progressbar=False, **settings)
    return model


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    data = load_dataset("cbpp")
    return data.assign(t=data["period"].astype(int) / 4.0, obs=[f"o{i}" for i in range(len(data))])


@pytest.fixture(scope="module")
def grouse() -> pd.DataFrame:
    return load_dataset("grouseticks")


@pytest.fixture(scope="module")
def three() -> pd.DataFrame:
    """sleepstudy with a 3-level factor ``g`` of 6 subjects each: the boundary case of issue 12 #19."""
    data = load_dataset("sleepstudy")
    return data.assign(g=(pd.factorize(data["Subject"])[0] % 3).astype(str))


#: A Student-t prior on a fixed effect: the collapsed sampler cannot take it, the GLMM engine can.
HEAVY = {"Days": Prior("StudentT", nu=3, mu=0, sigma=10)}


# ----------------------------------------------------------------------------------- gradients
GRADIENT_CASES = [
    ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial", None),
    ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial", "probit"),
    ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial", "cloglog"),
    ("cbind(incidence, size - incidence) ~ t + (t | herd)", "cbpp", "binomial", None),
    ("cbind(incidence, size - incidence) ~ t + (t + I(t**2) | herd)", "cbpp", "binomial", None),
    ("cbind(incidence, size - incidence) ~ t + (t || herd)", "cbpp", "binomial", None),
    ("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", "cbpp", "binomial", None),
    ("cbind(incidence, size - incidence) ~ 0 + (1 | herd)", "cbpp", "binomial", None),
    ("cbind(incidence, size - incidence) ~ 0 + t + (1 | herd)", "cbpp", "binomial", None),
    ("incidence ~ period + offset(log(size)) + (1 | herd)", "cbpp", "poisson", None),
    ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", "grouse", "poisson", None),
    ("TICKS ~ YEAR + cHEIGHT + (cHEIGHT | LOCATION)", "grouse", "negbinomial", None),
    ("Reaction ~ Days + (Days | Subject)", "three", "gaussian", None),
    ("Reaction ~ Days + g + (1 | g) + (0 + Days | Subject)", "three", "gaussian", None),
    ("Reaction ~ Days + offset(2 * Days) + (1 | Subject)", "three", "gaussian", None),
]


@pytest.mark.parametrize("formula, data_name, family, link", GRADIENT_CASES)
def test_gradient_matches_finite_differences(formula, data_name, family, link, request):
    """The hand-written gradient (reverse and forward passes through the parametrization) is exact."""
    data = request.getfixturevalue(data_name)
    model = Lmer(formula, data, family=family, link=link, priors={"eta": 1.5} if "(t |" in formula else None)
    packed = pack(model.design, model.model_priors, model.family)
    rng = np.random.default_rng(0)
    x = packed.init + rng.normal(0.0, 0.3, packed.n_dim)
    value, grad = packed.logp_grad(x)
    assert np.isfinite(value)
    coords = np.arange(packed.n_dim) if packed.n_dim <= 80 else rng.choice(packed.n_dim, 80, replace=False)
    h = 1e-6
    numeric = np.array([(packed.logp(x + h * e) - packed.logp(x - h * e)) / (2 * h) for e in np.eye(packed.n_dim)[coords]])
    np.testing.assert_allclose(grad[coords], numeric, rtol=1e-5, atol=1e-5 * (1 + np.abs(numeric).max()))


@pytest.mark.parametrize("formula, data_name, family, priors", [
    ("cbind(incidence, size - incidence) ~ t + (1 | herd)", "cbpp", "binomial", None),
    # two blocks: the triangular map
    ("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)", "cbpp", "binomial", None),
    ("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", "grouse", "negbinomial", None),
    ("Reaction ~ Days + g + (1 | g) + (1 | Subject)", "three", "gaussian", HEAVY),
])
def test_density_is_the_joint_posterior_in_new_coordinates(formula, data_name, family, priors, request):
    """Exactness: the kernel's log density at x is the model's joint log posterior at T(x) plus
    log |det dT/dx|, where T maps x to (beta_c, z_j = b_j / sd_j, log sd_j, [log dispersion or log
    sigma]) and the joint posterior in those coordinates is written independently (NumPy and SciPy);
    compared through differences between points, which cancel the constants either side leaves out."""
    from glmm_reference import IndependentGLMM

    model = Lmer(formula, request.getfixturevalue(data_name), family=family, priors=priors)
    packed = pack(model.design, model.model_priors, model.family)
    reference = IndependentGLMM(model.design, model.model_priors, family)
    p = model.design.X.shape[1]

    def T(x):
        effects = packed.effects(x[None])[0]
        parts, log_sds = [effects[:p]], []
        for j, block in enumerate(model.design.blocks):
            sd = float(packed.sds(x[None], j, 1)[0, 0])
            start = p + packed.b_offsets[j]
            parts.append(effects[start:start + block.n_levels] / sd)
            log_sds.append(np.log(sd))
        aux = [] if packed.aux_offset is None else [x[packed.aux_offset]]
        return np.concatenate(parts + [log_sds, aux])

    def log_density_via_reference(x, h=1e-6):
        J = np.stack([(T(x + h * e) - T(x - h * e)) / (2 * h) for e in np.eye(packed.n_dim)], axis=1)
        return float(reference.logp(T(x)[None])[0]) + np.linalg.slogdet(J)[1]

    rng = np.random.default_rng(1)
    points = [packed.init + rng.normal(0, 0.4, packed.n_dim) for _ in range(3)]
    ours = np.array([packed.logp(x) for x in points])
    theirs = np.array([log_density_via_reference(x) for x in points])
    np.testing.assert_allclose(ours - ours[0], theirs - theirs[0], atol=1e-5)


# ----------------------------------------------------------------------------------- fitted models
@pytest.fixture(scope="module")
def cbpp_fit(cbpp) -> Lmer:
    model = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    return _fit(model, draws=500, tune=500, chains=2, random_seed=5)


@pytest.fixture(scope="module")
def slope_fit(cbpp) -> Lmer:
    model = Lmer("cbind(incidence, size - incidence) ~ t + (t | herd)", cbpp, family="binomial")
    return _fit(model, draws=300, tune=300, chains=2, random_seed=5)


@pytest.fixture(scope="module")
def nb_fit(grouse) -> Lmer:
    model = Lmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", grouse, family="negbinomial")
    return _fit(model, draws=300, tune=300, chains=2, random_seed=5)


def test_glmms_use_the_engine_with_the_general_model_s_variables(cbpp_fit, slope_fit, nb_fit):
    for model in (cbpp_fit, slope_fit, nb_fit):
        assert model.sampler.sampler == glmm.SAMPLER_LABEL
        post = model.posterior
        assert sorted(post.data_vars) == sorted(model._kept_variables())
        assert post["beta"].dims == ("chain", "draw", "fixed_term")
        assert list(post["fixed_term"].values) == list(model.design.fixed_terms)
        for block in model.design.blocks:
            names = var_names(block)
            assert post[names["sd"]].dims == ("chain", "draw", names["term"])
            assert post[names["ranef"]].dims == ("chain", "draw", names["level"], names["term"])
            assert list(post[names["level"]].values) == list(block.levels)
            if block.n_terms > 1:
                assert post[names["corr"]].dims == ("chain", "draw", names["term"], names["term_"])
                corr = post[names["corr"]].values
                np.testing.assert_allclose(corr[..., 0, 0], 1.0)
                assert np.all(np.abs(corr[..., 0, 1]) < 1)
        assert int(model.idata["sample_stats"]["diverging"].sum()) == 0
    assert float(nb_fit.posterior["dispersion"].min()) > 0
    assert "dispersion" in nb_fit.posterior and nb_fit.posterior["dispersion"].dims == ("chain", "draw")


def test_results_agree_with_lme4(cbpp_fit):
    """Posterior means near glmer's estimates (the Laplace ML fit; the posterior SD is a bit larger)."""
    import json

    reference = json.loads((ROOT / "tests" / "reference" / "glmer.json").read_text())["cbpp_logit"]
    coefs = cbpp_fit.coefs
    for (term, value), se in zip(reference["fixef"].items(), reference["SE"].values()):
        ours = coefs.loc[term.replace("period", "period[") + ("]" if term.startswith("period") else ""), "Estimate"]
        assert abs(ours - value) < 0.5 * se
    assert 0.5 < float(cbpp_fit.posterior["sd_herd"].median()) < 1.0  # glmer: 0.642
    assert set(cbpp_fit.data.columns) >= {"fits", "residuals"}
    assert np.all((cbpp_fit.data["fits"] > 0) & (cbpp_fit.data["fits"] < 1))


def test_same_seed_same_draws(cbpp):
    model = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    first = _fit(model, draws=50, tune=50, chains=2, random_seed=9).posterior["beta"].values
    second = _fit(model, draws=50, tune=50, chains=2, random_seed=9).posterior["beta"].values
    np.testing.assert_array_equal(first, second)


def test_routing_and_fallback(cbpp, three):
    model = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    assert model._engine(None, {}) is glmm
    assert model._engine(False, {}) is None  # marginalize=False: the full PyMC model
    assert model._engine(None, {"nuts_sampler": "pymc"}) is None
    t_prior = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial",
                   priors={"period[2]": Prior("StudentT", nu=3, mu=0, sigma=2.5)})
    assert t_prior._engine(True, {}) is glmm
    laplace = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial",
                   priors={"period[2]": Prior("Laplace", mu=0, b=1)})
    assert laplace._engine(None, {}) is None  # falls back to the PyMC model
    with pytest.raises(ValueError, match="no exact sampler takes this model"):
        laplace._engine(True, {})
    with pytest.raises(ValueError, match="marginalize=True needs nutpie"):
        model._engine(True, {"nuts_sampler": "pymc"})
    # gaussian: the collapsed sampler when it applies, else this engine, else PyMC
    assert Lmer("Reaction ~ Days + (1 | g)", three)._engine(None, {}).__name__.endswith("collapsed")
    assert Lmer("Reaction ~ Days + (1 | g)", three, priors=HEAVY)._engine(None, {}) is glmm
    assert Lmer("Reaction ~ Days + offset(Days) + (1 | g)", three)._engine(None, {}) is glmm
    assert Lmer("Reaction ~ Days + (1 | g)", three, priors={"Days": Prior("Laplace", mu=0, b=10)})._engine(None, {}) is None


# ----------------------------------------------------------------------------------- gaussian models
# The collapsed sampler takes gaussian models with Normal fixed-effect priors; the rest come here rather
# than to the full PyMC model, which gave 178 divergences and intervals 3x too narrow on the first case
# (issue 12 #19) and 33 divergences on the second.
BOUNDARY_CASES = {
    "3-level factor, fixed and grouping": ("Reaction ~ Days + g + (1 | g)", "three", "Days"),
    "Simpson's paradox, correlated slopes": ("y ~ x + (x | participant)", "simpson", "x"),
}


@pytest.fixture(scope="module")
def simpson() -> pd.DataFrame:
    from bayeslmm.datasets import simulate_simpson

    return simulate_simpson()


@pytest.mark.parametrize("formula, data_name, slope", BOUNDARY_CASES.values(), ids=BOUNDARY_CASES.keys())
def test_gaussian_posterior_agrees_with_the_collapsed_sampler(formula, data_name, slope, request):
    """Same model, same priors, two exact samplers: every fixed effect, SD, sigma and group effect
    agrees in mean and 5/50/95% quantiles within 4 MCSE (about 4000 draws each), and this engine has no
    divergences."""
    model = _fit(Lmer(formula, request.getfixturevalue(data_name)), draws=1000, random_seed=4)
    assert model.sampler.sampler == "nutpie, marginal"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata, _ = glmm.sample_glmm(model.design, model.model_priors, model.family, draws=1000, tune=1000,
                                    chains=4, random_seed=5)
    assert int(idata["sample_stats"]["diverging"].sum()) == 0
    ours, theirs = idata["posterior"], model.posterior
    pairs = [(ours["sigma"].values, theirs["sigma"].values)]
    for name in ["beta"] + [v for v in theirs.data_vars if v.startswith(("sd_", "ranef_"))]:
        a, b = ours[name].values, theirs[name].values
        a, b = a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)
        pairs += [(a[..., i], b[..., i]) for i in range(min(a.shape[-1], 12))]
    z = np.array([_z_scores(a, b) for a, b in pairs])
    assert np.all(np.abs(z) <= 4), z


@pytest.mark.parametrize("formula, data_name, slope", BOUNDARY_CASES.values(), ids=BOUNDARY_CASES.keys())
def test_heavy_tailed_fixed_prior_takes_an_exact_path_near_the_boundary(formula, data_name, slope, request):
    """A Student-t prior on the slope (not conjugate: the collapsed sampler cannot take it) goes to this
    engine, not the full PyMC model: no divergences at default settings, R-hat <= 1.01, and the
    intercept's posterior SD (set by the group SD's prior, not by the slope's) within 10% of the
    Normal-prior fit's, where the full PyMC model had it 40% too small."""
    import arviz as az

    data = request.getfixturevalue(data_name)
    heavy = _fit(Lmer(formula, data, priors={slope: Prior("StudentT", nu=3, mu=0, sigma=10)}), random_seed=6)
    assert heavy.sampler.sampler == glmm.SAMPLER_LABEL
    assert int(heavy.idata["sample_stats"]["diverging"].sum()) == 0
    assert float(az.rhat(heavy.posterior["beta"]).max()) <= 1.01
    normal = _fit(Lmer(formula, data), random_seed=6)
    ratio = heavy.coefs.loc["(Intercept)", "SE"] / normal.coefs.loc["(Intercept)", "SE"]
    assert 0.9 < ratio < 1.1, ratio


# ----------------------------------------------------------------------------------- independent samplers
def _z_scores(ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    import arviz as az

    out = [float((ours.mean() - theirs.mean()) / np.hypot(az.mcse(ours), az.mcse(theirs)))]
    for q in (0.05, 0.5, 0.95):
        se = np.hypot(az.mcse(ours, method="quantile", prob=q), az.mcse(theirs, method="quantile", prob=q))
        out.append(float((np.quantile(ours, q) - np.quantile(theirs, q)) / se))
    return out


def test_near_singular_case_agrees_with_an_independent_sampler():
    """3 groups, true SD 0.05: no divergences at default settings, and the posterior mean and 5/50/95%
    quantiles of every fixed effect, the SD and the group effects within 4 MCSE of a random-walk
    Metropolis sampler written independently in NumPy and SciPy."""
    from glmm_reference import IndependentGLMM, random_walk_metropolis
    from glmm_validation import NEAR_SINGULAR_FORMULA, near_singular_data

    model = _fit(Lmer(NEAR_SINGULAR_FORMULA["binomial"], near_singular_data("binomial"), family="binomial"),
                 draws=2000, random_seed=4)
    assert int(model.idata["sample_stats"]["diverging"].sum()) == 0
    reference = IndependentGLMM(model.design, model.model_priors, "binomial")
    start = np.zeros(reference.dim)
    start[-1] = np.log(0.3)
    theta = random_walk_metropolis(reference, start, chains=16, warmup=4000, steps=24000, thin=8, seed=2)
    chains, draws = theta.shape[:2]
    ref = reference.draws(theta.reshape(-1, reference.dim))
    post = model.posterior
    pairs = [(post["beta"].values[..., i], ref["beta"][:, i]) for i in range(2)]
    pairs.append((post["sd_g"].values[..., 0], ref["sd_0"]))
    pairs += [(post["ranef_g"].values[..., g, 0], ref["ranef_0"][:, g]) for g in range(3)]
    z = np.array([_z_scores(ours, theirs.reshape(chains, draws)) for ours, theirs in pairs])
    assert np.all(np.abs(z) <= 4), z


def test_agrees_with_bambi_under_identical_priors(cbpp):
    """cbpp (binomial logit): same priors in both (Normal(0, 2.5) on every centred fixed effect,
    HalfNormal(1) on the SD); every posterior mean and 5/50/95% quantile within 4 MCSE."""
    import bambi as bmb

    priors = {t: Prior("Normal", mu=0, sigma=2.5) for t in ["(Intercept)", "period[2]", "period[3]", "period[4]"]}
    priors["1|herd"] = Prior("HalfNormal", sigma=1.0)
    ours = _fit(Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial",
                     priors=priors), draws=1500, tune=500, random_seed=6)
    bambi_priors = {
        "Intercept": bmb.Prior("Normal", mu=0, sigma=2.5),
        "period": bmb.Prior("Normal", mu=0, sigma=2.5),
        "1|herd": bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfNormal", sigma=1.0)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bmodel = bmb.Model("p(incidence, size) ~ period + (1 | herd)", cbpp, family="binomial", priors=bambi_priors)
        idata = bmodel.fit(draws=1500, tune=500, chains=4, inference_method="nutpie", random_seed=6,
                           progressbar=False, target_accept=0.95)
    theirs = idata["posterior"].to_dataset() if hasattr(idata, "children") else idata.posterior
    post = ours.posterior
    pairs = [(post["beta"].values[..., 0], theirs["Intercept"].values)]
    period_dim = [d for d in theirs["period"].dims if d not in ("chain", "draw")][0]
    for i, level in enumerate(["2", "3", "4"]):
        pairs.append((post["beta"].values[..., i + 1], theirs["period"].sel({period_dim: level}).values))
    pairs.append((post["sd_herd"].values[..., 0], theirs["1|herd_sigma"].values))
    herd_dim = [d for d in theirs["1|herd"].dims if d not in ("chain", "draw")][0]
    for g in range(3):
        pairs.append((post["ranef_herd"].values[..., g, 0], theirs["1|herd"].isel({herd_dim: g}).values))
    z = np.array([_z_scores(a, b) for a, b in pairs])
    assert np.all(np.abs(z) <= 4), z


@pytest.mark.slow
def test_glmm_fit_loads_neither_pymc_nor_arviz_nor_matplotlib():
    import json
    import subprocess

    code = (
        "from bayeslmm import Lmer, load_dataset\n"
        "m = Lmer('cbind(incidence, size - incidence) ~ period + (1 | herd)', load_dataset('cbpp'), family='binomial')\n"
        "m.fit(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)\n"
        "str(m.coefs); str(m.summary())\n"
        "import json, sys; print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"pymc", "pytensor", "arviz", "arviz_stats", "arviz_plots", "matplotlib", "bambi"}


def test_posterior_names_dims_and_groups_as_every_sampler(cbpp):
    """As tests/test_posterior_names.py checks for the Gaussian samplers: the variables, dims and
    coordinates every reader relies on, plus the dispersion of the negative binomial."""
    data = cbpp.assign(late=np.where(cbpp["period"].astype(int) > 2, "late", "early"))
    model = _fit(Lmer("cbind(incidence, size - incidence) ~ t + (t | herd) + (1 | late)", data, family="binomial"),
                 draws=60, tune=60, chains=2, random_seed=2)
    posterior = model.posterior
    assert set(posterior.data_vars) == {"beta", "sd_herd", "corr_herd", "ranef_herd", "sd_late", "ranef_late"}
    expected = {
        "beta": ("chain", "draw", "fixed_term"),
        "sd_herd": ("chain", "draw", "herd__term"),
        "corr_herd": ("chain", "draw", "herd__term", "herd__term_"),
        "ranef_herd": ("chain", "draw", "herd__level", "herd__term"),
        "sd_late": ("chain", "draw", "late__term"),
        "ranef_late": ("chain", "draw", "late__level", "late__term"),
    }
    for name, dims in expected.items():
        assert posterior[name].dims == dims, name
    assert posterior.sizes["chain"] == 2 and posterior.sizes["draw"] == 60
    assert list(posterior["fixed_term"].values) == ["(Intercept)", "t"]
    assert list(posterior["herd__term"].values) == list(posterior["herd__term_"].values) == ["(Intercept)", "t"]
    assert list(posterior["herd__level"].values) == list(model.design.blocks[0].levels)
    assert list(posterior["late__level"].values) == ["early", "late"]
    assert "diverging" in model.idata["sample_stats"]
    assert model.idata["log_likelihood"]["y"].dims == ("chain", "draw", "obs")


@pytest.mark.parametrize("case", ["binomial", "gaussian"])
def test_precompiled_signatures_are_the_ones_a_fit_uses(cbpp, case):
    """``bayeslmm compile`` is only useful if a fit finds its kernels already compiled: after
    compile_kernels, evaluating a packed model must not add a signature (a new one would compile again).
    load_dataset's columns are read-only under pandas' copy-on-write: the packed arrays must not be."""
    from bayeslmm.engines.glmm.kernels import compile_kernels, evaluate, evaluate_many

    compile_kernels()
    before = (list(evaluate.signatures), list(evaluate_many.signatures))
    if case == "binomial":
        model = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    else:
        model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    packed = pack(model.design, model.model_priors, model.family)
    assert all(a.flags.writeable and a.flags.c_contiguous for a in packed.floats + packed.ints)
    packed.logp_grad(packed.init)
    packed.logp(packed.init)
    packed.effects(packed.init[None])
    assert (list(evaluate.signatures), list(evaluate_many.signatures)) == before
