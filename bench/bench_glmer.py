"""Time the Laplace engine (``Lmer(...).fit_frequentist()``) against lme4's glmer in the same run.

Run from the repository root with ``python bench/bench_glmer.py``. Each model is fitted ``--repeats``
times (default 3) by bayeslmm and, when ``Rscript`` with lme4 and glmmTMB is on the PATH, by R on the
same CSV files; the table shows the median wall time of each and bayeslmm's log-likelihood next to R's.
Both sides read the data from bayeslmm/data, and time the fit only (the design or model frame is built
outside the timer in Python; R's timer includes lme4's model frame, which takes a few milliseconds).

lme4's published timings (the issue: VerbAgg 1.9 s, a three-factor Poisson model with 403 rows 0.5 s)
come from another machine; the R column here is the comparison that counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from bayeslmm import Lmer, load_dataset

CASES = {
    # name: (formula, data set, family, nAGQ, R call)
    "cbpp logit": (
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial", 1,
        "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), family = binomial, data = cbpp)",
    ),
    "cbpp logit, nAGQ = 25": (
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial", 25,
        "glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), family = binomial, data = cbpp, nAGQ = 25)",
    ),
    "grouseticks Poisson, 3 factors": (
        "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", "grouseticks", "poisson", 1,
        "glmer(TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION), family = poisson, data = grouse)",
    ),
    "grouseticks negative binomial": (
        "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", "grouseticks", "negbinomial", 1,
        "glmmTMB(TICKS ~ YEAR + cHEIGHT + (1 | LOCATION), family = nbinom2, data = grouse)",
    ),
    "VerbAgg, crossed id x item": (
        "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "verbagg", "binomial", 1,
        "glmer(r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), family = binomial, data = verb)",
    ),
    "VerbAgg (1 | id), nAGQ = 8": (
        "r2 ~ Anger + Gender + btype + situ + (1 | id)", "verbagg", "binomial", 8,
        "glmer(r2 ~ Anger + Gender + btype + situ + (1 | id), family = binomial, data = verb, nAGQ = 8)",
    ),
}

R_SETUP = """
suppressPackageStartupMessages({library(lme4); library(glmmTMB); library(jsonlite)})
rd <- function(f) read.csv(file.path("bayeslmm/data", f), stringsAsFactors = FALSE)
cbpp <- rd("cbpp.csv"); cbpp$herd <- factor(cbpp$herd); cbpp$period <- factor(cbpp$period)
grouse <- rd("grouseticks.csv")
for (v in c("INDEX", "BROOD", "YEAR", "LOCATION")) grouse[[v]] <- factor(grouse[[v]], levels = sort(unique(grouse[[v]])))
verb <- rd("VerbAgg.csv"); verb$r2 <- factor(verb$r2, levels = c("N", "Y"))
for (v in c("Gender", "btype", "situ", "item", "id")) verb[[v]] <- factor(verb[[v]], levels = sort(unique(verb[[v]])))
out <- list()
"""


def time_python(repeats: int) -> dict[str, tuple[float, float]]:
    results = {}
    for name, (formula, dataset, family, nAGQ, _) in CASES.items():
        data = load_dataset(dataset)
        seconds = []
        for _ in range(repeats):
            model = Lmer(formula, data, family=family)
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = model.fit_frequentist(nAGQ=nAGQ)
            seconds.append(time.perf_counter() - started)
        results[name] = (statistics.median(seconds), fit.logLike)
    return results


def time_r(repeats: int) -> dict[str, tuple[float, float]] | None:
    if shutil.which("Rscript") is None:
        return None
    lines = [R_SETUP]
    for name, (*_, call) in CASES.items():
        lines.append(
            f"s <- sapply(1:{repeats}, function(i) system.time(m <<- {call})[['elapsed']])\n"
            f"ll <- as.numeric(logLik(m)); if ({'TRUE' if 'nAGQ' in call else 'FALSE'}) ll <- NA\n"
            f"out[[{json.dumps(name)}]] <- c(median(s), ll)"
        )
    lines.append("cat(toJSON(out, digits = NA, na = 'null'))")
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as script:
        script.write("\n".join(lines))
    completed = subprocess.run(["Rscript", script.name], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    if completed.returncode != 0:
        print("R failed:", completed.stderr[-2000:])
        return None
    parsed = json.loads(completed.stdout.strip().splitlines()[-1])
    return {name: (values[0], values[1]) for name, values in parsed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    python = time_python(repeats)
    r = time_r(repeats)
    print(f"{'model':34s} {'bayeslmm s':>11s} {'R s':>8s} {'ratio':>6s} {'logLik bayeslmm':>16s} {'logLik R':>12s}")
    for name, (seconds, log_lik) in python.items():
        r_seconds, r_log_lik = r[name] if r else (float("nan"), None)
        shown = "(saturated)" if r_log_lik is None else f"{r_log_lik:12.4f}"
        print(f"{name:34s} {seconds:11.2f} {r_seconds:8.2f} {seconds / r_seconds:6.1f} {log_lik:16.4f} {shown:>12s}")
    print("R: lme4 1.1 glmer (glmmTMB for the negative binomial); nAGQ > 1 log-likelihoods in lme4 omit the saturated model's.")


if __name__ == "__main__":
    main()
