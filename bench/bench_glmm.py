"""Speed of bayeslmm's GLMM engine against Bambi 0.21 + nutpie, in the same run.

Run with ``.venv/bin/python bench/bench_glmm.py [cbpp] [process] [verbagg] [compile] [ablation]`` (all by
default).

cbpp
    ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, 4 chains x (1000 + 1000), in an
    already-warm process: wall seconds from the formula to the fitted model (bayeslmm: ``Lmer(...).fit()``,
    which also computes the pointwise log-likelihood and the diagnostics; Bambi: ``bmb.Model(...).fit()``),
    median of ``REPEATS`` after one untimed fit of each.
process
    The same model in a fresh Python process: import, data, fit and print a summary
    (``print(model.summary())`` / ``print(az.summary(idata))``), median of ``REPEATS`` processes; once as
    installed, once with dask hidden (see :data:`NO_DASK`).
verbagg
    ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)`` (7,584 rows), 2 chains x (1000 + 1000):
    the smallest bulk ESS over the fixed effects and the SDs per wall second of the fit, R-hat and
    divergences; bayeslmm median of ``REPEATS`` fits, Bambi one fit (it takes about 20 s).
ablation
    The same kernel with the Laplace information switched off (non-centred): min bulk ESS over the fixed
    effects, SDs and correlations from 1000 draws per chain, divergences and leapfrog steps, on cbpp, the
    near-singular case and VerbAgg.
compile
    The first fit after a fresh install (empty numba cache, ``NUMBA_CACHE_DIR`` set to a new folder) and
    the second one, in new processes: the one-off compilation of the kernel.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
REPEATS = 3
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
CBPP_BAMBI = "p(incidence, size) ~ period + (1 | herd)"
VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
VERBAGG_BAMBI = "r2['Y'] ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def fit_ours(formula, data, family="binomial", chains=4, tune=1000, draws=1000, seed=1):
    from bayeslmm import Lmer

    start = time.perf_counter()
    model = Lmer(formula, data, family=family)
    model.fit(draws=draws, tune=tune, chains=chains, random_seed=seed, progressbar=False)
    return time.perf_counter() - start, model


def fit_bambi(formula, data, family="binomial", chains=4, tune=1000, draws=1000, seed=1):
    import bambi as bmb

    start = time.perf_counter()
    model = bmb.Model(formula, data, family=family)
    idata = model.fit(draws=draws, tune=tune, chains=chains, inference_method="nutpie", random_seed=seed,
                      progressbar=False)
    return time.perf_counter() - start, idata


def _load():
    return os.getloadavg()[0]


def bench_cbpp():
    from bayeslmm import load_dataset

    data = load_dataset("cbpp")
    fit_ours(CBPP, data)
    fit_bambi(CBPP_BAMBI, data)
    ours = [fit_ours(CBPP, data, seed=s)[0] for s in range(REPEATS)]
    theirs = [fit_bambi(CBPP_BAMBI, data, seed=s)[0] for s in range(REPEATS)]
    _, model = fit_ours(CBPP, data)
    divergences = int(model.idata["sample_stats"]["diverging"].sum())
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"cbpp warm runs: bayeslmm {[round(v, 3) for v in ours]}, Bambi {[round(v, 3) for v in theirs]}; "
          f"divergences {divergences}; load {_load():.2f}")
    print(f"| cbpp, 4 chains x (1000 + 1000), warm process | {o:.2f} s | {t:.2f} s | {t / o:.1f}x |", flush=True)


OURS_PROCESS = (
    "from bayeslmm import Lmer, load_dataset\n"
    f"m = Lmer({CBPP!r}, load_dataset('cbpp'), family='binomial')\n"
    "m.fit(random_seed=1, progressbar=False)\n"
    "print(m.summary())\n"
)
BAMBI_PROCESS = (
    "import warnings; warnings.filterwarnings('ignore')\n"
    "import bambi as bmb, arviz as az\n"
    "from bayeslmm import load_dataset\n"
    f"m = bmb.Model({CBPP_BAMBI!r}, load_dataset('cbpp'), family='binomial')\n"
    "idata = m.fit(random_seed=1, inference_method='nutpie', progressbar=False)\n"
    "print(az.summary(idata))\n"
)


#: Prepended to a process's code: dask cannot be imported, as in an environment without it. xarray
#: imports ``dask.array`` (0.3-1 s here) on the first Dataset when dask is installed; neither bayeslmm nor
#: Bambi needs it, and it is in this environment only as a dependency of ``distributed``.
NO_DASK = "import sys\nsys.modules['dask'] = None  # find_spec('dask') is None and importing it fails\n"


def _process_seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=ENV)
    return time.perf_counter() - start


def bench_process():
    for label, prefix in (("as installed here (dask present)", ""), ("without dask (a clean install)", NO_DASK)):
        _process_seconds(prefix + OURS_PROCESS)  # numba cache and OS file cache warm, as after any first use
        _process_seconds(prefix + BAMBI_PROCESS)
        ours = [_process_seconds(prefix + OURS_PROCESS) for _ in range(REPEATS)]
        theirs = [_process_seconds(prefix + BAMBI_PROCESS) for _ in range(REPEATS)]
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"fresh-process runs, {label}: bayeslmm {[round(v, 2) for v in ours]}, Bambi "
              f"{[round(v, 2) for v in theirs]}; load {_load():.2f}")
        print(f"| cbpp, whole process (python start, import, fit, print summary), {label} | {o:.2f} s | {t:.2f} s | "
              f"{t / o:.1f}x |", flush=True)


def _min_ess(draws: dict) -> tuple[float, float]:
    from bayeslmm.engines.diagnostics import ess_bulk, rhat

    ess = min(float(np.nanmin(ess_bulk(v))) for v in draws.values())
    rh = max(float(np.nanmax(rhat(v))) for v in draws.values())
    return ess, rh


def bench_verbagg(chains: int = 2):
    from bayeslmm import load_dataset

    data = load_dataset("verbagg")
    rows = []
    for seed in range(REPEATS):
        seconds, model = fit_ours(VERBAGG, data, chains=chains, seed=seed)
        post = model.posterior
        ess, rh = _min_ess({v: post[v].values for v in ("beta", "sd_id", "sd_item")})
        stats = model.idata["sample_stats"].to_dataset()
        rows.append((ess / seconds, seconds, ess, rh, int(stats["diverging"].sum()), float(stats["n_steps"].mean())))
        print(f"  bayeslmm run: {seconds:.1f} s, min ESS_bulk {ess:.0f}, max R-hat {rh:.4f}, divergences {rows[-1][4]}, "
              f"leapfrog steps per draw {rows[-1][5]:.1f}, load {_load():.2f}", flush=True)
    rate, seconds, ess, rh, div, _ = sorted(rows)[len(rows) // 2]
    b_seconds, idata = fit_bambi(VERBAGG_BAMBI, data, family="bernoulli", chains=chains)
    post = idata["posterior"].to_dataset() if hasattr(idata, "children") else idata.posterior
    names = ["Intercept", "Anger", "Gender", "btype", "situ", "1|id_sigma", "1|item_sigma"]
    b_ess, b_rhat = _min_ess({v: post[v].values for v in names})
    stats = idata["sample_stats"].to_dataset() if hasattr(idata, "children") else idata.sample_stats
    b_div = int(stats["diverging"].sum())
    print(f"  Bambi: {b_seconds:.1f} s, min ESS_bulk {b_ess:.0f}, max R-hat {b_rhat:.4f}, divergences {b_div}; "
          f"load {_load():.2f}")
    b_rate = b_ess / b_seconds
    print(f"| VerbAgg min ESS_bulk/s ({chains} chains x (1000 + 1000)) | {rate:.0f} ({seconds:.1f} s, ESS {ess:.0f}, "
          f"R-hat {rh:.3f}, {div} div.) | {b_rate:.1f} ({b_seconds:.1f} s, ESS {b_ess:.0f}, R-hat {b_rhat:.3f}, "
          f"{b_div} div.) | {rate / b_rate:.0f}x |", flush=True)


COMPILE_PROCESS = (
    "import time\n"
    "from bayeslmm import Lmer, load_dataset\n"
    f"m = Lmer({CBPP!r}, load_dataset('cbpp'), family='binomial')\n"
    "start = time.perf_counter()\n"
    "m.fit(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)\n"
    "print(time.perf_counter() - start)\n"
)


def bench_compile():
    with tempfile.TemporaryDirectory() as cache:
        env = {**ENV, "NUMBA_CACHE_DIR": cache}
        times = [float(subprocess.run([sys.executable, "-c", COMPILE_PROCESS], check=True, capture_output=True,
                                      env=env, text=True).stdout.split()[-1]) for _ in range(2)]
    print(f"| first fit after a fresh install (numba compiles the GLMM kernel; cbpp, 2 x 200 draws) | "
          f"{times[0]:.1f} s | second process, cache loaded: {times[1]:.2f} s | load {_load():.2f} |", flush=True)


def _non_centred(packed):
    """The same kernel with the Laplace information switched off: ``H = c = A = C = 0`` makes ``P = I``
    and ``b = F z`` (the non-centred parametrization of Bambi and the PyMC model); the fixed effects keep
    their whitening at the reference. Still an exact map: only the parametrization differs."""
    f = packed.floats
    p = f[9].size
    for i in (5, 6, 7, 8):  # H, c, A, cval
        f[i][:] = 0.0
    if p:
        precision = np.linalg.inv(packed.reference.cov_beta)
        f[11][:p * p] = (0.5 * (precision + precision.T)).ravel()
        f[11][p * p:p * p + p] = 0.0
    return packed


def bench_ablation():
    """The parametrization's share: the same kernel (same gradient cost), Laplace map against non-centred."""
    import sys as _sys

    _sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "validation"))
    from glmm_validation import NEAR_SINGULAR_FORMULA, near_singular_data

    from bayeslmm import Lmer, load_dataset
    from bayeslmm.engines.diagnostics import ess_bulk
    from bayeslmm.engines.glmm import density, pack
    from bayeslmm.engines.glmm.packing import posterior_from_draws
    from bayeslmm.engines.nutpie_bridge import sample_nuts

    cases = [
        ("cbpp", Lmer(CBPP, load_dataset("cbpp"), family="binomial"), 4),
        ("near-singular (3 groups, SD 0.05)", Lmer(NEAR_SINGULAR_FORMULA["binomial"], near_singular_data("binomial"),
                                                   family="binomial"), 4),
        ("VerbAgg", Lmer(VERBAGG, load_dataset("verbagg"), family="binomial"), 2),
    ]
    for label, model, chains in cases:
        for variant in ("Laplace-informed", "non-centred"):
            packed = pack(model.design, model.model_priors, model.family)
            if variant == "non-centred":
                _non_centred(packed)
            start = time.perf_counter()
            xs, stats = sample_nuts(density(packed), draws=1000, tune=1000, chains=chains, random_seed=3)
            seconds = time.perf_counter() - start
            post = posterior_from_draws(packed, model.design, model.family, xs)
            ess = {v: float(np.min(ess_bulk(post[v].values))) for v in post.data_vars if not v.startswith("ranef")}
            worst = min(ess, key=ess.get)
            print(f"| {label} | {variant} | {ess[worst]:.0f} ({worst}) | {int(stats['diverging'].values.sum())} | "
                  f"{stats['n_steps'].values.mean():.1f} | {seconds:.1f} s |", flush=True)


SECTIONS = {"cbpp": bench_cbpp, "process": bench_process, "verbagg": bench_verbagg, "compile": bench_compile,
            "ablation": bench_ablation}

if __name__ == "__main__":
    print(f"load average at start: {_load():.2f} (2 cores)")
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
