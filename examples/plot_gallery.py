"""Plot gallery: every plot of :mod:`bayeslmm.plots`, written as PNG files.

Fits lme4's sleepstudy model (and two simpler ones to compare), a categorical-predictor variant,
binomial and count models (cbpp, grouseticks) for the discrete-data checks and,
unless ``--quick`` is given, the InstEval model with 73,421 ratings and 2,972 students (about two
minutes of sampling with few draws), then draws every plot and prints how long each took.

Run from the repository root::

    python examples/plot_gallery.py            # everything, InstEval included
    python examples/plot_gallery.py --quick    # sleepstudy only

Every figure goes to ``examples/output/`` (git-ignored); the figures shown in the README and in
``docs/plots.md`` also go to ``docs/images/``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bayeslmm import Lmer, load_dataset, plots  # noqa: E402
from bayeslmm.analysis.comparison import lrt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "examples" / "output"
IMAGES = ROOT / "docs" / "images"
#: Figures also written to docs/images (README: the first two; docs/plots.md: all of them).
DOCS = {
    "group_fits",
    "shrinkage_2d",
    "shrinkage_1d",
    "caterpillar",
    "coefs",
    "variance_components",
    "ppc",
    "compare",
    "prior_posterior",
    "group_fits_categorical",
    "insteval_caterpillar_s",
    "group_fits_binomial",
    "rootogram",
    "ppc_groups",
}


def fit(formula: str, data, family: str = "gaussian", **settings) -> Lmer:
    """Fit quietly (diagnostic warnings of short runs are not the point here) and report the time."""
    started = time.perf_counter()
    model = Lmer(formula, data, family=family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**({"random_seed": 2026} | settings))
    print(f"fitted {formula!r} in {time.perf_counter() - started:.1f} s")
    return model


def save(name: str, make) -> None:
    """Draw one figure, write it, print drawing and writing times."""
    started = time.perf_counter()
    figure = make()
    drawn = time.perf_counter()
    figure.savefig(OUTPUT / f"{name}.png", dpi=110)
    if name in DOCS:
        figure.savefig(IMAGES / f"{name}.png", dpi=90)
    plt.close(figure)
    print(f"  {name:<28} drawn in {drawn - started:5.2f} s, written in {time.perf_counter() - drawn:5.2f} s")


def sleepstudy_plots() -> None:
    sleep = load_dataset("sleepstudy")
    model = fit("Reaction ~ Days + (Days | Subject)", sleep)
    intercepts = fit("Reaction ~ Days + (1 | Subject)", sleep)
    null = fit("Reaction ~ 1 + (1 | Subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comparison = lrt(model, intercepts, null, names=["(Days | Subject)", "(1 | Subject)", "no Days"])

    print("sleepstudy:")
    save("group_fits", lambda: plots.plot_group_fits(model, "Days", "Subject", no_pooling=True, complete_pooling=True))
    save("shrinkage_2d", lambda: plots.plot_shrinkage(model, ["(Intercept)", "Days"]))
    save("shrinkage_2d_ellipses", lambda: plots.plot_shrinkage(model, ellipses=True, label_groups=False))
    save("shrinkage_1d", lambda: plots.plot_shrinkage(model, "Days", ellipses=True))
    save("caterpillar", lambda: plots.plot_caterpillar(model, "Subject"))
    save("caterpillar_fixef", lambda: plots.plot_caterpillar(model, "Subject", which="fixef"))
    save("coefs", lambda: plots.plot_coefs(model, frequentist=True))
    save("coefs_intervals", lambda: plots.plot_coefs(model, "Days", kind="interval", frequentist=True))
    save("variance_components", lambda: plots.plot_variance_components(model))
    save("ppc", lambda: plots.plot_ppc(model))
    save("ppc_ecdf", lambda: plots.plot_ppc(model, kind="ecdf"))
    save("compare", lambda: plots.plot_compare(comparison))
    save("prior_posterior", lambda: plots.plot_prior_posterior(model))

    # A categorical predictor: days 0-1 were adaptation, days 2-9 sleep deprivation.
    sleep["phase"] = np.where(sleep["Days"] < 2, "adaptation", "deprivation")
    phases = fit("Reaction ~ phase + (phase | Subject)", sleep, draws=500, tune=500, chains=2)
    save(
        "group_fits_categorical", lambda: plots.plot_group_fits(phases, "phase", no_pooling=True, complete_pooling=True)
    )


def discrete_plots() -> None:
    """Binomial and count models: group fits on the response scale and the discrete-data checks."""
    cbpp = load_dataset("cbpp")
    binomial = fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    grouse = load_dataset("grouseticks")
    poisson = fit("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", grouse, family="poisson")
    negbin = fit("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", grouse, family="negbinomial")
    print("cbpp (binomial) and grouseticks (poisson, negative binomial):")
    save("group_fits_binomial", lambda: plots.plot_group_fits(binomial, "period", "herd"))
    save("ppc_groups", lambda: plots.plot_ppc_groups(binomial))
    save("rootogram", lambda: plots.plot_rootogram(negbin, max_count=40))
    save("rootogram_poisson", lambda: plots.plot_rootogram(poisson, max_count=40))
    save("ppc_groups_counts", lambda: plots.plot_ppc_groups(negbin, "LOCATION"))


def insteval_plots() -> None:
    """Large data: thousands of groups are subsampled or drawn as a ranked band, with a note."""
    model = fit("y ~ service + (1|s) + (1|d) + (1|dept)", load_dataset("InstEval"), draws=200, tune=200, chains=2)
    print("InstEval (73,421 rows; 2,972 students, 1,128 lecturers, 14 departments):")
    save("insteval_group_fits_d", lambda: plots.plot_group_fits(model, "service", "d", no_pooling=True))
    save("insteval_caterpillar_s", lambda: plots.plot_caterpillar(model, "s"))
    save("insteval_caterpillar_dept", lambda: plots.plot_caterpillar(model, "dept"))
    save("insteval_shrinkage_d", lambda: plots.plot_shrinkage(model, "(Intercept)", "d"))
    save("insteval_coefs", lambda: plots.plot_coefs(model))
    save("insteval_variance_components", lambda: plots.plot_variance_components(model))  # includes the REML fit
    save("insteval_ppc", lambda: plots.plot_ppc(model))
    save("insteval_prior_posterior", lambda: plots.plot_prior_posterior(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the InstEval model (about two minutes)")
    args = parser.parse_args()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    sleepstudy_plots()
    discrete_plots()
    if not args.quick:
        insteval_plots()
    print(f"figures in {OUTPUT.relative_to(ROOT)}/ and {IMAGES.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
