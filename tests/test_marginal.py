"""The marginal (collapsed) Gaussian path: exact density, gradient, and agreement with the PyMC model."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeslmm import Lmer, load_dataset
from bayeslmm.engines import collapsed as marginal
from bayeslmm.engines.collapsed import imh
from bayeslmm.errors import PriorError
from bayeslmm.spec.design import build_design
from bayeslmm.spec.families import get_family
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.priors import Prior, default_priors

GAUSSIAN = get_family("gaussian")


def _design(formula, data, user=None):
    design = build_design(parse_formula(formula), data)
    return design, default_priors(design, user)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(3)
    n = 48
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "w": rng.normal(size=n),
            "g": rng.integers(0, 5, n).astype(str),
            "h": rng.integers(0, 4, n).astype(str),
        }
    )
    frame["y"] = 1.0 + frame.x + rng.normal(size=n)
    return frame


def _scipy_positive(prior: Prior, x: float) -> float:
    """Reference log density of a positive prior, from SciPy."""
    q = prior.params
    if prior.distribution == "HalfNormal":
        return stats.halfnorm(scale=q["sigma"]).logpdf(x)
    if prior.distribution == "HalfStudentT":
        return stats.t(df=q["nu"], scale=q["sigma"]).logpdf(x) + np.log(2)
    if prior.distribution == "Exponential":
        return stats.expon(scale=1 / q["lam"]).logpdf(x)
    if prior.distribution == "Gamma":
        return stats.gamma(q["alpha"], scale=1 / q["beta"]).logpdf(x)
    raise AssertionError(prior)


def _free_corr(packed, design, x, block_index, off, k):
    """Strict lower triangle of the correlation matrix as a function of the block's parameters."""
    block = design.blocks[block_index]
    corr = marginal.unpack_theta(packed, design, x)[f"corr_{block.name}"]
    return corr[np.tril_indices(k, -1)]


def _brute_log_density(packed, design, priors, x):
    """Dense N(Xc m, sigma^2 I + U D U') likelihood + SciPy priors + numeric Jacobians."""
    hyper = marginal.unpack_theta(packed, design, x)
    Xc = design.X - packed.means
    V = hyper["sigma"] ** 2 * np.eye(design.n_obs) + Xc @ np.diag(1 / packed.floats[5]) @ Xc.T
    logp = _scipy_positive(priors.sigma, hyper["sigma"]) + x[0]
    for j, (block, off) in enumerate(zip(design.blocks, packed.x_offsets)):
        k = block.n_terms
        sd = hyper[f"sd_{block.name}"]
        corr = hyper[f"corr_{block.name}"] if k > 1 else np.eye(1)
        Z = _sparse_block(block).toarray()
        V += Z @ np.kron(np.eye(block.n_levels), np.outer(sd, sd) * corr) @ Z.T
        for t, term in enumerate(block.terms):
            # the SD's Jacobian: exp(x) (log sd) or scale * softplus(x), numerically
            step = np.zeros_like(x)
            step[off + t] = 1e-6
            up, down = (marginal.unpack_theta(packed, design, x + s)[f"sd_{block.name}"][t] for s in (step, -step))
            logp += _scipy_positive(priors.group_sd[block.name][term], sd[t]) + np.log((up - down) / 2e-6)
        if k > 1:
            # LKJ: det(R)^(eta - 1) on the free correlations; Jacobian of y -> free correlations numerically
            m = k * (k - 1) // 2
            jac = np.empty((m, m))
            for i in range(m):
                step = np.zeros_like(x)
                step[off + k + i] = 1e-6
                jac[:, i] = (
                    _free_corr(packed, design, x + step, j, off, k) - _free_corr(packed, design, x - step, j, off, k)
                ) / 2e-6
            logp += (priors.eta[block.name] - 1) * np.linalg.slogdet(corr)[1] + np.linalg.slogdet(jac)[1]
    return logp + stats.multivariate_normal(Xc @ packed.prior_mean, V).logpdf(design.y)


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ x + (x | g)",  # correlated 2-term block
        "y ~ x + (1 | g) + (1 | h)",  # crossed factors
        "y ~ x + w + (x + w | g) + (1 | h)",  # 3-term block, crossed
        "y ~ x + (x || g)",  # two blocks on one factor
        "y ~ 0 + x + (1 | g)",  # no intercept: no centring
    ],
)
def test_density_and_gradient(toy, formula):
    user = {"sigma": Prior("Gamma", alpha=2.0, beta=1.0), "eta": 2.0} if "w" in formula else None
    if formula.startswith("y ~ x + (1"):
        user = {"1|g": Prior("Exponential", lam=0.5)}
    design, priors = _design(formula, toy, user)
    assert marginal.supports(design, priors, GAUSSIAN)
    packed = marginal.pack(design, priors)
    rng = np.random.default_rng(0)
    points = [rng.normal(scale=0.7, size=packed.n_dim) for _ in range(3)]
    # the kernel drops constants of the priors: compare differences between points
    kernel = np.array([packed.logp(x) for x in points])
    brute = np.array([_brute_log_density(packed, design, priors, x) for x in points])
    np.testing.assert_allclose(kernel - kernel[0], brute - brute[0], atol=1e-6)
    for x in points:
        value, grad = packed.logp_grad(x)
        assert value == pytest.approx(packed.logp(x))
        eye = np.eye(packed.n_dim) * 1e-6
        numeric = [(packed.logp(x + h) - packed.logp(x - h)) / 2e-6 for h in eye]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-5)


