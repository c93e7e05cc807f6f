"""Validation of the GLMM engine (:mod:`bayeslmm.engines.glmm`) against independent samplers.

Run ``.venv/bin/python validation/glmm_validation.py [bambi] [pymc] [singular] [independent] [sbc] [defaults]``
(all sections by default); results are printed as Markdown and merged into
``validation/glmm_results.json``, which ``docs/glmm-engine.md`` summarises.

Sections
--------
bambi
    One uncorrelated model per family (binomial, Poisson with an offset, negative binomial), Bambi
    0.21 with identical priors (fixed effects on the centred scale, as Bambi and bayeslmm both centre
    predictors). Long runs of both.
pymc
    bayeslmm's own PyMC model (non-centred, LKJ) at ``target_accept=0.95``: a correlated block, the
    probit and cloglog links, an observation-level effect, VerbAgg's crossed factors.
singular
    The near-singular case (3-level grouping factor, small SD; binomial and Poisson) against the
    independent random-walk Metropolis sampler of ``validation/glmm_reference.py``.
independent
    The observation-level binomial model (77 parameters) against the same independent sampler.
sbc
    Simulation-based calibration (Talts et al. 2018) of a logistic model with a correlated random slope
    (LKJ) and of a Poisson model with an offset, fixed priors, ``SBC_SIMS`` simulations each; ranks of
    99 thinned draws in 10 bins, chi-square test of uniformity per parameter.
defaults
    Divergences, R-hat and ESS at default settings (4 chains x 1000 + 1000) on cbpp, VerbAgg and the
    near-singular case.

Every comparison reports, for each scalar (fixed effects, SDs, correlation, dispersion, the first group
effects), ``z = (ours - theirs) / sqrt(MCSE_ours^2 + MCSE_theirs^2)`` for the mean and the 5%, 50% and
95% quantiles (ArviZ's MCSE); the check is ``|z| <= 4``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from bayeslmm import Lmer, Prior, load_dataset  # noqa: E402
from bayeslmm.engines.glmm import sample_glmm  # noqa: E402

RESULTS = Path(__file__).parent / "glmm_results.json"
SBC_SIMS = 500
QUANTILES = (0.05, 0.5, 0.95)


# ----------------------------------------------------------------------------------- comparisons
def _scalars_ours(model: Lmer, n_ranef: int = 3) -> dict[str, np.ndarray]:
    """Scalar posterior quantities, (chain, draw) each, with names shared by every comparison."""
    post = model.posterior
    out = {f"beta[{t}]": post["beta"].sel(fixed_term=t).values for t in model.design.fixed_terms}
    if "dispersion" in post:
        out["dispersion"] = post["dispersion"].values
    for block in model.design.blocks:
        for t, term in enumerate(block.terms):
            out[f"sd[{block.name}:{term}]"] = post[f"sd_{block.name}"].values[..., t]
            for level in range(min(n_ranef, block.n_levels)):
                out[f"b[{block.name}:{block.levels[level]}:{term}]"] = post[f"ranef_{block.name}"].values[..., level, t]
        if block.n_terms == 2:
            out[f"corr[{block.name}]"] = post[f"corr_{block.name}"].values[..., 0, 1]
    return out


def compare(ours: dict, theirs: dict) -> list[dict]:
    """z-scores of the mean and quantiles of every scalar both sides have."""
    import arviz as az

    rows = []
    for name in ours:
        if name not in theirs:
            continue
        a, b = np.asarray(ours[name], float), np.asarray(theirs[name], float)
        row = {"name": name, "ours_median": float(np.median(a)), "theirs_median": float(np.median(b))}
        se = np.hypot(float(az.mcse(a, method="mean")), float(az.mcse(b, method="mean")))
        row["z_mean"] = float((a.mean() - b.mean()) / se)
        for q in QUANTILES:
            se = np.hypot(float(az.mcse(a, method="quantile", prob=q)), float(az.mcse(b, method="quantile", prob=q)))
            row[f"z_q{int(q * 100):02d}"] = float((np.quantile(a, q) - np.quantile(b, q)) / se)
        row["ess_ours"], row["ess_theirs"] = float(az.ess(a)), float(az.ess(b))
        rows.append(row)
    return rows


def _max_z(rows: list[dict]) -> float:
    return max(abs(v) for r in rows for k, v in r.items() if k.startswith("z_"))


def _print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n#### {title}: max |z| = {_max_z(rows):.2f} over {len(rows)} scalars x 4 statistics\n")
    print("| quantity | ours (median) | reference (median) | z mean | z q05 | z q50 | z q95 | ESS ours | ESS ref |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['ours_median']:.3f} | {r['theirs_median']:.3f} | {r['z_mean']:.2f} | {r['z_q05']:.2f} | "
              f"{r['z_q50']:.2f} | {r['z_q95']:.2f} | {r['ess_ours']:.0f} | {r['ess_theirs']:.0f} |", flush=True)


def _stats(model: Lmer) -> dict:
    st = model.idata["sample_stats"].to_dataset()
    return {"divergences": int(st["diverging"].sum()), "seconds": model.sampler.seconds}


# ----------------------------------------------------------------------------------- Bambi
BAMBI_CASES = [
    # (label, data, family, bayeslmm formula, Bambi formula, Bambi family)
    ("binomial: cbpp", "cbpp", "binomial", "cbind(incidence, size - incidence) ~ period + (1 | herd)",
     "p(incidence, size) ~ period + (1 | herd)", "binomial"),
    # On grouseticks Bambi could not sample either Poisson model tried, at target_accept=0.95:
    # (1 | BROOD) + (1 | INDEX) + (1 | LOCATION): every draw divergent; (1 | BROOD) + (1 | LOCATION):
    # half the draws divergent, chains stuck (bulk ESS 4-40). A Poisson model with an offset instead:
    ("poisson: cbpp with exposure offset", "cbpp", "poisson",
     "incidence ~ period + offset(log(size)) + (1 | herd)",
     "incidence ~ period + offset(log(size)) + (1 | herd)", "poisson"),
    ("negbinomial: grouseticks", "grouseticks", "negbinomial", "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)",
     "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", "negativebinomial"),
]


def _shared_priors(model_terms, blocks, family: str) -> tuple[dict, dict]:
    """The same priors for bayeslmm and Bambi: Normal(0, 2.5) on every centred fixed effect,
    HalfNormal(1) on every SD, Gamma(2, 0.2) on the negative binomial's dispersion."""
    import bambi as bmb

    ours = {t: Prior("Normal", mu=0, sigma=2.5) for t in model_terms}
    theirs = {"Intercept": bmb.Prior("Normal", mu=0, sigma=2.5)}
    for term in model_terms:  # Bambi names a categorical term once for all its columns ("period")
        if term != "(Intercept)":
            theirs[term.split("[")[0]] = bmb.Prior("Normal", mu=0, sigma=2.5)
    for block in blocks:
        ours[f"1|{block.factor}"] = Prior("HalfNormal", sigma=1.0)
        theirs[f"1|{block.factor}"] = bmb.Prior("Normal", mu=0, sigma=bmb.Prior("HalfNormal", sigma=1.0))
    if family == "negbinomial":
        ours["dispersion"] = Prior("Gamma", alpha=2.0, beta=0.2)
        theirs["alpha"] = bmb.Prior("Gamma", alpha=2.0, beta=0.2)
    return ours, theirs


