"""Simulation-based calibration of the collapsed sampler on the sleepstudy design.

Run with ``python validation/sbc.py [n_sims]`` (default 200; about 1 minute on 2 cores). Parameters are
drawn from the priors of ``Reaction ~ Days + (Days | Subject)`` on sleepstudy, data simulated on its
design, each data set fitted with 2 chains x 500 draws, and the rank of every true value among 99
thinned posterior draws recorded (Talts et al. 2018). Prints the rank histograms (10 bins) and a
chi-square test of uniformity per parameter; with correct inference every p-value is uniform on
(0, 1), so among the five an occasional one below 0.05 is expected, one below 0.001 is not.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bayeslmm import Lmer, load_dataset
from bayeslmm.analysis.calibration import simulation_based_calibration


def main(n_sims: int) -> None:
    model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    started = time.perf_counter()
    result = simulation_based_calibration(model, n_sims, random_seed=2026)
    seconds = time.perf_counter() - started
    print(f"{n_sims} simulations on {result.settings['executor']} in {seconds:.0f} s; {len(result.failures)} failed")
    width = (result.n_ranks + 1) // result.bins
    for name in result.ranks.columns:
        counts = np.bincount(result.ranks[name].to_numpy() // width, minlength=result.bins)
        print(f"{name:>26}: {' '.join(f'{c:3d}' for c in counts)}")
    print(result.uniformity().round(3).to_string())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
