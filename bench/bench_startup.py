"""Start-up and whole-process speed: what a user waits for, from ``python script.py`` to printed results.

Run with ``.venv/bin/python bench/bench_startup.py [--repeats 5]``. Every measurement starts a new
Python process and reports the median wall time of ``--repeats`` runs; the bayeslmm and Bambi scripts
alternate, so that a busier moment of the machine hits both alike.

- ``import bayeslmm``, ``from bayeslmm import Lmer, compare`` and ``bayeslmm --help``;
- the whole process of a script that imports, fits sleepstudy's ``Reaction ~ Days + (Days | Subject)``
  (4 chains x 1000 draws after 1000 tuning steps) and prints ``coefs``, against the same script with
  Bambi + nutpie, and the ratio; then both again with dask hidden, as in an installation without
  the ``dask`` extra (xarray imports dask on the first Dataset whenever it is installed);
- Lm and Lm2 (complete and no pooling) on sleepstudy, fit time inside a warm process;
- the first fit after a fresh install: numba's kernel cache emptied (a temporary ``NUMBA_CACHE_DIR``),
  then the same after ``bayeslmm compile`` (what ``scripts/bootstrap.sh`` runs at installation).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

BAYESLMM_SCRIPT = """
import warnings; warnings.simplefilter("ignore")
from bayeslmm import Lmer, load_dataset
model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
model.fit(random_seed=1, progressbar=False)
print(model.coefs)
"""

BAMBI_SCRIPT = """
import warnings; warnings.simplefilter("ignore")
import bambi as bmb, arviz as az
from bayeslmm import load_dataset
data = load_dataset("sleepstudy")
model = bmb.Model("Reaction ~ Days + (Days | Subject)", data)
idata = model.fit(draws=1000, tune=1000, chains=4, inference_method="nutpie", random_seed=1, progressbar=False)
print(az.summary(idata, var_names=["Intercept", "Days"]))
"""

# as if dask were not installed (xarray then skips it)
HIDE_DASK = "import sys; sys.modules['dask'] = None\n"

POOLING_SCRIPT = """
import time, warnings; warnings.simplefilter("ignore")
from bayeslmm import Lm, Lm2, load_dataset
data = load_dataset("sleepstudy")
for make in (lambda: Lm("Reaction ~ Days", data), lambda: Lm2("Reaction ~ Days", data, group="Subject")):
    make().fit(random_seed=0, progressbar=False)  # warm: imports and first use
    start = time.perf_counter()
    model = make()
    model.fit(random_seed=1, progressbar=False)
    print(type(model).__name__, f"{time.perf_counter() - start:.3f}")
"""


def wall(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


def median_of(repeats: int, command: list[str], env: dict | None = None) -> float:
    return statistics.median(wall(command, env) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; median of {repeats}")

    print(f"import bayeslmm:             {median_of(repeats, [PYTHON, '-c', 'import bayeslmm']):.3f} s")
    models = [PYTHON, "-c", "from bayeslmm import Lmer, compare"]
    print(f"from bayeslmm import Lmer, compare: {median_of(repeats, models):.3f} s")
    cli = [PYTHON, "-m", "bayeslmm", "--help"]
    print(f"bayeslmm --help:             {median_of(repeats, cli):.3f} s")

    for label, prefix in (("", ""), (" (no dask)", HIDE_DASK)):
        ours, theirs = [], []
        for _ in range(repeats):  # alternate, so that both see the same machine
            ours.append(wall([PYTHON, "-c", prefix + BAYESLMM_SCRIPT]))
            theirs.append(wall([PYTHON, "-c", prefix + BAMBI_SCRIPT]))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"whole process, sleepstudy{label}: bayeslmm {a:.2f} s, Bambi+nutpie {b:.2f} s, ratio {b / a:.1f}x")

    out = subprocess.run([PYTHON, "-c", POOLING_SCRIPT], check=True, capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.split("\n"):
        if line.strip():
            name, seconds = line.split()
            print(f"{name} fit (warm process):   {float(seconds):.3f} s")

    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"NUMBA_CACHE_DIR": cache}
        cold = wall([PYTHON, "-c", BAYESLMM_SCRIPT], env)
        print(f"first fit, fresh install:    {cold:.1f} s (whole process, numba compiles the kernels)")
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"NUMBA_CACHE_DIR": cache}
        compile_seconds = wall([PYTHON, "-m", "bayeslmm", "compile"], env)
        warm = wall([PYTHON, "-c", BAYESLMM_SCRIPT], env)
        print(f"bayeslmm compile:            {compile_seconds:.1f} s (at installation)")
        print(f"first fit after it:          {warm:.2f} s (whole process)")


if __name__ == "__main__":
    main()