def test_conditional_draws_match_gls(toy):
    """Mean of the conditional draws at fixed theta = the GLS / BLUP solution."""
    design, priors = _design("y ~ x + (x | g)", toy)
    packed = marginal.pack(design, priors)
    x = np.array([0.1, 0.2, -0.5, 0.3])
    theta = np.tile(x, (1, 4000, 1))
    post = marginal.posterior_from_theta(packed, design, theta, np.random.default_rng(1))
    hyper = marginal.unpack_theta(packed, design, x)
    sd, corr = hyper["sd_g"], hyper["corr_g"]
    Xc = design.X - packed.means
    Z = _sparse_block(design.blocks[0]).toarray()
    U = np.hstack([Xc, Z])
    Dinv = np.zeros((U.shape[1], U.shape[1]))
    Dinv[:2, :2] = np.diag(packed.floats[5])
    Dinv[2:, 2:] = np.kron(np.eye(design.blocks[0].n_levels), np.linalg.inv(np.outer(sd, sd) * corr))
    M = Dinv + U.T @ U / hyper["sigma"] ** 2
    mean = np.linalg.solve(M, U.T @ (design.y - Xc @ packed.prior_mean) / hyper["sigma"] ** 2)
    beta_c = mean[:2] + packed.prior_mean
    beta = beta_c.copy()
    beta[0] -= beta_c @ packed.means
    se = np.sqrt(np.diag(np.linalg.inv(M)) / 4000)
    np.testing.assert_array_less(np.abs(post["beta"].values[0].mean(0) - beta), 5 * se[:2] + 1e-9)
    ranef = post["ranef_g"].values[0].mean(0).reshape(-1)
    np.testing.assert_array_less(np.abs(ranef - mean[2:]), 5 * se[2:])


@pytest.fixture(scope="module")
def sleepstudy():
    return load_dataset("sleepstudy")