def _bambi_scalars(idata, model: Lmer, n_ranef: int = 3) -> dict:
    post = idata["posterior"].to_dataset() if hasattr(idata, "children") else idata.posterior
    design = model.design
    out = {}
    names = list(post.data_vars)
    for t in design.fixed_terms:
        if t == "(Intercept)":
            out[f"beta[{t}]"] = post["Intercept"].values
            continue
        base = t.split("[")[0]
        var = post[base]
        if var.ndim == 2:
            out[f"beta[{t}]"] = var.values
        else:
            level = t.split("[")[1].rstrip("]")
            dim = [d for d in var.dims if d not in ("chain", "draw")][0]
            out[f"beta[{t}]"] = var.sel({dim: level}).values
    if "alpha" in names:
        out["dispersion"] = post["alpha"].values
    for block in design.blocks:
        out[f"sd[{block.name}:(Intercept)]"] = post[f"1|{block.factor}_sigma"].values
        var = post[f"1|{block.factor}"]
        dim = [d for d in var.dims if d not in ("chain", "draw")][0]
        for level in range(min(n_ranef, block.n_levels)):
            label = str(block.levels[level])
            coord = [c for c in var[dim].values if str(c) == label][0]
            out[f"b[{block.name}:{block.levels[level]}:(Intercept)]"] = var.sel({dim: coord}).values
    return out


