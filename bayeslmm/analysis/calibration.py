"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) of the collapsed sampler.

If parameters are drawn from the prior, data from the model given them, and the posterior is sampled
correctly, the rank of each true value among (nearly independent) posterior draws is uniform on
``0, ..., L``. :func:`simulation_based_calibration` does this ``n_sims`` times for a Gaussian model's
design and priors, with the simulations and fits spread by :func:`bayeslmm.engines.executor.run_tasks`,
and reports the ranks with a chi-square test of uniformity per parameter. Ranks piling up at the ends
(intervals too narrow), in the middle (too wide) or on one side (bias) show a sampler or a model
that does not match its own assumptions. ``validation/sbc.py`` runs it on the sleepstudy design.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.engines import collapsed
from bayeslmm.engines.executor import TaskFailure, check_executor_arguments, run_tasks, spawn_seeds, task_threads
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.engines.sampling import check_sampler_arguments
from bayeslmm.errors import UnsupportedSyntaxError
from bayeslmm.results import summaries
from bayeslmm.spec.simulate import draw_parameters, simulate_response
from bayeslmm.spec.specification import ModelSpec

__all__ = ["simulation_based_calibration", "CalibrationResult"]


def simulation_based_calibration(
    model: Any,
    n_sims: int = 200,
    *,
    n_ranks: int = 99,
    bins: int = 10,
    draws: int = 500,
    tune: int = 500,
    chains: int = 2,
    random_seed: int | None = None,
    client: Any = None,
    workers: int | None = None,
    progressbar: bool | None = None,
) -> "CalibrationResult":
    """Ranks of prior draws among posterior draws, for every fixed effect, SD and ``sigma``.

    Parameters
    ----------
    model : Lmer
        A Gaussian model the collapsed sampler fits (fitted or not): its design and resolved priors are
        used as they are for every simulation (the priors are not rescaled to the simulated data).
    n_sims : int
        Simulated data sets.
    n_ranks : int
        ``L``: posterior draws each true value is ranked among, evenly spaced over the pooled chains
        (thinning reduces their autocorrelation); ranks run from 0 to ``L``.
    bins : int
        Bins of the chi-square test of uniformity; ``L + 1`` must be a multiple of it.
    draws, tune, chains : int
        Settings of each fit; ``chains * draws`` must be at least ``n_ranks``.
    random_seed : int, optional
        Simulation ``i`` uses the ``i``-th child of ``numpy.random.SeedSequence(random_seed)``.
    client, workers, progressbar
        As :func:`bayeslmm.engines.executor.run_tasks`.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    UnsupportedSyntaxError
        A model the collapsed sampler does not fit.
    ValueError
        Bad numbers.
    """
    for name, value in (("n_sims", n_sims), ("n_ranks", n_ranks), ("bins", bins)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if (n_ranks + 1) % bins:
        raise ValueError(f"n_ranks + 1 ({n_ranks + 1}) must be a multiple of bins ({bins})")
    check_sampler_arguments(draws, tune, chains)
    if chains * draws < n_ranks:
        raise ValueError(f"chains * draws ({chains * draws}) must be at least n_ranks ({n_ranks})")
    check_executor_arguments(client, workers)
    if not collapsed.supports(model.design, model.model_priors, model.family):
        raise UnsupportedSyntaxError("simulation_based_calibration checks the collapsed sampler: a Gaussian model it fits")
    spec = ModelSpec.from_model(model, resolved=True)
    plan = _Plan(spec, {"draws": draws, "tune": tune, "chains": chains}, n_ranks)
    seeds, entropy = spawn_seeds(random_seed, n_sims)
    run = run_tasks(_calibrate, range(n_sims), seeds, shared=plan, client=client, workers=workers,
                    progressbar=progressbar, description="Simulation-based calibration", unit="fits")
    names = _parameter_names(model.design)
    ranks = pd.DataFrame([r for r in run.results if r is not None], columns=names, dtype=int)
    ranks.index = pd.Index([i for i, r in enumerate(run.results) if r is not None], name="simulation")
    return CalibrationResult(ranks, n_ranks, bins, run.failures, {"random_seed": entropy, "executor": run.executor})


@dataclass(eq=False)
class _Plan:
    spec: ModelSpec
    settings: dict[str, int]
    n_ranks: int


def _parameter_names(design) -> list[str]:
    names = [f"beta[{term}]" for term in design.fixed_terms] + ["sigma"]
    return names + [f"sd[{term}|{block.name}]" for block in design.blocks for term in block.terms]


def _calibrate(plan: _Plan, simulation: int, seed: np.random.SeedSequence) -> list[int]:
    """A task: draw parameters from the priors, simulate, fit, rank the true values."""
    design, priors = plan.spec.design(), plan.spec.model_priors()
    rng = np.random.default_rng(seed)
    truth = draw_parameters(design, priors, rng)
    simulated = dataclasses.replace(design, y=simulate_response(design, truth, rng))
    threads = task_threads()
    tree, _ = collapsed.sample_marginal(
        simulated, priors, random_seed=int(rng.integers(2**32)), **plan.settings,
        **({} if threads is None else {"cores": threads}),
    )
    posterior = tree["posterior"].to_dataset()
    pooled = [summaries.stack_draws(posterior, "beta").reshape(-1, design.X.shape[1])]
    pooled.append(summaries.stack_draws(posterior, "sigma").reshape(-1, 1))
    pooled += [summaries.stack_draws(posterior, var_names(b)["sd"]).reshape(-1, b.n_terms) for b in design.blocks]
    draws = np.concatenate(pooled, axis=1)
    kept = draws[np.linspace(0, len(draws) - 1, plan.n_ranks).round().astype(int)]
    sds = [np.sqrt(np.diag(covariance)) for covariance in truth.covariances]
    true = np.concatenate([truth.beta, [truth.aux["sigma"]], *sds])
    return [int(v) for v in (kept < true).sum(axis=0)]


@dataclass(eq=False)
class CalibrationResult:
    """The result of :func:`simulation_based_calibration`.

    Attributes
    ----------
    ranks : pandas.DataFrame
        One row per simulation, one column per parameter (``beta[term]``, ``sigma``, ``sd[term|block]``):
        the number of the ``n_ranks`` posterior draws below the true value.
    n_ranks, bins : int
    failures : list of TaskFailure
    settings : dict
        ``random_seed``, ``executor``.
    """

    ranks: pd.DataFrame
    n_ranks: int
    bins: int
    failures: list[TaskFailure] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def uniformity(self) -> pd.DataFrame:
        """Per parameter: ``chi2`` of the binned ranks against uniform, its ``df`` and ``p_value``."""
        from scipy import stats

        width = (self.n_ranks + 1) // self.bins
        rows = {}
        for name in self.ranks.columns:
            counts = np.bincount(self.ranks[name].to_numpy() // width, minlength=self.bins)
            expected = len(self.ranks) / self.bins
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            rows[name] = {"chi2": chi2, "df": self.bins - 1, "p_value": float(stats.chi2.sf(chi2, self.bins - 1))}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("parameter")
