"""Time fit_frequentist on simulated ~20,000-row data sets with two crossed grouping factors.

Run with ``python bench/bench_frequentist.py``; InstEval (73,421 rows) is timed too when its CSV is
present. Prints, for each case, the time to build the design
(formulae) and to fit (optimisation plus Satterthwaite df), the number of deviance evaluations, the
time per evaluation, and the estimates next to the simulated values.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bayeslmm import load_dataset
from bayeslmm.engines.reml import _ProfiledDeviance
from bayeslmm.results.frequentist import fit_frequentist
from bayeslmm.spec.design import build_design
from bayeslmm.spec.formula import parse_formula


def simulate_crossed(n: int, levels_a: int, levels_b: int, seed: int = 1) -> pd.DataFrame:
    """``y = 1 + 0.5 x + a + b + c x + e`` with crossed factors ``g1`` (a, c) and ``g2`` (b)."""
    rng = np.random.default_rng(seed)
    g1 = rng.integers(levels_a, size=n)
    g2 = rng.integers(levels_b, size=n)
    x = rng.normal(size=n)
    a = rng.normal(scale=1.0, size=levels_a)
    c = rng.normal(scale=0.3, size=levels_a)
    b = rng.normal(scale=0.7, size=levels_b)
    y = 1.0 + 0.5 * x + a[g1] + c[g1] * x + b[g2] + rng.normal(scale=1.2, size=n)
    return pd.DataFrame({"y": y, "x": x, "g1": [f"a{i}" for i in g1], "g2": [f"b{i}" for i in g2]})


def bench(formula: str, data: pd.DataFrame) -> None:
    started = time.perf_counter()
    design = build_design(parse_formula(formula), data)
    built = time.perf_counter()
    result = fit_frequentist(design)
    fitted = time.perf_counter()

    model = _ProfiledDeviance(design)
    theta = result.theta
    repeats = 50
    # Same BLAS thread setting as fit_frequentist uses internally.
    with threadpool_limits(limits=1, user_api="blas"):
        tick = time.perf_counter()
        for _ in range(repeats):
            model.deviance(theta, True)
        per_evaluation = (time.perf_counter() - tick) / repeats

    print(f"{formula}   n={design.n_obs}, levels={result.n_groups}")
    print(f"  design {built - started:6.2f} s   fit {fitted - built:6.2f} s   "
          f"({result.n_evaluations} deviance evaluations, {1e3 * per_evaluation:.2f} ms each; "
          f"converged={result.converged})")
    print("  " + result.ranef_var.to_string().replace("\n", "\n  "))
    print("  " + result.coefs[["Estimate", "SE", "DF"]].to_string().replace("\n", "\n  "))
    print()


def main() -> None:
    print("simulated SDs: g1 intercept 1.0, g1 slope 0.3, g2 intercept 0.7, residual 1.2\n")
    data = simulate_crossed(20_000, 200, 100)
    bench("y ~ x + (1 | g1) + (1 | g2)", data)
    bench("y ~ x + (x | g1) + (1 | g2)", data)
    data = simulate_crossed(20_000, 1000, 50, seed=2)
    bench("y ~ x + (1 | g1) + (1 | g2)", data)
    bench("y ~ x + (x | g1) + (1 | g2)", data)
    # lme4's large crossed example (73,421 rows), for scale; not part of the 20k-row target.
    insteval = load_dataset("InstEval")
    for column in ["s", "d", "dept", "service"]:
        insteval[column] = insteval[column].astype(str)
    bench("y ~ service + (1 | s) + (1 | d) + (1 | dept)", insteval)


if __name__ == "__main__":
    main()