def section_bambi(draws: int = 5000, tune: int = 1000) -> dict:
    import bambi as bmb

    results = {}
    for label, data_name, family, formula, bambi_formula, bambi_family in BAMBI_CASES:
        data = load_dataset(data_name)
        probe = Lmer(formula, data, family=family)
        ours_priors, bambi_priors = _shared_priors(probe.design.fixed_terms, probe.design.blocks, family)
        model = Lmer(formula, data, family=family, priors=ours_priors)
        model.fit(draws=draws, tune=tune, chains=4, random_seed=1, progressbar=False)
        start = time.perf_counter()
        bmodel = bmb.Model(bambi_formula, data, family=bambi_family, priors=bambi_priors)
        idata = bmodel.fit(draws=draws, tune=tune, chains=4, inference_method="nutpie", random_seed=1,
                           progressbar=False, target_accept=0.95)
        bambi_seconds = time.perf_counter() - start
        rows = compare(_scalars_ours(model), _bambi_scalars(idata, model))
        stats = idata["sample_stats"].to_dataset() if hasattr(idata, "children") else idata.sample_stats
        info = _stats(model) | {"bambi_divergences": int(stats["diverging"].sum()), "bambi_seconds": bambi_seconds,
                                "max_abs_z": _max_z(rows), "rows": rows}
        _print_rows(f"{label} vs Bambi (4 x {tune}+{draws} each; ours {info['divergences']} divergences, "
                    f"Bambi {info['bambi_divergences']})", rows)
        results[label] = info
    return results


# ----------------------------------------------------------------------------------- PyMC model
def _cbpp_extra() -> pd.DataFrame:
    data = load_dataset("cbpp")
    return data.assign(t=data["period"].astype(int) / 4.0, obs=[f"o{i}" for i in range(len(data))])


PYMC_CASES = [
    ("binomial logit, correlated (t | herd), LKJ", _cbpp_extra, "binomial", None,
     "cbind(incidence, size - incidence) ~ t + (t | herd)"),
    ("binomial probit: cbpp", _cbpp_extra, "binomial", "probit", "cbind(incidence, size - incidence) ~ period + (1 | herd)"),
    ("binomial cloglog: cbpp", _cbpp_extra, "binomial", "cloglog", "cbind(incidence, size - incidence) ~ period + (1 | herd)"),
    ("binomial, observation-level effect: cbpp", _cbpp_extra, "binomial", None,
     "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)"),
    ("binomial: VerbAgg, crossed id and item", lambda: load_dataset("verbagg"), "binomial", None,
     "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"),
]


def section_pymc(draws: int = 4000, tune: int = 1000) -> dict:
    results = {}
    for label, data_fn, family, link, formula in PYMC_CASES:
        data = data_fn()
        ours = Lmer(formula, data, family=family, link=link)
        ours.fit(draws=draws, tune=tune, chains=4, random_seed=2, progressbar=False)
        ref = Lmer(formula, data, family=family, link=link)
        big = ours.design.n_obs > 1000
        ref.fit(draws=draws // 2 if big else draws, tune=tune, chains=4, random_seed=2, progressbar=False,
                marginalize=False, target_accept=0.95)
        rows = compare(_scalars_ours(ours), _scalars_ours(ref))
        info = _stats(ours) | {"pymc_divergences": _stats(ref)["divergences"], "pymc_seconds": ref.sampler.seconds,
                               "max_abs_z": _max_z(rows), "rows": rows}
        _print_rows(f"{label} vs the PyMC model at target_accept=0.95 (ours {info['divergences']} divergences, "
                    f"PyMC {info['pymc_divergences']}; {info['seconds']:.1f} s vs {info['pymc_seconds']:.1f} s)", rows)
        results[label] = info
    return results


