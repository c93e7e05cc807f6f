"""An independent exact sampler for small GLMMs: random-walk Metropolis in plain NumPy and SciPy.

It shares no code with :mod:`bayeslmm.engines.glmm`: the log density is written here from the model's
definition (SciPy's densities for the priors and the likelihood, the group effects non-centred as
``b = sigma z``), and the sampler is many random-walk Metropolis chains run side by side with a Gaussian
proposal whose covariance is estimated during warm-up. It is slow and only suits models with a few
dozen parameters and one random intercept per block, which is what it is for: checking the engine
near the boundary (a 3-level grouping factor with a small SD), where samplers disagree first.

Used by ``tests/test_glmm_sampler.py`` (a short run) and ``validation/glmm_validation.py`` (a long one).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats


class IndependentGLMM:
    """Log posterior of ``y ~ X beta + sum_j b_j[g_j] + offset`` with random intercepts only.

    Parameters
    ----------
    design : bayeslmm Design
        Read only for its arrays (y, trials, offset, X, group indices), never its methods.
    priors : bayeslmm ModelPriors
        Read for the distributions' names and parameters; densities come from SciPy.
    family : str
        ``"binomial"`` (logit link), ``"poisson"``, ``"negbinomial"`` or ``"gaussian"``.
    """

    def __init__(self, design, priors, family: str):
        self.family = family
        self.y = np.asarray(design.y, float)
        self.trials = None if design.trials is None else np.asarray(design.trials, float)
        self.offset = np.zeros_like(self.y) if design.offset is None else np.asarray(design.offset, float)
        X = np.asarray(design.X, float)
        self.intercept = list(design.fixed_terms).index("(Intercept)") if "(Intercept)" in design.fixed_terms else None
        means = X.mean(axis=0)
        if self.intercept is not None and X.shape[1] > 1:
            means[self.intercept] = 0.0
        else:
            means[:] = 0.0
        self.means = means
        self.Xc = X - means
        self.groups, self.n_levels, self.sd_priors = [], [], []
        for block in design.blocks:
            if block.n_terms != 1 or not np.all(block.Z == 1.0):
                raise ValueError("the independent sampler handles random intercepts only")
            self.groups.append(np.asarray(block.group_index))
            self.n_levels.append(block.n_levels)
            self.sd_priors.append(priors.group_sd[block.name]["(Intercept)"].scipy())
        self.fixed_priors = [priors.fixed[t].scipy() for t in design.fixed_terms]
        aux_name = {"negbinomial": "dispersion", "gaussian": "sigma"}.get(family)
        self.aux_name = aux_name
        self.aux_prior = priors.aux[aux_name].scipy() if aux_name else None
        self.p = X.shape[1]
        self.dim = self.p + sum(self.n_levels) + len(self.n_levels) + (1 if self.aux_prior else 0)

    # layout: beta_c (p), z per block, log sd per block, [log dispersion or log sigma]
    def unpack(self, theta: np.ndarray) -> dict:
        p, out, start = self.p, {}, self.p
        out["beta_c"] = theta[:, :p]
        out["z"] = []
        for G in self.n_levels:
            out["z"].append(theta[:, start:start + G])
            start += G
        out["log_sd"] = theta[:, start:start + len(self.n_levels)]
        start += len(self.n_levels)
        out["log_r"] = theta[:, start] if self.aux_prior else None
        return out

    def logp(self, theta: np.ndarray) -> np.ndarray:
        """Log posterior density (up to a constant) of each row of ``theta`` (chains, dim)."""
        parts = self.unpack(theta)
        eta = self.offset + parts["beta_c"] @ self.Xc.T
        total = np.zeros(theta.shape[0])
        for a, prior in enumerate(self.fixed_priors):
            total += prior.logpdf(parts["beta_c"][:, a])
        for j, (g, prior) in enumerate(zip(self.groups, self.sd_priors)):
            log_sd = parts["log_sd"][:, j]
            sd = np.exp(log_sd)
            total += prior.logpdf(sd) + log_sd + stats.norm.logpdf(parts["z"][j]).sum(axis=1)
            eta = eta + (sd[:, None] * parts["z"][j])[:, g]
        if self.family == "binomial":
            mu = special.expit(eta)
            total += stats.binom.logpmf(self.y, self.trials, mu).sum(axis=1)
        elif self.family == "poisson":
            total += stats.poisson.logpmf(self.y, np.exp(eta)).sum(axis=1)
        elif self.family == "gaussian":
            sigma = np.exp(parts["log_r"])
            total += self.aux_prior.logpdf(sigma) + parts["log_r"]
            total += stats.norm.logpdf(self.y, eta, sigma[:, None]).sum(axis=1)
        else:
            r = np.exp(parts["log_r"])
            total += self.aux_prior.logpdf(r) + parts["log_r"]
            mu = np.exp(eta)
            total += stats.nbinom.logpmf(self.y, r[:, None], (r[:, None] / (r[:, None] + mu))).sum(axis=1)
        return np.where(np.isfinite(total), total, -np.inf)

    def draws(self, theta: np.ndarray) -> dict:
        """Posterior quantities on the model's scale: beta (uncentred), sd per block, ranef per block."""
        parts = self.unpack(theta)
        beta = parts["beta_c"].copy()
        if self.intercept is not None:
            beta[:, self.intercept] -= parts["beta_c"] @ self.means
        out = {"beta": beta}
        for j in range(len(self.n_levels)):
            sd = np.exp(parts["log_sd"][:, j])
            out[f"sd_{j}"] = sd
            out[f"ranef_{j}"] = sd[:, None] * parts["z"][j]
        if self.aux_prior:
            out[self.aux_name] = np.exp(parts["log_r"])
        return out


def random_walk_metropolis(
    model: IndependentGLMM,
    start: np.ndarray,
    *,
    chains: int = 32,
    warmup: int = 20_000,
    steps: int = 100_000,
    thin: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Many random-walk Metropolis chains side by side; returns kept draws (chains, steps // thin, dim).

    The Gaussian proposal's covariance is re-estimated from the chains' draws four times during warm-up
    and scaled by 2.38^2 / dim (the optimal scaling for a Gaussian target), then held fixed, so the kept
    draws are a valid Markov chain for the exact posterior.
    """
    rng = np.random.default_rng(seed)
    d = model.dim
    x = start + 0.1 * rng.standard_normal((chains, d))
    lp = model.logp(x)
    cov = np.eye(d) * 0.01
    history = []
    rounds = 4
    per_round = warmup // rounds
    for r in range(rounds + 1):
        chol = np.linalg.cholesky(cov * 2.38**2 / d + 1e-10 * np.eye(d))
        n_steps = per_round if r < rounds else steps
        kept = []
        for step in range(n_steps):
            proposal = x + rng.standard_normal((chains, d)) @ chol.T
            lp_new = model.logp(proposal)
            accept = np.log(rng.random(chains)) < lp_new - lp
            x[accept], lp[accept] = proposal[accept], lp_new[accept]
            if r < rounds:
                if step >= per_round // 2:
                    history.append(x.copy())
            elif step % thin == thin - 1:
                kept.append(x.copy())
        if r < rounds:
            sample = np.concatenate(history[-(per_round // 2):])
            cov = np.cov(sample.T)
            history = []
    return np.stack(kept, axis=1)
