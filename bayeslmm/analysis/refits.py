"""Refits with observations held out: exact leave-one-out for high-k points, and K-fold cross-validation.

Nothing is compiled per refit. Models the collapsed sampler handles are refitted by it on the kept rows
(held-out rows removed, every group level kept, the priors of the full fit), in a fraction of a second
each, wherever :func:`~bayeslmm.engines.executor.run_tasks` runs them. Other models are compiled once
(PyMC with a per-observation weight on its log-likelihood, ``nutpie.compile_pymc_model``), and each
refit only swaps the weight vector (0 for held-out rows) and samples again. ArviZ drives the refits
(``reloo``, ``loo_kfold``) through :class:`RefitWrapper`; the public entry points are
:func:`bayeslmm.analysis.comparison.loo` (``reloo=True``), :func:`~bayeslmm.analysis.comparison.kfold`
and :func:`~bayeslmm.analysis.comparison.lrt`.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats.loo import SamplingWrapper

from bayeslmm.analysis.pointwise import K_THRESHOLD, log_likelihood, loo_tree
from bayeslmm.engines import collapsed
from bayeslmm.engines.executor import check_executor_arguments, run_tasks, task_threads
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.errors import BayeslmmError, ConvergenceWarning
from bayeslmm.spec.design import Design
from bayeslmm.spec.specification import ModelSpec

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel as Lmer

__all__ = ["RefitWrapper", "Refitter", "kfold_with_folds", "make_folds", "refitter", "reloo", "resolve_folds"]


class Refitter:
    """Refits of one model with observations held out, compiling nothing per refit.

    Models the collapsed sampler handles are refitted by it on the kept rows (every group level kept,
    the full fit's priors), wherever :func:`~bayeslmm.engines.executor.run_tasks` runs them: the task
    carries the model's specification (:class:`~bayeslmm.spec.specification.ModelSpec`), not the model.
    Other models are compiled once as a PyMC model with per-observation log-likelihood weights, and
    each refit swaps the weights (0 for held-out rows); that compiled model stays in this process, so
    their refits run here, one after the other.
    """

    def __init__(self, model: "Lmer") -> None:
        start = time.perf_counter()
        self.model = model
        self.collapsed = collapsed.supports(model.design, model.model_priors, model.family)
        self.compiled = None
        self.spec = None
        if self.collapsed:
            self.spec = ModelSpec.from_model(model, resolved=True)
        else:
            import nutpie

            from bayeslmm.engines.pymc_model import build_model

            keep = ["beta", *model.family.aux] + [var_names(block)["ranef"] for block in model.design.blocks]
            weighted = build_model(model.design, model.model_priors, model.family, weighted=True)
            self.compiled = nutpie.compile_pymc_model(weighted, var_names=keep)
        self.compile_seconds = time.perf_counter() - start

    def sample_many(
        self, held_out: list[np.ndarray], seeds: list[int], settings: dict[str, Any], *, client: Any = None,
        workers: int | None = None, description: str = "Refits",
    ) -> list[tuple[xr.Dataset, int, float]]:
        """Refit without each set of rows: (posterior, divergences, seconds) per set, in order.

        Raises
        ------
        BayeslmmError
            A refit failed (its rows and seed are named); cross-validation needs every one.
        """
        if self.collapsed:
            shared, function = (self.spec, settings), _collapsed_refit
        else:
            shared, function, client, workers = (self, settings), _compiled_refit, None, 1
        run = run_tasks(function, held_out, seeds, shared=shared, client=client, workers=workers,
                        description=description, unit="fits")
        if run.failures:
            raise BayeslmmError(f"a refit of {self.model.formula!r} failed: {run.failures[0]}")
        return run.results

    def sample(
        self, weights: np.ndarray, *, draws: int, tune: int, chains: int, seed: int, **options: Any
    ) -> tuple[xr.Dataset, int, float]:
        """Posterior with these weights (0 holds a row out), its number of divergences, and the seconds it took."""
        held_out = np.flatnonzero(np.asarray(weights) == 0)
        settings = {"draws": draws, "tune": tune, "chains": chains, **options}
        return self.sample_many([held_out], [seed], settings, workers=1)[0]


def _collapsed_refit(shared: tuple[ModelSpec, dict], held_out: np.ndarray, seed: int) -> tuple[xr.Dataset, int, float]:
    """A task of :func:`~bayeslmm.engines.executor.run_tasks`: the collapsed sampler without ``held_out``."""
    spec, settings = shared
    start = time.perf_counter()
    design = spec.design()
    kept = np.ones(design.n_obs, dtype=bool)
    kept[held_out] = False
    options = {k: v for k, v in settings.items() if k != "nuts_sampler"}
    if task_threads() is not None:
        options["cores"] = task_threads()
    tree, _ = collapsed.sample_marginal(design.subset(kept), spec.model_priors(), random_seed=seed, **options)
    return _refit_result(tree, start)


def _compiled_refit(shared: tuple["Refitter", dict], held_out: np.ndarray, seed: int) -> tuple[xr.Dataset, int, float]:
    """A task run in this process: the compiled weighted PyMC model with the rows of ``held_out`` weighted 0."""
    import nutpie

    refitter, settings = shared
    start = time.perf_counter()
    weights = np.ones(refitter.model.design.n_obs)
    weights[held_out] = 0.0
    settings = dict(settings)
    draws, tune, chains = settings.pop("draws"), settings.pop("tune"), settings.pop("chains")
    tree = nutpie.sample(
        refitter.compiled.with_data(loglik_weight=weights), draws=draws, tune=tune, chains=chains, seed=seed,
        progress_bar=False, save_warmup=False, **settings,
    )
    return _refit_result(tree, start)


def _refit_result(tree: xr.DataTree, start: float) -> tuple[xr.Dataset, int, float]:
    stats = tree["sample_stats"].to_dataset()
    divergences = int(stats["diverging"].sum()) if "diverging" in stats else 0
    return tree["posterior"].to_dataset(), divergences, time.perf_counter() - start


def refitter(model: "Lmer") -> Refitter:
    """The model's refitter, made on first use and kept with the model (see ``FittedModel.resource``)."""
    return model.resource("refitter", lambda: Refitter(model))


def _fit_settings(model: "Lmer") -> dict[str, Any]:
    """Draws, tuning steps, chains and seed of the model's fit (from its draws when unrecorded)."""
    sampler = getattr(model, "sampler", None)
    if sampler is not None:
        return {"draws": sampler.draws, "tune": sampler.tune, "chains": sampler.chains, "random_seed": sampler.random_seed}
    sizes = model.idata["posterior"].sizes
    return {"draws": int(sizes["draw"]), "tune": 1000, "chains": int(sizes["chain"]), "random_seed": None}


class RefitWrapper(SamplingWrapper):
    """ArviZ's refit interface (``reloo``, ``loo_kfold``) on top of :class:`Refitter`.

    ArviZ asks for one refit at a time; :meth:`prefetch` runs the refits it will ask for beforehand, all
    at once through :func:`~bayeslmm.engines.executor.run_tasks` (``client=`` and ``workers=`` among the
    settings say where), each with the seed it would have had one at a time: the ``i``-th draw of the
    generator seeded by ``random_seed``, in ArviZ's order. Records the seconds and divergences of every refit.
    """

    def __init__(self, model: "Lmer", tree: xr.DataTree, random_seed: int | None, **settings: Any) -> None:
        super().__init__(model=None, idata_orig=tree)
        self.lmer = model
        self.client, self.workers = settings.pop("client", None), settings.pop("workers", None)
        check_executor_arguments(self.client, self.workers)
        self.refitter = refitter(model)
        defaults = _fit_settings(model)
        self.settings = {name: settings.pop(name, None) or defaults[name] for name in ("draws", "tune", "chains")}
        self.options = settings
        self._rng = np.random.default_rng(random_seed if random_seed is not None else defaults["random_seed"])
        self._prefetched: dict[tuple[int, ...], xr.Dataset] = {}
        self.seconds: list[float] = []
        self.divergences: list[int] = []

    def prefetch(self, held_out: list[np.ndarray], description: str) -> None:
        """Refit without each set of rows now (the order in which ArviZ will ask for them)."""
        seeds = [self._next_seed() for _ in held_out]
        results = self.refitter.sample_many(
            held_out, seeds, {**self.settings, **self.options}, client=self.client, workers=self.workers,
            description=description,
        )
        for rows, (posterior, divergences, seconds) in zip(held_out, results):
            self._prefetched[tuple(int(i) for i in rows)] = posterior
            self.seconds.append(seconds)
            self.divergences.append(divergences)

    def _next_seed(self) -> int:
        return int(self._rng.integers(0, 2**31 - 1))

    def sel_observations(self, idx):
        rows = np.atleast_1d(np.asarray(idx, dtype=int))
        weights = np.ones(self.lmer.design.n_obs)
        weights[rows] = 0.0
        return weights, rows

    def sample(self, modified_observed_data):
        key = tuple(int(i) for i in np.flatnonzero(np.asarray(modified_observed_data) == 0))
        if key in self._prefetched:
            return self._prefetched.pop(key)
        posterior, divergences, seconds = self.refitter.sample(  # a refit nobody planned: here, now
            modified_observed_data, seed=self._next_seed(), **self.settings, **self.options
        )
        self.seconds.append(seconds)
        self.divergences.append(divergences)
        return posterior

    def get_inference_data(self, fitted_model):
        return xr.DataTree.from_dict({"posterior": fitted_model})

    def log_likelihood__i(self, excluded_obs, idata__i):
        posterior = idata__i["posterior"].to_dataset()
        values = log_likelihood(self.lmer, posterior, rows=excluded_obs)
        return xr.DataArray(
            values,
            dims=("chain", "draw", "obs"),
            coords={"chain": posterior.chain, "draw": posterior.draw, "obs": excluded_obs},
        )

    def warn_divergences(self, what: str) -> None:
        bad = sum(1 for count in self.divergences if count)
        if bad:
            warnings.warn(
                f"{bad} of {len(self.divergences)} {what} refits of {self.lmer.formula!r} had divergent "
                "transitions: those posteriors may be biased. Pass target_accept=0.95 to retry",
                ConvergenceWarning,
                stacklevel=3,
            )


def reloo(model: "Lmer", result: Any, **settings: Any) -> Any:
    """PSIS-LOO with the flagged observations replaced by exact leave-one-out refits (ArviZ ``reloo``)."""
    tree = loo_tree(model)
    wrapper = RefitWrapper(model, tree, settings.pop("random_seed", None), **settings)
    flagged = np.flatnonzero(np.asarray(result.pareto_k).reshape(-1) > K_THRESHOLD)  # ArviZ's order
    wrapper.prefetch([np.array([i]) for i in flagged], "Exact leave-one-out refits")
    refitted = az.reloo(wrapper, loo_orig=result, var_name="y", k_threshold=K_THRESHOLD, pointwise=True)
    refitted.refit_seconds = list(wrapper.seconds)
    refitted.compile_seconds = wrapper.refitter.compile_seconds
    wrapper.warn_divergences("leave-one-out")
    return refitted


def kfold_with_folds(model: "Lmer", folds: np.ndarray, random_seed: int | None, **settings: Any) -> Any:
    """K-fold cross-validation with given folds (ArviZ ``loo_kfold`` on the compiled weighted model)."""
    tree = loo_tree(model)
    wrapper = RefitWrapper(model, tree, random_seed, **settings)
    labels = np.unique(folds)  # ArviZ numbers the folds in this order and refits them in turn
    wrapper.prefetch([np.flatnonzero(folds == label) for label in labels], f"{len(labels)}-fold cross-validation")
    result = az.loo_kfold(tree, wrapper, pointwise=True, var_name="y", folds=folds)
    result.compile_seconds = wrapper.refitter.compile_seconds
    result.fold_seconds = list(wrapper.seconds)
    wrapper.warn_divergences("K-fold")
    return result


def make_folds(n_obs: int, k: int, random_seed: int | None, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number (1..k) of every row: balanced random folds, or whole groups kept together."""
    rng = np.random.default_rng(random_seed)
    if groups is None:
        if not 2 <= k <= n_obs:
            raise ValueError(f"k must be between 2 and the number of observations ({n_obs}), got {k}")
        return rng.permutation(np.arange(n_obs) % k) + 1
    codes, levels = pd.factorize(pd.Series(groups), sort=True)
    if not 2 <= k <= len(levels):
        raise ValueError(f"k must be between 2 and the number of groups ({len(levels)}), got {k}")
    level_fold = rng.permutation(np.arange(len(levels)) % k) + 1
    return level_fold[codes]


def resolve_folds(
    design: Design, k: int, folds: np.ndarray | None, group_by: str | None, random_seed: int | None
) -> np.ndarray:
    """The fold of every row, shape (n_obs,): ``folds`` checked, or :func:`make_folds` from ``k``
    (whole levels of the column ``group_by`` together when given)."""
    if folds is not None:
        folds = np.asarray(folds).reshape(-1)
        if len(folds) != design.n_obs:
            raise ValueError(f"folds must give a fold for each of the {design.n_obs} observations, got {len(folds)}")
        if len(np.unique(folds)) < 2:
            raise ValueError("folds must contain at least two distinct folds")
        return folds
    if not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer number of folds, got {k!r}")
    groups = None
    if group_by is not None:
        if group_by not in design.data.columns:
            raise ValueError(
                f"group_by={group_by!r} is not a column of the model's data; columns: {list(design.data.columns)}"
            )
        groups = design.data[group_by].to_numpy()
    return make_folds(design.n_obs, int(k), random_seed, groups)