def test_agrees_with_pymc_model(sleepstudy):
    from bayeslmm.engines.pymc_model import sample_pymc as sample
    from bayeslmm.engines.pymc_model import build_model

    design, priors = _design("Reaction ~ Days + (Days | Subject)", sleepstudy)
    keep = ["beta", "sigma", "sd_Subject", "corr_Subject", "ranef_Subject"]
    fast, settings = marginal.sample_marginal(design, priors, draws=1000, tune=1000, chains=4, random_seed=11, keep=keep)
    assert settings.sampler == "nutpie, marginal"
    slow, _ = sample(build_model(design, priors, GAUSSIAN), draws=1000, tune=1000, chains=4, random_seed=12, keep=keep)
    a, b = fast["posterior"].to_dataset(), slow["posterior"].to_dataset()
    for name in keep:
        assert a[name].dims == b[name].dims
        for dim in a[name].dims:
            assert list(a[name][dim].values) == list(b[name][dim].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in ["beta", "sigma", "sd_Subject", "corr_Subject", "ranef_Subject"]:
            se = np.sqrt(az.mcse(a[[name]])[name].values ** 2 + az.mcse(b[[name]])[name].values ** 2)
            diff = np.abs(a[name].mean(("chain", "draw")).values - b[name].mean(("chain", "draw")).values)
            ok = np.isnan(se) | (diff <= 4.5 * se)
            assert ok.all(), (name, diff, se)
    ess_fast = az.ess(a[["sd_Subject", "sigma"]], method="bulk")
    assert float(ess_fast["sd_Subject"].min()) > 1000


@pytest.mark.parametrize(
    "formula",
    ["Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (Days || Subject)", "Reaction ~ Days + (0 + Days | Subject)"],
)
def test_no_divergences_and_reproducible(sleepstudy, formula):
    design, priors = _design(formula, sleepstudy)
    tree, _ = marginal.sample_marginal(design, priors, draws=500, tune=500, chains=2, random_seed=5)
    assert not bool(tree["sample_stats"]["diverging"].any())
    assert tree["sample_stats"]["diverging"].dims == ("chain", "draw")
    assert tree["observed_data"]["y"].dims == ("obs",)
    again, _ = marginal.sample_marginal(design, priors, draws=500, tune=500, chains=2, random_seed=5)
    xr_equal = tree["posterior"].to_dataset().equals(again["posterior"].to_dataset())
    assert xr_equal


def test_supports():
    frame = load_dataset("sleepstudy")
    design, priors = _design("Reaction ~ Days + (Days | Subject)", frame)
    assert marginal.supports(design, priors, GAUSSIAN)
    _, student = _design("Reaction ~ Days + (Days | Subject)", frame, {"Days": Prior("StudentT", nu=3, mu=0, sigma=10)})
    assert not marginal.supports(design, student, GAUSSIAN)
    with pytest.raises(PriorError, match="give one of sigma or lam"):  # refused when the prior is made
        Prior("HalfStudentT", nu=3, lam=2.0, sigma=1.0)


# ----------------------------------------------------------------------------------- independence Metropolis
def _mean_agreement(a, b, names, k=4.0):
    """Posterior means of ``a`` and ``b`` agree within ``k`` combined Monte Carlo standard errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in names:
            se = np.sqrt(az.mcse(a[[name]])[name].values ** 2 + az.mcse(b[[name]])[name].values ** 2)
            diff = np.abs(a[name].mean(("chain", "draw")).values - b[name].mean(("chain", "draw")).values)
            ok = np.isnan(se) | (diff <= k * se)
            assert ok.all(), (name, diff, se)


@pytest.mark.parametrize(
    "dataset, formula",
    [("sleepstudy", "Reaction ~ Days + (Days | Subject)"), ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)")],
)
def test_imh_agrees_with_nuts(dataset, formula):
    """The independence sampler and NUTS on the same marginal density give the same posterior."""
    design, priors = _design(formula, load_dataset(dataset))
    imh, settings = marginal.sample_marginal(design, priors, draws=1000, tune=1000, chains=4, random_seed=3, method="imh")
    assert settings.sampler == "independence MH, marginal"
    nuts, _ = marginal.sample_marginal(design, priors, draws=1000, tune=1000, chains=4, random_seed=4)
    a, b = imh["posterior"].to_dataset(), nuts["posterior"].to_dataset()
    assert list(a.data_vars) == list(b.data_vars)
    for name in a.data_vars:
        assert a[name].dims == b[name].dims
    _mean_agreement(a, b, list(a.data_vars))
    hyper = [v for v in a.data_vars if not v.startswith("ranef")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert float(np.nanmax(az.rhat(a[hyper]).to_array())) <= 1.01
        assert float(np.nanmin(az.ess(a[hyper], method="bulk").to_array())) > 1000
    stats = imh["sample_stats"].to_dataset()
    assert stats["diverging"].dims == ("chain", "draw") and stats["diverging"].dtype == bool
    assert not bool(stats["diverging"].any())
    rate = stats["acceptance_rate"].values
    assert rate.shape == (4, 1000) and np.all((rate >= 0) & (rate <= 1)) and rate.mean() > 0.4
    assert stats.attrs["pareto_k"] < 0.7
    # a rejected step keeps the draw (and its effects) of the step before
    first = a["sigma"].values[:, 1:][~stats["accepted"].values[:, 1:]]
    before = a["sigma"].values[:, :-1][~stats["accepted"].values[:, 1:]]
    np.testing.assert_array_equal(first, before)


def test_imh_reproducible_and_chosen_for_large_dense_part():
    """Above MAX_NUTS dense columns the independence sampler is used; the same seed gives the same draws."""
    rng = np.random.default_rng(7)
    n = 600
    frame = pd.DataFrame({"g": rng.integers(0, 150, n).astype(str), "h": rng.integers(0, 80, n).astype(str)})
    frame["y"] = rng.normal(size=150)[frame.g.astype(int)] + 0.5 * rng.normal(size=80)[frame.h.astype(int)] + rng.normal(size=n)
    design, priors = _design("y ~ 1 + (1 | g) + (1 | h)", frame)
    assert marginal.MAX_NUTS < marginal.dense_size(design) <= marginal.MAX_DENSE
    assert marginal.supports(design, priors, GAUSSIAN)
    tree, settings = marginal.sample_marginal(design, priors, draws=300, tune=300, chains=2, random_seed=5)
    assert settings.sampler == "independence MH, marginal"
    again, _ = marginal.sample_marginal(design, priors, draws=300, tune=300, chains=2, random_seed=5, cores=1)
    assert tree["posterior"].to_dataset().equals(again["posterior"].to_dataset())
    post = tree["posterior"].to_dataset()
    for block in design.blocks:
        ranef = post[f"ranef_{block.name}"]
        assert ranef.dims[:2] == ("chain", "draw") and ranef.shape[:3] == (2, 300, block.n_levels)
    assert tree["sample_stats"]["acceptance_rate"].mean() > 0.4


def test_find_mode_matches_gradient_and_hessian(toy):
    """At the mode found by finite differences the analytic gradient vanishes; the Hessian matches it."""
    design, priors = _design("y ~ x + (x | g)", toy)
    packed = marginal.pack(design, priors)
    mode, H, value = marginal.find_mode(packed, cores=2)
    logp, grad = packed.logp_grad(mode)
    assert value == pytest.approx(packed.logp(mode), abs=1e-3)
    sd = np.sqrt(np.diag(np.linalg.inv(H)))
    np.testing.assert_array_less(np.abs(np.linalg.solve(H, grad)), 0.02 * sd)  # Newton step << posterior SD
    eye = np.eye(packed.n_dim) * 1e-5
    numeric = -np.array([(packed.logp_grad(mode + h)[1] - packed.logp_grad(mode - h)[1]) / 2e-5 for h in eye])
    np.testing.assert_allclose(H, (numeric + numeric.T) / 2, rtol=2e-3, atol=2e-3 * np.abs(H).max())


def test_proposal_densities_are_normalised():
    """The split-t and mixture proposals: importance sampling of a normalised Gaussian gives 1."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    mu = np.array([0.3, -0.2, 0.1])
    A = rng.normal(size=(3, 3))
    cov = A @ A.T + np.eye(3)
    L = np.linalg.cholesky(cov)
    split = imh._SplitT(mu, L, np.array([1.5, 0.8, 1.0]), np.array([0.7, 1.2, 1.0]), 5.0)
    mixture = imh._Mixture([split, imh._StudentT(mu, 4 * cov, 3.0)], [0.9, 0.1])
    target = multivariate_normal(mu + 0.1, cov)
    for proposal in (split, mixture):
        x = proposal.draw(rng, 200_000)
        w = np.exp(target.logpdf(x) - proposal.logpdf(x))
        assert w.mean() == pytest.approx(1.0, abs=4 * w.std() / np.sqrt(len(w)) + 1e-3)


def _sparse_block(block):
    """The block's (n, G k) sparse matrix, group-major (the collapsed sampler's column order)."""
    return block.sparse()


def test_precompiled_signatures_are_the_ones_a_fit_uses():
    """``bayeslmm compile`` is only useful if a fit finds its kernels already compiled: evaluating a
    packed model after compile_kernels must not add a signature (a new one would compile again for
    about 20 s). load_dataset's columns are read-only under pandas' copy-on-write: the packed arrays
    must not be."""
    from bayeslmm.engines.collapsed.kernels import compile_kernels, evaluate, evaluate_many
    from bayeslmm.engines.collapsed.packing import pack, posterior_from_theta

    compile_kernels()
    before = (list(evaluate.signatures), list(evaluate_many.signatures))
    design, priors = _design("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    packed = pack(design, priors)
    assert all(a.flags.writeable and a.flags.c_contiguous for a in packed.floats + packed.ints)
    x = np.zeros(packed.n_dim)
    packed.logp(x)
    packed.logp_grad(x)
    posterior_from_theta(packed, design, x[None, None], np.random.default_rng(0))
    assert (list(evaluate.signatures), list(evaluate_many.signatures)) == before


def test_prior_dominated_sd_samples_without_divergences():
    """A 3-level grouping factor that is also a fixed effect: the SD's posterior is its half-normal
    prior's upper tail, which in log sd falls doubly exponentially. Sampled as log sd, every one of 8
    seeds diverged (1-8 times); with sd = scale softplus(x) none does."""
    data = load_dataset("sleepstudy")
    three = data.assign(g=(pd.factorize(data["Subject"])[0] % 3).astype(str))
    for seed in range(3):
        model = Lmer("Reaction ~ Days + g + (1 | g)", three)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(random_seed=seed, progressbar=False)
        assert model.sampler.sampler == "nutpie, marginal"
        assert int(model.idata["sample_stats"]["diverging"].sum()) == 0
