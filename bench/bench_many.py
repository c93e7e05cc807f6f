"""1,000 sleepstudy-sized fits: the docs' power curve (5 sizes x 200 simulations), serially, in local
processes and on a Dask LocalCluster, with the results checked to be identical.

Run with ``python bench/bench_many.py`` (about 15 minutes on 2 loaded cores; ``--n-sims 20`` for a quick
look). Each simulation is one data set simulated from the REML fit of ``Reaction ~ Days + (Days |
Subject)`` with ``Days = 5``, fitted twice: by REML (with Satterthwaite df) and by the collapsed
sampler (2 chains x 500 draws after 500 tuning steps). Prints, per executor, the wall time (start-up
of the workers included), seconds per simulation, the speed-up over serial, and the CPU time of all
the processes involved (this one and its reaped children: the local workers, Dask's nannies and
workers), so that the wall times can be read against the load of a shared machine: CPU seconds per
simulation and the average number of cores in use. Serial runs the two chains of each Bayesian fit on
two threads (nutpie's default), the workers on one. Then the overhead of the executor itself (a task
that does nothing) and the start-up of the local pool; then the curve.
``--docs`` also writes ``docs/images/power_curve.png``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings
from pathlib import Path

import pandas as pd

from bayeslmm import Lmer, load_dataset, power
from bayeslmm.engines import executor

ROOT = Path(__file__).resolve().parents[1]
SIZES = [8, 12, 16, 20, 24]


def _nothing(shared, task, seed):
    return task


def _overhead(n: int, **where) -> float:
    """Milliseconds per task of run_tasks for a task that does nothing."""
    started = time.perf_counter()
    executor.run_tasks(_nothing, range(n), range(n), shared=b"x" * 1000, progressbar=False, **where)
    return 1000 * (time.perf_counter() - started) / n


def _cpu() -> float:
    """CPU seconds of this process and of its terminated (reaped) children so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-sims", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--docs", action="store_true", help="write docs/images/power_curve.png")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}")
    model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    settings = {"along": {"Subject": SIZES}, "n_sims": args.n_sims, "random_seed": 2026, "progressbar": False}
    n_fits = len(SIZES) * args.n_sims
    rows, curves = [], {}

    started, cpu = time.perf_counter(), _cpu()
    curves["serial"] = power(model, "Days", 5.0, workers=1, **settings)
    rows.append(("serial (this process)", time.perf_counter() - started, _cpu() - cpu))

    executor.shutdown()
    started, cpu = time.perf_counter(), _cpu()
    curves["processes"] = power(model, "Days", 5.0, workers=args.workers, **settings)
    wall = time.perf_counter() - started
    executor.shutdown()  # the workers end and are reaped: their CPU time is counted
    rows.append((f"{args.workers} local processes (start-up included)", wall, _cpu() - cpu))

    from distributed import Client, LocalCluster

    started, cpu = time.perf_counter(), _cpu()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        curves["dask"] = power(model, "Days", 5.0, client=client, **settings)
        wall = time.perf_counter() - started
    rows.append((f"Dask LocalCluster, {args.workers} workers (cluster start included)", wall, _cpu() - cpu))
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        dask_overhead = _overhead(2000, client=client)

    for name in ("processes", "dask"):
        pd.testing.assert_frame_equal(curves["serial"].simulations, curves[name].simulations, check_exact=True)
        pd.testing.assert_frame_equal(curves["serial"].table, curves[name].table, check_exact=True)
    print(f"\nidentical results serially, in local processes and on Dask: yes ({n_fits} simulations compared exactly)")

    serial = rows[0][1]
    print(f"\n{n_fits} simulations (each: REML fit + Bayesian fit of a sleepstudy-sized data set)")
    print(f"{'executor':<62} {'wall s':>8} {'s/simulation':>13} {'speed-up':>9} {'CPU s/simulation':>17} {'cores used':>11}")
    for name, seconds, cpu in rows:
        print(f"{name:<62} {seconds:8.1f} {seconds / n_fits:13.3f} {serial / seconds:8.2f}x "
              f"{cpu / n_fits:17.3f} {cpu / seconds:11.2f}")

    executor.shutdown()
    started = time.perf_counter()
    _overhead(args.workers, workers=args.workers)
    startup = time.perf_counter() - started
    print(f"\nlocal pool start-up ({args.workers} workers, kernels from the numba cache): {startup:.1f} s")
    print(f"executor overhead per task: serial {_overhead(2000, workers=1):.3f} ms, local processes "
          f"{_overhead(2000, workers=args.workers):.2f} ms, Dask {dask_overhead:.2f} ms")
    print(f"load average after: {os.getloadavg()}\n")
    print(curves["processes"])
    if args.docs:
        import matplotlib

        matplotlib.use("Agg")
        figure = curves["processes"].plot()
        figure.savefig(ROOT / "docs" / "images" / "power_curve.png", dpi=110)
        print("\nwrote docs/images/power_curve.png")


if __name__ == "__main__":
    main()