# ----------------------------------------------------------------------------------- near-singular
def near_singular_data(family: str = "binomial", seed: int = 20261202) -> pd.DataFrame:
    """Three groups, twelve rows each, a true group SD of 0.05: the boundary case."""
    rng = np.random.default_rng(seed)
    G, per = 3, 12
    g = np.repeat(np.arange(G), per)
    x = rng.normal(size=G * per)
    b = rng.normal(0.0, 0.05, G)
    frame = pd.DataFrame({"x": x, "g": [f"g{i}" for i in g]})
    if family == "binomial":
        eta = -0.5 + 0.8 * x + b[g]
        frame["n"] = 8
        frame["y"] = rng.binomial(8, 1.0 / (1.0 + np.exp(-eta)))
    else:
        eta = 0.7 + 0.5 * x + b[g]
        frame["y"] = rng.poisson(np.exp(eta))
    return frame


NEAR_SINGULAR_FORMULA = {"binomial": "cbind(y, n - y) ~ x + (1 | g)", "poisson": "y ~ x + (1 | g)"}


def independent_scalars(model: Lmer, family: str, chains: int, warmup: int, steps: int, seed: int = 1) -> dict:
    """The same scalars as :func:`_scalars_ours` from the independent random-walk Metropolis sampler."""
    from glmm_reference import IndependentGLMM, random_walk_metropolis

    ind = IndependentGLMM(model.design, model.model_priors, family)
    start = np.zeros(ind.dim)
    start[ind.p + sum(ind.n_levels):ind.p + sum(ind.n_levels) + len(ind.n_levels)] = np.log(0.3)
    theta = random_walk_metropolis(ind, start, chains=chains, warmup=warmup, steps=steps, thin=10, seed=seed)
    C, D = theta.shape[:2]
    draws = ind.draws(theta.reshape(-1, ind.dim))
    out = {f"beta[{t}]": draws["beta"][:, i].reshape(C, D) for i, t in enumerate(model.design.fixed_terms)}
    for j, block in enumerate(model.design.blocks):
        out[f"sd[{block.name}:(Intercept)]"] = draws[f"sd_{j}"].reshape(C, D)
        for level in range(min(3, block.n_levels)):
            out[f"b[{block.name}:{block.levels[level]}:(Intercept)]"] = draws[f"ranef_{j}"][:, level].reshape(C, D)
    return out


def section_singular() -> dict:
    results = {}
    for family in ("binomial", "poisson"):
        model = Lmer(NEAR_SINGULAR_FORMULA[family], near_singular_data(family), family=family)
        model.fit(draws=5000, tune=1000, chains=4, random_seed=3, progressbar=False)
        start = time.perf_counter()
        ref = independent_scalars(model, family, chains=64, warmup=20_000, steps=200_000)
        rows = compare(_scalars_ours(model), ref)
        info = _stats(model) | {"reference_seconds": time.perf_counter() - start, "max_abs_z": _max_z(rows), "rows": rows}
        _print_rows(f"near-singular {family} (3 groups, true SD 0.05; ours 4 x 1000+5000, {info['divergences']} "
                    "divergences) vs independent random-walk Metropolis (64 chains x 200,000 steps)", rows)
        results[family] = info
    return results


def section_independent() -> dict:
    """The observation-level binomial model (cbpp, herd + one level per row, 77 parameters) against the
    independent random-walk Metropolis sampler: where the PyMC model at target_accept=0.95 and ours
    differed by 3-4 MCSE in the herd SD, a third sampler decides."""
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)"
    model = Lmer(formula, _cbpp_extra(), family="binomial")
    model.fit(draws=10000, tune=1000, chains=4, random_seed=12, progressbar=False)
    start = time.perf_counter()
    ref = independent_scalars(model, "binomial", chains=64, warmup=40_000, steps=400_000, seed=5)
    rows = compare(_scalars_ours(model), ref)
    info = _stats(model) | {"reference_seconds": time.perf_counter() - start, "max_abs_z": _max_z(rows), "rows": rows}
    _print_rows("observation-level binomial (cbpp + (1 | obs); ours 4 x 1000+10000) vs independent random-walk "
                "Metropolis (64 chains x 400,000 steps)", rows)
    return {"binomial, observation-level effect: cbpp": info}


