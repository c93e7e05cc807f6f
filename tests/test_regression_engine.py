"""The exact regression engine of Lm and Lm2 against an independent computation of the same posterior.

The posterior of sigma is computed here on a grid from the dense marginal likelihood
N(y | X m, sigma^2 I + X D X') (scipy's multivariate normal, no SVD), times the prior and the Jacobian of
log sigma; the posterior mean of beta integrates the Gaussian conditional mean over that grid.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bayeslmm import Lm, Prior, load_dataset
from bayeslmm.engines import regression


@pytest.fixture(scope="module")
def model():
    data = load_dataset("sleepstudy").iloc[::6]  # 30 rows: a posterior of sigma that is not quite normal
    lm = Lm("Reaction ~ Days", data, priors={"sigma": Prior("HalfCauchy", beta=20)})
    lm.fit(draws=4000, chains=2, random_seed=3)
    return lm


def _reference(lm):
    """Grid posterior of sigma and E[beta | y], computed densely."""
    design, priors = lm.design, lm.model_priors
    means, _ = design.fixed.centring()
    Xc = design.X - means
    moments = [priors.fixed[t].normal_moments() for t in design.fixed_terms]
    m = np.array([mu for mu, _ in moments])
    D = np.diag([sd**2 for _, sd in moments])
    t = np.linspace(np.log(5), np.log(120), 3001)
    log_post = np.array(
        [
            stats.multivariate_normal(Xc @ m, np.exp(2 * ti) * np.eye(design.n_obs) + Xc @ D @ Xc.T).logpdf(design.y)
            for ti in t
        ]
    )
    log_post += priors.sigma.scipy().logpdf(np.exp(t)) + t
    weights = np.exp(log_post - log_post.max())
    weights /= weights.sum()
    beta_c = []
    for ti in t:
        precision = Xc.T @ Xc / np.exp(2 * ti) + np.linalg.inv(D)
        beta_c.append(m + np.linalg.solve(precision, Xc.T @ (design.y - Xc @ m)) / np.exp(2 * ti))
    beta = design.fixed.uncentre(np.array(beta_c))
    return np.exp(t), weights, weights @ beta


def test_sigma_and_beta_match_the_dense_computation(model):
    sigma_grid, weights, beta_mean = _reference(model)
    sigma = model.posterior["sigma"].values.reshape(-1)
    cdf = np.cumsum(weights)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        expected = np.interp(q, cdf, sigma_grid)
        density = np.interp(expected, sigma_grid[1:], np.diff(cdf) / np.diff(sigma_grid))
        se = np.sqrt(q * (1 - q) / sigma.size) / density  # SE of a sample quantile (draws nearly independent)
        assert abs(np.quantile(sigma, q) - expected) < 4 * se, q
    beta = model.posterior["beta"].values.reshape(-1, 2)
    se = beta.std(axis=0) / np.sqrt(beta.shape[0])
    np.testing.assert_array_less(np.abs(beta.mean(axis=0) - beta_mean), 4 * se)


def test_draws_are_nearly_independent_and_exact_engine_is_used(model):
    assert model.sampler.sampler.startswith("exact regression")
    assert model.idata["sample_stats"]["acceptance_rate"].mean() > 0.99
    assert float(model.coefs["ESS_bulk"].min()) > 0.8 * 8000


def test_non_normal_coefficient_priors_are_not_for_this_engine():
    data = load_dataset("sleepstudy")
    heavy = Lm("Reaction ~ Days", data, priors={"Days": Prior("StudentT", nu=3, mu=0, sigma=10)})
    assert not regression.supports(heavy.model_priors)
