"""Speed of bayeslmm's marginal Gaussian path against Bambi 0.21 through nutpie.

Run with ``.venv/bin/python bench/bench_speed.py [sleepstudy|fresh|course|insteval ...]`` (all by
default). Every comparison uses the same model, chains, tuning steps and draws; times are wall seconds
of the whole fit (model building, compilation, sampling, conditional draws), median of ``REPEATS`` runs.
``fresh`` times a first fit in a new process (imports excluded). Peak memory is the process's maximum
resident set size after the section.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
REPEATS = 3
SLEEP = "Reaction ~ Days + (Days | Subject)"
# (data set, bayeslmm formula, Bambi formula): Bambi cannot parse '||' and has no correlated blocks
COURSE = [
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (1 | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "Reaction ~ Days + (Days | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (Days || Subject)", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (0 + Days | Subject)", "Reaction ~ Days + (0 + Days | Subject)"),
    ("dyestuff", "Yield ~ 1 + (1 | Batch)", "Yield ~ 1 + (1 | Batch)"),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
]
INSTEVAL = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"


def fit_bayeslmm(formula, data, chains=4, tune=1000, draws=1000, seed=1):
    from bayeslmm.engines import collapsed as marginal
    from bayeslmm.spec.design import build_design
    from bayeslmm.spec.formula import parse_formula
    from bayeslmm.spec.priors import default_priors

    start = time.perf_counter()
    design = build_design(parse_formula(formula), data)
    tree, settings = marginal.sample_marginal(
        design, default_priors(design), draws=draws, tune=tune, chains=chains, random_seed=seed
    )
    return time.perf_counter() - start, tree


def fit_bambi(formula, data, chains=4, tune=1000, draws=1000, seed=1):
    import bambi as bmb

    start = time.perf_counter()
    model = bmb.Model(formula, data)
    idata = model.fit(
        draws=draws, tune=tune, chains=chains, inference_method="nutpie", random_seed=seed, progressbar=False
    )
    return time.perf_counter() - start, idata


def _median(fn, *args, **kwargs):
    times = [fn(*args, **kwargs)[0] for _ in range(REPEATS)]
    return statistics.median(times), times


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(label, ours, theirs):
    print(f"| {label} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.1f}x |", flush=True)


def bench_sleepstudy():
    from bayeslmm import load_dataset

    data = load_dataset("sleepstudy")
    fit_bayeslmm(SLEEP, data)  # warm: the numba cache is loaded once per process
    fit_bambi(SLEEP, data)
    ours, all_ours = _median(fit_bayeslmm, SLEEP, data)
    theirs, all_theirs = _median(fit_bambi, SLEEP, data)
    print(f"sleepstudy runs: bayeslmm {all_ours}, bambi {all_theirs}")
    _row("sleepstudy (Days|Subject), warm process", ours, theirs)
    _, tree = fit_bayeslmm(SLEEP, data)
    print(f"divergences: {int(tree['sample_stats']['diverging'].sum())}; peak RSS {_peak_mb():.0f} MB")


def bench_fresh():
    code = (
        "import time, warnings; warnings.filterwarnings('ignore'); import sys; sys.path.insert(0, 'bench');"
        "from bench_speed import fit_bayeslmm, SLEEP; from bayeslmm import load_dataset;"
        "data = load_dataset('sleepstudy'); t = fit_bayeslmm(SLEEP, data)[0]; print(t)"
    )
    times = [float(subprocess.check_output([sys.executable, "-c", code]).decode().split()[-1]) for _ in range(REPEATS)]
    print(f"| sleepstudy (Days|Subject), first fit in a fresh process (import excluded) | {statistics.median(times):.2f} | | |")


def bench_course():
    from bayeslmm import load_dataset

    ours_total, theirs_total = 0.0, 0.0
    for name, ours_formula, bambi_formula in COURSE:
        data = load_dataset(name)
        ours, _ = _median(fit_bayeslmm, ours_formula, data)
        theirs, _ = _median(fit_bambi, bambi_formula, data)
        ours_total += ours
        theirs_total += theirs
        _row(f"{name}: {ours_formula}", ours, theirs)
    _row("LMM course, all models", ours_total, theirs_total)


def _min_ess(tree, names):
    import arviz as az

    ess = az.ess(tree["posterior"].to_dataset()[names], method="bulk")
    rhat = az.rhat(tree["posterior"].to_dataset()[names])
    return min(float(np.nanmin(ess[v].values)) for v in names), max(float(np.nanmax(rhat[v].values)) for v in names)


def bench_insteval(chains=2, tune=1000, draws=1000, repeats=3):
    """InstEval: min bulk ESS (fixed effects, sigma, every SD) per wall second, ours (median of ``repeats``
    fits, the first one in the process included) against one Bambi+nutpie fit."""
    from bayeslmm import load_dataset

    data = load_dataset("InstEval")
    rows = []
    for _ in range(repeats):
        seconds, tree = fit_bayeslmm(INSTEVAL, data, chains=chains, tune=tune, draws=draws)
        ess, rhat = _min_ess(tree, ["beta", "sigma", "sd_s", "sd_d", "sd_dept"])
        stats = tree["sample_stats"].to_dataset()
        rows.append((ess / seconds, seconds, ess, rhat, float(stats["acceptance_rate"].mean()), stats.attrs.get("pareto_k")))
        print(f"  run: {seconds:.1f} s, min ESS_bulk {ess:.0f}, max R-hat {rhat:.4f}, acceptance {rows[-1][4]:.2f}, "
              f"Pareto k {rows[-1][5]:.2f}, divergences {int(stats['diverging'].sum())}", flush=True)
        del tree
    rate, seconds, ess, rhat, acceptance, khat = sorted(rows)[len(rows) // 2]
    print(f"bayeslmm InstEval: {seconds:.1f} s, min ESS_bulk {ess:.0f}, max R-hat {rhat:.3f}, {rate:.1f} ESS/s "
          f"(median of {repeats}), peak RSS {_peak_mb():.0f} MB", flush=True)
    b_seconds, idata = fit_bambi(INSTEVAL, data, chains=chains, tune=tune, draws=draws)
    import arviz as az

    post = idata["posterior"].to_dataset() if hasattr(idata, "children") else idata.posterior
    names = [v for v in ["Intercept", "service", "sigma", "1|s_sigma", "1|d_sigma", "1|dept_sigma"] if v in post]
    b_ess = min(float(np.nanmin(az.ess(post[[v]], method="bulk")[v].values)) for v in names)
    b_rhat = max(float(np.nanmax(az.rhat(post[[v]])[v].values)) for v in names)
    print(f"bambi InstEval: {b_seconds:.1f} s, min ESS_bulk {b_ess:.0f}, max R-hat {b_rhat:.3f}, "
          f"{b_ess / b_seconds:.2f} ESS/s; peak RSS {_peak_mb():.0f} MB", flush=True)
    print(f"| InstEval min ESS_bulk/s ({chains} chains x {tune}+{draws}) | {rate:.1f} | {b_ess / b_seconds:.2f} | "
          f"{rate / (b_ess / b_seconds):.0f}x |")


if __name__ == "__main__":
    sections = sys.argv[1:] or ["sleepstudy", "fresh", "course", "insteval"]
    print("| what | bayeslmm (s) | Bambi+nutpie (s) | speed-up |\n| --- | --- | --- | --- |")
    for section in sections:
        globals()[f"bench_{section}"]()