# ----------------------------------------------------------------------------------- SBC
def _sbc_designs(seed: int = 11):
    """The two SBC models: their Lmer (for the design and priors) and a simulator of (truth, y)."""
    rng = np.random.default_rng(seed)
    # logistic, 15 groups x 8 rows of 5 trials, correlated random intercept and slope
    G, per = 15, 8
    x = rng.normal(size=G * per)
    x -= x.mean()
    frame = pd.DataFrame({"x": x, "g": [f"g{i:02d}" for i in np.repeat(np.arange(G), per)], "n": 5})
    frame["y"] = rng.binomial(5, 0.5, size=len(frame))
    logistic_priors = {
        "(Intercept)": Prior("Normal", mu=0, sigma=1), "x": Prior("Normal", mu=0, sigma=1),
        "1|g": Prior("HalfNormal", sigma=1.0), "x|g": Prior("HalfNormal", sigma=0.5), "eta": 2.0,
    }
    logistic = Lmer("cbind(y, n - y) ~ x + (1 + x | g)", frame, family="binomial", priors=logistic_priors)

    def simulate_logistic(rng):
        b0, b1 = rng.normal(0, 1), rng.normal(0, 1)
        s0, s1 = abs(rng.normal(0, 1.0)), abs(rng.normal(0, 0.5))
        rho = 2.0 * rng.beta(2.0, 2.0) - 1.0  # LKJ(2) for a 2 x 2 correlation
        cov = np.array([[s0 * s0, rho * s0 * s1], [rho * s0 * s1, s1 * s1]])
        b = rng.multivariate_normal(np.zeros(2), cov, size=G)
        g = logistic.design.blocks[0].group_index
        eta = b0 + b1 * x + b[g, 0] + b[g, 1] * x
        y = rng.binomial(5, 1.0 / (1.0 + np.exp(-eta))).astype(float)
        truth = {"beta[(Intercept)]": b0, "beta[x]": b1, "sd[g:(Intercept)]": s0, "sd[g:x]": s1, "corr[g]": rho,
                 "b[g:g00:(Intercept)]": b[0, 0], "b[g:g00:x]": b[0, 1]}
        return truth, y

    # Poisson, 10 groups x 10 rows, exposure offset
    G2, per2 = 10, 10
    x2 = rng.normal(size=G2 * per2)
    x2 -= x2.mean()
    exposure = rng.uniform(0.5, 2.0, size=G2 * per2)
    frame2 = pd.DataFrame({"x": x2, "g": [f"g{i:02d}" for i in np.repeat(np.arange(G2), per2)], "exposure": exposure})
    frame2["y"] = rng.poisson(2.0, size=len(frame2))
    poisson_priors = {"(Intercept)": Prior("Normal", mu=0.5, sigma=0.5), "x": Prior("Normal", mu=0, sigma=0.5),
                      "1|g": Prior("HalfNormal", sigma=0.7)}
    poisson = Lmer("y ~ x + offset(log(exposure)) + (1 | g)", frame2, family="poisson", priors=poisson_priors)

    def simulate_poisson(rng):
        b0, b1, s = rng.normal(0.5, 0.5), rng.normal(0, 0.5), abs(rng.normal(0, 0.7))
        b = rng.normal(0, s, size=G2)
        g = poisson.design.blocks[0].group_index
        y = rng.poisson(exposure * np.exp(b0 + b1 * x2 + b[g])).astype(float)
        return {"beta[(Intercept)]": b0, "beta[x]": b1, "sd[g:(Intercept)]": s, "b[g:g00:(Intercept)]": b[0]}, y

    return {"logistic": (logistic, simulate_logistic), "poisson": (poisson, simulate_poisson)}


def _posterior_scalars(tree, model: Lmer) -> dict:
    post = tree["posterior"].to_dataset()
    out = {f"beta[{t}]": post["beta"].sel(fixed_term=t).values.reshape(-1) for t in model.design.fixed_terms}
    block = model.design.blocks[0]
    for t, term in enumerate(block.terms):
        out[f"sd[g:{term}]"] = post["sd_g"].values[..., t].reshape(-1)
        out[f"b[g:g00:{term}]"] = post["ranef_g"].values[..., 0, t].reshape(-1)
    if block.n_terms == 2:
        out["corr[g]"] = post["corr_g"].values[..., 0, 1].reshape(-1)
    return out


def section_sbc(sims: int = SBC_SIMS, draws: int = 500, tune: int = 500, chains: int = 2, bins: int = 10) -> dict:
    from scipy import stats

    results = {}
    for name, (model, simulate) in _sbc_designs().items():
        rng = np.random.default_rng(2026)
        ranks: dict[str, list[int]] = {}
        divergent_fits, divergences, seconds = 0, 0, 0.0
        L = 99
        for _ in range(sims):
            truth, y = simulate(rng)
            design = dataclasses.replace(model.design, y=y)
            start = time.perf_counter()
            tree, _ = sample_glmm(design, model.model_priors, model.family, draws=draws, tune=tune, chains=chains,
                                  random_seed=int(rng.integers(2**31)))
            seconds += time.perf_counter() - start
            n_div = int(tree["sample_stats"]["diverging"].sum())
            divergences += n_div
            divergent_fits += n_div > 0
            values = _posterior_scalars(tree, model)
            keep = np.linspace(0, chains * draws - 1, L).astype(int)  # thinned: draws are nearly independent
            for key, value in truth.items():
                # per-chain interleaving: thin within the flattened (chain, draw) order
                ranks.setdefault(key, []).append(int(np.sum(values[key][keep] < value)))
        table = {}
        for key, r in ranks.items():
            counts = np.bincount(np.asarray(r) * bins // (L + 1), minlength=bins)
            chi2, pvalue = stats.chisquare(counts)
            table[key] = {"chi2": float(chi2), "p": float(pvalue), "counts": counts.tolist()}
        results[name] = {"sims": sims, "fits_with_divergences": divergent_fits, "divergences": divergences,
                         "seconds": seconds, "parameters": table}
        print(f"\n#### SBC {name}: {sims} simulations ({chains} chains x {tune}+{draws}; {seconds:.0f} s of sampling), "
              f"{divergent_fits} fits with divergences ({divergences} in all)\n")
        print("| parameter | chi-square (9 df) | p-value | counts per rank decile |")
        print("| --- | --- | --- | --- |")
        for key, row in table.items():
            print(f"| {key} | {row['chi2']:.1f} | {row['p']:.3f} | {' '.join(map(str, row['counts']))} |", flush=True)
    return results


# ----------------------------------------------------------------------------------- default settings
def section_defaults() -> dict:
    from bayeslmm.engines.diagnostics import ess_bulk, rhat

    cases = [
        ("cbpp", load_dataset("cbpp"), "binomial", "cbind(incidence, size - incidence) ~ period + (1 | herd)"),
        ("VerbAgg", load_dataset("verbagg"), "binomial", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"),
        ("near-singular binomial", near_singular_data("binomial"), "binomial", NEAR_SINGULAR_FORMULA["binomial"]),
        ("near-singular poisson", near_singular_data("poisson"), "poisson", NEAR_SINGULAR_FORMULA["poisson"]),
    ]
    results = {}
    print("\n#### Default settings (4 chains x 1000 + 1000), five seeds each\n")
    print("| model | divergences (per seed) | max R-hat | min ESS_bulk (fixed effects, SDs) | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for label, data, family, formula in cases:
        divs, rh, ess, secs = [], [], [], []
        for seed in range(5):
            model = Lmer(formula, data, family=family)
            model.fit(random_seed=seed, progressbar=False)
            post = model.posterior
            names = [v for v in post.data_vars if not v.startswith("ranef_")]
            divs.append(_stats(model)["divergences"])
            rh.append(max(float(np.nanmax(rhat(post[v].values))) for v in names))
            ess.append(min(float(np.nanmin(ess_bulk(post[v].values))) for v in names if not v.startswith("corr_")))
            secs.append(model.sampler.seconds)
        results[label] = {"divergences": divs, "max_rhat": max(rh), "min_ess_bulk": min(ess), "seconds": secs}
        print(f"| {label} | {' '.join(map(str, divs))} | {max(rh):.4f} | {min(ess):.0f} | {np.median(secs):.2f} |", flush=True)
    return results


SECTIONS = {"bambi": section_bambi, "pymc": section_pymc, "singular": section_singular, "sbc": section_sbc,
            "defaults": section_defaults, "independent": section_independent}


def main(argv: list[str]) -> None:
    chosen = argv or list(SECTIONS)
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in chosen:
        start = time.perf_counter()
        stored[name] = SECTIONS[name]()
        stored[name + "_wall_seconds"] = time.perf_counter() - start
        RESULTS.write_text(json.dumps(stored, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
