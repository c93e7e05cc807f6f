"""Comparison: predictive accuracy of fitted models, next to likelihood-ratio tests.

pymer4's ``lrt(model1, model2, ...)`` compares nested models with a likelihood-ratio test. Here the same
call compares models by their expected log predictive density (``elpd``) for new observations,
estimated by Pareto-smoothed importance-sampling leave-one-out cross-validation (PSIS-LOO, ArviZ), as
brms's ``loo_compare`` does. Models need not be nested; they must be fitted to the same observations.
With ``refit=True`` (the default, as pymer4) and models of one family, lme4's answer joins the table:
the models refitted by maximum likelihood (``lmer`` with ``REML = FALSE``, or glmer's Laplace fit), and
for each model nested in the one above it the likelihood-ratio test (see :func:`lrt` for the nesting
rule).

Public functions (each takes fitted :class:`~bayeslmm.Lmer` models):

=======================  ===========================================================================
``lrt(m1, m2, ...)``     comparison table (:class:`ModelComparison`), one row per model; ``compare``
                         is the same function (pymer4 0.9's name)
``loo(m)``               PSIS-LOO of one model (ArviZ ``ELPDDataLOO``); ``reloo=True`` refits the
                         model exactly without each observation whose Pareto k exceeds 0.7
``kfold(m, k=10)``       K-fold cross-validation (ArviZ ``ELPDDataLOOKFold``)
``waic(m)``              WAIC (:class:`ELPDDataWAIC`)
``r2(m)``                Bayesian R-squared (brms's ``bayes_R2``), marginal and conditional
``n_parameters(m)``      number of parameters, as lme4's ``npar``/``Df`` in ``anova``
=======================  ===========================================================================

Refits (K-fold and exact refits of high-k points) compile nothing per refit. Models the collapsed
sampler handles are refitted by it on the kept rows (held-out rows removed, every group level kept, the
priors of the full fit), in a fraction of a second each. Other models are compiled once (PyMC with a
per-observation weight on its log-likelihood, ``nutpie.compile_pymc_model``), and each refit only swaps
the weight vector (0 for held-out rows) and samples again. The predictive density of a held-out row is
the average over posterior draws of its likelihood, ``log mean_s p(y_i | theta_s)``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from arviz_stats.loo import SamplingWrapper
from arviz_stats.utils import ELPDData
from scipy.special import logsumexp

from bayeslmm.engines import collapsed
from bayeslmm.engines.executor import check_executor_arguments, run_tasks, task_threads
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.errors import (
    BayeslmmError,
    ConvergenceWarning,
    DataError,
    NotFittedError,
    ParetoKWarning,
)
from bayeslmm.results import posterior as posterior_eval
from bayeslmm.results import summaries
from bayeslmm.results.report import SummaryParts, layout_html, layout_text, p_value_format
from bayeslmm.spec.design import Design
from bayeslmm.spec.specification import ModelSpec

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel as Lmer

__all__ = [
    "K_THRESHOLD",
    "ELPDDataWAIC",
    "ModelComparison",
    "ParetoKWarning",
    "compare",
    "kfold",
    "loo",
    "lrt",
    "n_parameters",
    "n_high_k",
    "nested",
    "r2",
    "waic",
]

#: Pareto k above which the PSIS estimate of an observation's leave-one-out density is unreliable.
K_THRESHOLD = 0.7
#: p_waic of one observation above which WAIC is unreliable (Vehtari, Gelman & Gabry 2017).
P_WAIC_THRESHOLD = 0.4
_DRAW_CHUNK = 500
_ARVIZ_K_WARNING = "Estimated shape parameter of Pareto distribution"


# ============================================================================== checks and data
def _require_fitted(model: Any, what: str) -> None:
    if not hasattr(model, "design") or not hasattr(model, "idata"):
        raise TypeError(f"{what} needs a bayeslmm.Lmer model, got {type(model).__name__}")
    if model.idata is None:
        raise NotFittedError(
            f"{what}: model {model.formula!r} is not fitted; call .fit() on it first"
        )


def _data_difference(reference: Design, other: Design) -> str | None:
    """Why two designs are not fitted to the same observations; None when they are."""
    if reference.formula.response != other.formula.response:
        return f"the responses differ ({other.formula.response!r} vs {reference.formula.response!r})"
    if reference.n_obs != other.n_obs:
        return f"the numbers of observations differ ({other.n_obs} vs {reference.n_obs})"
    if not reference.data.index.equals(other.data.index):
        if set(reference.data.index) == set(other.data.index):
            return "the same rows are in a different order"
        return "they use different rows of the data (compare the data frames' indexes)"
    if not np.array_equal(reference.y, other.y):
        n_diff = int(np.sum(reference.y != other.y))
        return f"the response values differ in {n_diff} of {reference.n_obs} rows"
    return None


def _collect_models(models: tuple, what: str) -> list["Lmer"]:
    """Flatten ``(m1, m2)`` or ``([m1, m2],)``, and refuse what cannot be compared."""
    if len(models) == 1 and isinstance(models[0], list | tuple):
        models = tuple(models[0])
    if len(models) < 2:
        raise ValueError(
            f"{what} compares two or more models, got {len(models)}; for the predictive accuracy of a "
            "single model use loo(model)"
        )
    for position, model in enumerate(models, start=1):
        if not hasattr(model, "design") or not hasattr(model, "idata"):
            raise TypeError(f"{what}: argument {position} is a {type(model).__name__}, not a bayeslmm.Lmer")
        if model.idata is None:
            raise NotFittedError(
                f"{what}: model {position} ({model.formula!r}) is not fitted; call .fit() on every "
                "model before comparing them"
            )
    reference = models[0]
    for position, model in enumerate(models[1:], start=2):
        reason = _data_difference(reference.design, model.design)
        if reason is not None:
            raise DataError(
                f"{what}: model {position} ({model.formula!r}) and model 1 ({reference.formula!r}) "
                f"were fitted to different data: {reason}. Cross-validation compares how well models "
                "predict the same observations; fit every model to the same rows of the same data "
                "(drop rows with missing values in any model's columns before fitting)"
            )
    return list(models)


# ============================================================================== log-likelihood
def _log_likelihood(model: "Lmer", posterior: xr.Dataset, rows: np.ndarray) -> np.ndarray:
    """Pointwise log-likelihood of ``rows`` under ``posterior``, shape (chain, draw, len(rows))."""
    return posterior_eval.pointwise_log_likelihood(model.design.subset(rows), posterior, model.family)


def _loo_tree(model: "Lmer") -> xr.DataTree:
    """Posterior and pointwise log-likelihood (variable ``y``, dims chain, draw, obs) for ArviZ.

    A model whose ``idata`` has no ``log_likelihood`` group gets one, computed from the posterior.
    The ``obs`` dimension gets integer coordinates (ArviZ's refit functions select by coordinate).
    """
    idata = model.idata
    log_lik = xr.Dataset({"y": model.log_likelihood()})
    if log_lik.sizes["obs"] != model.design.n_obs:
        raise DataError(
            f"the log-likelihood of {model.formula!r} has {log_lik.sizes['obs']} observations but the "
            f"model has {model.design.n_obs}; refit the model with .fit()"
        )
    log_lik = log_lik.assign_coords(obs=np.arange(model.design.n_obs))
    return xr.DataTree.from_dict({"posterior": idata["posterior"].to_dataset(), "log_likelihood": log_lik})


# ============================================================================== PSIS-LOO and WAIC
def loo(
    model: "Lmer", reloo: bool = False, warn: bool = True, random_seed: int | None = None, **sampler_options: Any
) -> Any:
    """PSIS-LOO cross-validation of one fitted model.

    Parameters
    ----------
    model : Lmer
        A fitted model; its pointwise log-likelihood is computed if its ``idata`` lacks one.
    reloo : bool
        Refit the model without each observation whose Pareto k exceeds :data:`K_THRESHOLD` and
        use the exact leave-one-out density for it (one refit per flagged observation, the model
        compiled once).
    warn : bool
        Emit a :class:`ParetoKWarning` when observations keep a Pareto k above the threshold.
    random_seed : int, optional
        Seed of the refits (default: the fit's seed).
    **sampler_options
        For refits: ``draws``, ``tune``, ``chains`` (default: the fit's), ``nutpie.sample``
        options such as ``target_accept``, and where they run: ``client=``, ``workers=`` (see
        :func:`bayeslmm.engines.executor.run_tasks`; every local core by default).

    Returns
    -------
    arviz_stats.ELPDDataLOO
        ``elpd`` (elpd_loo), ``se``, ``p`` (p_loo), pointwise ``elpd_i`` and ``pareto_k`` (obs dim).
        Refitted observations have ``pareto_k`` 0.

    Raises
    ------
    NotFittedError
        The model is not fitted.
    """
    _require_fitted(model, "loo")
    result = _model_loo(model, reloo, random_seed, sampler_options)
    if warn and _n_high_k(result):
        warnings.warn(_high_k_message({model.formula: _n_high_k(result)}, call="loo"), ParetoKWarning, stacklevel=2)
    return result


def _psis_loo(tree: xr.DataTree) -> Any:
    with warnings.catch_warnings():
        # replaced by ParetoKWarning, which says how many points and what to do
        warnings.filterwarnings("ignore", message=_ARVIZ_K_WARNING)
        return az.loo(tree, pointwise=True, var_name="y")


def n_high_k(result: Any) -> int:
    """Number of observations whose Pareto k exceeds :data:`K_THRESHOLD` in a PSIS-LOO result (0 for K-fold)."""
    return _n_high_k(result)


def _n_high_k(result: Any) -> int:
    if getattr(result, "pareto_k", None) is None:
        return 0
    return int(np.sum(np.asarray(result.pareto_k) > K_THRESHOLD))


def _high_k_message(counts: dict[str, int], call: str) -> str:
    """Warning text: how many observations of which model, and the two built-in remedies.

    ``call`` is ``"lrt"`` (remedies as lrt arguments) or ``"loo"`` (as per-model calls).
    """
    counts = {formula: n for formula, n in counts.items() if n}
    which = " and ".join(f"{n} observation{'s' if n > 1 else ''} of {formula!r}" for formula, n in counts.items())
    total = sum(counts.values())
    refits = f"{total} refit{'s' if total > 1 else ''}, no recompilation"
    if call == "lrt":
        remedies = f"lrt(..., reloo=True) refits each model without each of them ({refits}); lrt(..., kfold=10)"
    else:
        remedies = f"loo(reloo=True) refits the model without each of them ({refits}); kfold(k=10)"
    return (
        f"PSIS-LOO is unreliable for {which} (Pareto k > {K_THRESHOLD}): without such an observation the "
        "posterior differs too much from the full one for importance sampling, so its leave-one-out "
        "density, and elpd, may be biased (often in favour of the more flexible model). Two remedies: "
        f"{remedies} uses 10-fold cross-validation instead (10 refits per model)"
    )


@dataclass(kw_only=True, repr=False)
class ELPDDataWAIC(ELPDData):
    """WAIC results: ``elpd`` (elpd_waic), ``se``, ``p`` (p_waic), pointwise ``elpd_i`` and ``p_waic_i``.

    ``waic`` is ``-2 * elpd`` (deviance scale, comparable with AIC and looic).
    """

    _kind: ClassVar[str] = "waic"
    p_waic_i: xr.DataArray = None

    @property
    def waic(self) -> float:
        """WAIC on the deviance scale, ``-2 elpd_waic``."""
        return -2.0 * self.elpd

    def _footer(self) -> str:
        footer = f"\nwaic (deviance scale, -2 elpd_waic): {self.waic:.2f}"
        if self.warning:
            n_high = int(np.sum(np.asarray(self.p_waic_i) > P_WAIC_THRESHOLD))
            footer += f"\n\n{n_high} observations have p_waic > {P_WAIC_THRESHOLD}: WAIC is unreliable; use loo()."
        return footer


def waic(model: "Lmer", warn: bool = True) -> ELPDDataWAIC:
    """Widely applicable information criterion (Watanabe 2010) of one fitted model.

    ``elpd_waic = sum_i [log mean_s p(y_i | theta_s) - var_s log p(y_i | theta_s)]``; its SE is
    ``sqrt(n var_i(elpd_waic_i))``. ArviZ 1.x no longer provides WAIC, so it is computed here from the
    pointwise log-likelihood. PSIS-LOO (:func:`loo`) is more reliable and has a diagnostic; use WAIC
    only to compare with software that reports it.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    warn : bool
        Warn when some observation has ``p_waic_i > 0.4``, where WAIC is known to be unreliable.

    Returns
    -------
    ELPDDataWAIC
    """
    _require_fitted(model, "waic")
    log_lik = _loo_tree(model)["log_likelihood"]["y"]
    values = np.asarray(log_lik.transpose("chain", "draw", "obs").values).reshape(-1, log_lik.sizes["obs"])
    n_samples, n_obs = values.shape
    lppd_i = logsumexp(values, axis=0) - np.log(n_samples)
    p_waic_i = values.var(axis=0, ddof=1)
    elpd_i = lppd_i - p_waic_i
    coords = {"obs": log_lik["obs"].values}
    high = int(np.sum(p_waic_i > P_WAIC_THRESHOLD))
    if warn and high:
        warnings.warn(
            f"WAIC of {model.formula!r} is unreliable: {high} observations have p_waic > "
            f"{P_WAIC_THRESHOLD}; use loo(model) instead",
            UserWarning,
            stacklevel=2,
        )
    return ELPDDataWAIC(
        elpd=float(elpd_i.sum()),
        se=float(np.sqrt(n_obs * elpd_i.var(ddof=1))),
        p=float(p_waic_i.sum()),
        n_samples=n_samples,
        n_data_points=n_obs,
        scale="log",
        warning=bool(high),
        good_k=None,
        elpd_i=xr.DataArray(elpd_i, dims="obs", coords=coords),
        p_waic_i=xr.DataArray(p_waic_i, dims="obs", coords=coords),
    )


# ============================================================================== refits
class _Refitter:
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


def _compiled_refit(shared: tuple["_Refitter", dict], held_out: np.ndarray, seed: int) -> tuple[xr.Dataset, int, float]:
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


def _refitter(model: "Lmer") -> _Refitter:
    """The model's refitter, made on first use and kept with the model (see ``FittedModel.resource``)."""
    return model.resource("refitter", lambda: _Refitter(model))


def _fit_settings(model: "Lmer") -> dict[str, Any]:
    """Draws, tuning steps, chains and seed of the model's fit (from its draws when unrecorded)."""
    sampler = getattr(model, "sampler", None)
    if sampler is not None:
        return {"draws": sampler.draws, "tune": sampler.tune, "chains": sampler.chains, "random_seed": sampler.random_seed}
    sizes = model.idata["posterior"].sizes
    return {"draws": int(sizes["draw"]), "tune": 1000, "chains": int(sizes["chain"]), "random_seed": None}


class _RefitWrapper(SamplingWrapper):
    """ArviZ's refit interface (``reloo``, ``loo_kfold``) on top of :class:`_Refitter`.

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
        self.refitter = _refitter(model)
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
        values = _log_likelihood(self.lmer, posterior, rows=excluded_obs)
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


def _reloo(model: "Lmer", result: Any, **settings: Any) -> Any:
    """PSIS-LOO with the flagged observations replaced by exact leave-one-out refits (ArviZ ``reloo``)."""
    tree = _loo_tree(model)
    wrapper = _RefitWrapper(model, tree, settings.pop("random_seed", None), **settings)
    flagged = np.flatnonzero(np.asarray(result.pareto_k).reshape(-1) > K_THRESHOLD)  # ArviZ's order
    wrapper.prefetch([np.array([i]) for i in flagged], "Exact leave-one-out refits")
    refitted = az.reloo(wrapper, loo_orig=result, var_name="y", k_threshold=K_THRESHOLD, pointwise=True)
    refitted.refit_seconds = list(wrapper.seconds)
    refitted.compile_seconds = wrapper.refitter.compile_seconds
    wrapper.warn_divergences("leave-one-out")
    return refitted


def _make_folds(n_obs: int, k: int, random_seed: int | None, groups: np.ndarray | None = None) -> np.ndarray:
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


def kfold(
    model: "Lmer",
    k: int = 10,
    *,
    folds: np.ndarray | None = None,
    group_by: str | None = None,
    random_seed: int | None = None,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    client: Any = None,
    workers: int | None = None,
    **sampler_options: Any,
) -> Any:
    """K-fold cross-validation: refit without each fold, predict the held-out rows.

    The model is compiled once (on first use, then cached for the model's lifetime); each fold
    sets the likelihood weights of its rows to zero and samples again. The predictive density of a
    held-out row is ``log mean_s p(y_i | theta_s)`` over the fold's posterior draws.

    Parameters
    ----------
    model : Lmer
        A fitted model (its sampler settings are the defaults of the refits).
    k : int
        Number of folds.
    folds : array of int, optional
        Fold of every row (any labels); overrides ``k`` and ``group_by``. Pass the same folds to
        every model you compare.
    group_by : str, optional
        A column of the data (e.g. ``"Subject"``): whole groups are held out together, which
        estimates the accuracy for new groups rather than new observations of known groups.
    random_seed : int, optional
        Seeds the random folds and the refits; the same seed gives the same folds for every model
        fitted to the same data.
    draws, tune, chains : int, optional
        Sampler settings of each refit; by default those of the model's fit.
    client, workers
        Where the refits run (see :func:`bayeslmm.engines.executor.run_tasks`): every local core by
        default, or a Dask cluster. Models outside the collapsed sampler are refitted in this process.
        Each refit has its own seed, so the result does not depend on where it ran.
    **sampler_options
        Passed to ``nutpie.sample``, e.g. ``target_accept=0.95``.

    Returns
    -------
    arviz_stats.ELPDDataLOOKFold
        ``elpd`` (elpd_kfold), ``se``, ``p`` (p_kfold), pointwise ``elpd_i``; plus
        ``compile_seconds`` and ``fold_seconds`` (wall time of each refit).

    Raises
    ------
    NotFittedError
        The model is not fitted.
    ValueError
        Bad ``k``, ``folds`` or ``group_by``.
    """
    _require_fitted(model, "kfold")
    folds = _resolve_folds(model.design, k, folds, group_by, random_seed)
    return _kfold(
        model, folds, random_seed, draws=draws, tune=tune, chains=chains, client=client, workers=workers,
        **sampler_options,
    )


def _kfold(model: "Lmer", folds: np.ndarray, random_seed: int | None, **settings: Any) -> Any:
    """K-fold cross-validation with given folds (ArviZ ``loo_kfold`` on the compiled weighted model)."""
    tree = _loo_tree(model)
    wrapper = _RefitWrapper(model, tree, random_seed, **settings)
    labels = np.unique(folds)  # ArviZ numbers the folds in this order and refits them in turn
    wrapper.prefetch([np.flatnonzero(folds == label) for label in labels], f"{len(labels)}-fold cross-validation")
    result = az.loo_kfold(tree, wrapper, pointwise=True, var_name="y", folds=folds)
    result.compile_seconds = wrapper.refitter.compile_seconds
    result.fold_seconds = list(wrapper.seconds)
    wrapper.warn_divergences("K-fold")
    return result


def _resolve_folds(
    design: Design, k: int, folds: np.ndarray | None, group_by: str | None, random_seed: int | None
) -> np.ndarray:
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
    return _make_folds(design.n_obs, int(k), random_seed, groups)


# ============================================================================== R-squared
def r2(model: "Lmer", prob: float = 0.95) -> pd.DataFrame:
    """Bayesian R-squared (Gelman, Goodrich, Gabry & Vehtari 2019), marginal and conditional.

    For every posterior draw ``s``, with ``mu_s`` the expected responses of the rows and ``y`` the data,
    ``R2_s = var(mu_s) / (var(mu_s) + var(y - mu_s))`` (variances over rows), as brms's ``bayes_R2``.
    *Conditional* uses the expected responses with the group effects; *marginal* the fixed effects
    only (brms's ``bayes_R2(re_formula = NA)``), so its residual variance includes the group effects.

    For generalized linear mixed models this is the same definition on the response scale, as brms's
    (not Nakagawa & Schielzeth's R2 with a distribution-specific variance on the link scale): ``y`` is the
    response as the family encodes it (the number of successes for binomial models, counts for counts)
    and ``mu_s`` its expected value under draw ``s`` (trials x probability, or the mean count), offsets
    included. A binary response's residual variance is large, so such R2 values are low by
    construction.

    Parameters
    ----------
    model : Lmer
        A fitted model.
    prob : float
        Probability of the equal-tailed interval.

    Returns
    -------
    pandas.DataFrame
        Rows ``marginal`` and ``conditional``; columns ``Estimate`` (posterior mean), the interval
        bounds (e.g. ``2.5_ci``, ``97.5_ci``) and ``SE`` (posterior SD).
    """
    _require_fitted(model, "r2")
    posterior = model.posterior
    design, family = model.design, model.family
    chains, draws = posterior.sizes["chain"], posterior.sizes["draw"]
    total = chains * draws
    beta = summaries.stack_draws(posterior, "beta").reshape(total, -1)
    trials = 1.0 if design.trials is None else design.trials
    values = np.empty((total, 2))
    for start in range(0, total, _DRAW_CHUNK):
        part = slice(start, min(start + _DRAW_CHUNK, total))
        marginal = design.linear_predictor(beta[part])
        conditional = posterior_eval.linear_predictor(design, posterior, part)
        values[part, 0] = _r2_draws(design.y, trials * family.inverse_link(marginal))
        values[part, 1] = _r2_draws(design.y, trials * family.inverse_link(conditional))
    index = pd.Index(["marginal", "conditional"], name="R2")
    table = summaries.summarize(values.reshape(chains, draws, 2), index, prob=prob, diagnostics=False)
    return table.drop(columns="pd")


def _r2_draws(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``var(mu) / (var(mu) + var(y - mu))`` per draw (row of ``mu``)."""
    var_fit = mu.var(axis=1, ddof=1)
    var_res = (y - mu).var(axis=1, ddof=1)
    return var_fit / (var_fit + var_res)


# ============================================================================== comparison
def n_parameters(model: "Lmer") -> int:
    """Number of parameters, counted as lme4's ``npar`` (``Df`` of ``anova``).

    Fixed effects, plus per random-effects block with ``k`` terms ``k`` standard deviations and
    ``k (k - 1) / 2`` correlations, plus the family's auxiliary parameters (``sigma``). Group
    effects themselves are not counted; ``p_loo`` measures how much they add in effect.
    """
    count = len(model.design.fixed_terms) + len(model.family.aux)
    for block in model.design.blocks:
        count += block.n_terms + block.n_terms * (block.n_terms - 1) // 2
    return count


_CRITERIA = {
    "loo": ("elpd_loo", "p_loo", "looic", "PSIS-LOO cross-validation"),
    "reloo": ("elpd_loo", "p_loo", "looic", "PSIS-LOO cross-validation, exact refits where Pareto k > 0.7"),
    "kfold": ("elpd_kfold", "p_kfold", "kfoldic", "{k}-fold cross-validation"),
}


def lrt(
    *models: "Lmer",
    kfold: int | None = None,
    reloo: bool = False,
    names: list[str] | None = None,
    random_seed: int | None = None,
    method: str = "stacking",
    refit: bool = True,
    **sampler_options: Any,
) -> "ModelComparison":
    """Compare fitted models by expected log predictive density (PSIS-LOO), and by lme4's likelihood-ratio test.

    Parameters
    ----------
    *models : Lmer
        Two or more fitted models, or one list of them, fitted to the same observations. They need
        not be nested. The order does not matter.
    kfold : int, optional
        Use K-fold cross-validation with this many folds (the same folds for every model) instead of
        PSIS-LOO; each model is compiled once and refitted ``kfold`` times.
    reloo : bool
        Replace the PSIS estimate of every observation with Pareto k > 0.7 by an exact refit
        without it (one refit per flagged observation and model, no recompilation).
    names : list of str, optional
        Row labels; the formulas by default.
    random_seed : int, optional
        Seed of the K-fold split and of the refits.
    method : str
        How ArviZ computes the model weights: ``"stacking"`` (default), ``"bb-pseudo-bma"`` or
        ``"pseudo-bma"``.
    refit : bool
        Add lme4's ``anova(..., refit = TRUE)`` columns from maximum-likelihood fits (``Lmer`` models of
        one family and link; ML for gaussian models, glmer's Laplace fit for the others; computed once
        per model): ``AIC``, ``BIC``, ``logLik``, ``deviance``, and
        for each row nested in the row above ``Chisq`` (twice the gain in log-likelihood, at least 0),
        ``Df`` (the difference in ``npar``) and ``P-val`` (chi-square). A model is *nested* in the one
        above when it has fewer parameters, its fixed-effect columns lie in the span of the other's,
        and each of its random-effects blocks lies within one block of the other on the same grouping
        factor (so its covariance structure is a special case); lme4 does not check nesting and tests
        every consecutive pair, here the other pairs get no test.
    **sampler_options
        For refits: ``draws``, ``tune``, ``chains`` (default: each model's own), options of
        ``nutpie.sample`` such as ``target_accept``, and where they run: ``client=``, ``workers=``
        (see :func:`bayeslmm.engines.executor.run_tasks`; every local core by default).

    Returns
    -------
    ModelComparison
        A DataFrame, one row per model ordered by number of parameters (as ``lrt``/``anova``):
        ``formula``, ``npar``, ``elpd_loo``, ``SE``, ``p_loo``, ``looic``, ``elpd_diff`` and ``SE_diff``
        (against the best model), stacking ``weight``, ``n_high_k`` (observations with Pareto k >
        0.7) and ``best``. With ``kfold`` the criterion columns are ``elpd_kfold``, ``p_kfold``,
        ``kfoldic`` and ``n_high_k`` is missing. With ``refit``: ``AIC``, ``BIC``, ``logLik``,
        ``deviance``, ``Chisq``, ``Df``, ``P-val`` before ``best``. Printing gives an lrt-like table
        whose footer says how the two kinds of answer relate.

    Raises
    ------
    ValueError
        Fewer than two models, or both ``kfold`` and ``reloo``.
    NotFittedError
        A model is not fitted.
    DataError
        Models fitted to different data (rows, response or number of observations).

    Warns
    -----
    ParetoKWarning
        Some observations have Pareto k > 0.7 (PSIS-LOO only); says how many and what to do.
    """
    models = _collect_models(models, "lrt")
    if kfold is not None and reloo:
        raise ValueError("choose one of kfold= and reloo=True: K-fold already refits every observation")
    labels = _labels(models, names)
    if kfold is not None:
        criterion = "kfold"
        folds = _resolve_folds(models[0].design, kfold, None, None, random_seed)
        elpds = [_kfold(m, folds, random_seed, **sampler_options) for m in models]
    else:
        criterion = "reloo" if reloo else "loo"
        elpds = [_model_loo(m, reloo, random_seed, sampler_options) for m in models]
    counts = {m.formula: _n_high_k(e) for m, e in zip(models, elpds)}
    notes = []
    if criterion != "kfold" and any(counts.values()):
        message = _high_k_message(counts, call="lrt")
        warnings.warn(message, ParetoKWarning, stacklevel=2)
        notes.append(message)
    table = _comparison_table(models, labels, elpds, criterion, method)
    if refit and all(hasattr(m, "fit_frequentist") for m in models) and len({m.family for m in models}) == 1:
        table = _likelihood_ratio_tests(table, dict(zip(labels, models)))
    return ModelComparison.build(table, criterion, dict(zip(labels, elpds)), notes, kfold)


def compare(*models: "Lmer", **options: Any) -> "ModelComparison":
    """Same as :func:`lrt` (pymer4 0.9's name for model comparison)."""
    return lrt(*models, **options)


def _model_loo(model: "Lmer", reloo: bool, random_seed: int | None, sampler_options: dict) -> Any:
    result = _psis_loo(_loo_tree(model))
    if reloo and _n_high_k(result):
        result = _reloo(model, result, random_seed=random_seed, **sampler_options)
    return result


def _labels(models: list["Lmer"], names: list[str] | None) -> list[str]:
    if names is not None:
        names = [str(name) for name in names]
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(models)} distinct labels, one per model, got {names}")
        return names
    labels, seen = [], {}
    for model in models:
        seen[model.formula] = seen.get(model.formula, 0) + 1
        labels.append(model.formula if seen[model.formula] == 1 else f"{model.formula} [{seen[model.formula]}]")
    return labels


def _comparison_table(models: list["Lmer"], labels: list[str], elpds: list, criterion: str, method: str) -> pd.DataFrame:
    """The numbers: ArviZ's compare for differences and weights, ordered by complexity."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ARVIZ_K_WARNING)
        arviz_table = az.compare(dict(zip(labels, elpds)), method=method, round_to="none")
    elpd_col, p_col, ic_col, _ = _CRITERIA[criterion]
    table = pd.DataFrame(
        {
            "formula": [m.formula for m in models],
            "npar": [n_parameters(m) for m in models],
            elpd_col: [e.elpd for e in elpds],
            "SE": [e.se for e in elpds],
            p_col: [e.p for e in elpds],
            ic_col: [-2.0 * e.elpd for e in elpds],
            "elpd_diff": arviz_table.loc[labels, "elpd_diff"].to_numpy(dtype=float),
            "SE_diff": arviz_table.loc[labels, "dse"].to_numpy(dtype=float),
            "weight": arviz_table.loc[labels, "weight"].to_numpy(dtype=float),
            "n_high_k": pd.array(
                [pd.NA if criterion == "kfold" else _n_high_k(e) for e in elpds], dtype="Int64"
            ),
        },
        index=pd.Index(labels, name="model"),
    )
    table["best"] = table.index == arviz_table.index[arviz_table["rank"] == 0][0]
    order = sorted(range(len(models)), key=lambda i: (table["npar"].iloc[i], table["formula"].iloc[i], -table[elpd_col].iloc[i]))
    return table.iloc[order]


def _likelihood_ratio_tests(table: pd.DataFrame, models: dict[str, "Lmer"]) -> pd.DataFrame:
    """lme4's ``anova`` columns from ML refits, with a test of each row against the row above when nested."""
    from scipy import stats

    fits = {label: models[label].fit_frequentist(REML=False) for label in table.index}
    classical = pd.DataFrame(
        {
            "AIC": [fits[label].AIC for label in table.index],
            "BIC": [fits[label].BIC for label in table.index],
            "logLik": [fits[label].logLike for label in table.index],
            "deviance": [fits[label].deviance for label in table.index],
        },
        index=table.index,
    )
    chisq, df, p = [np.nan], [pd.NA], [np.nan]
    labels = list(table.index)
    for above, label in zip(labels, labels[1:]):
        extra = int(table.loc[label, "npar"] - table.loc[above, "npar"])
        if extra > 0 and nested(models[above].design, models[label].design):
            value = 2.0 * max(0.0, fits[label].logLike - fits[above].logLike)
            chisq.append(value)
            df.append(extra)
            p.append(float(stats.chi2.sf(value, extra)))
        else:
            chisq.append(np.nan)
            df.append(pd.NA)
            p.append(np.nan)
    classical["Chisq"] = chisq
    classical["Df"] = pd.array(df, dtype="Int64")
    classical["P-val"] = p
    best = table.pop("best")
    return table.join(classical).assign(best=best)


def nested(smaller: Design, larger: Design) -> bool:
    """Whether the model of ``smaller`` is a special case of that of ``larger`` (same rows assumed).

    True when the fixed-effect columns of ``smaller`` lie in the span of those of ``larger`` and each
    random-effects block of ``smaller`` lies within one block of ``larger`` on the same grouping
    factor (its columns in the span of that block's columns).
    """
    if not _in_span(smaller.X, larger.X):
        return False
    for block in smaller.blocks:
        candidates = [other for other in larger.blocks if other.factor == block.factor]
        if not any(_in_span(block.Z, other.Z) for other in candidates):
            return False
    return True


def _in_span(columns: np.ndarray, basis: np.ndarray) -> bool:
    if columns.shape[1] == 0:
        return True
    if basis.shape[1] == 0:
        return False
    coefficients, *_ = np.linalg.lstsq(basis, columns, rcond=None)
    residual = columns - basis @ coefficients
    return bool(np.all(np.linalg.norm(residual, axis=0) <= 1e-8 * np.maximum(np.linalg.norm(columns, axis=0), 1.0)))


class ModelComparison(pd.DataFrame):
    """Result of :func:`lrt`/:func:`compare`: a DataFrame with one row per model and an lrt-like print.

    Attributes
    ----------
    criterion : str
        ``"loo"``, ``"reloo"`` (PSIS-LOO with exact refits) or ``"kfold"``.
    elpd_results : dict
        The ArviZ ELPD object of each model, keyed by row label (pointwise values included).
    notes : list of str
        Warnings raised while comparing (high Pareto k).
    """

    _metadata: ClassVar[list[str]] = ["criterion", "elpd_results", "notes", "n_folds"]

    @property
    def _constructor(self):
        # derived frames (slices, arithmetic) are plain DataFrames: the print below needs every column
        return pd.DataFrame

    @classmethod
    def build(cls, table: pd.DataFrame, criterion: str, elpd_results: dict, notes: list[str], n_folds: int | None) -> "ModelComparison":
        result = cls(table)
        result.criterion = criterion
        result.elpd_results = elpd_results
        result.notes = notes
        result.n_folds = n_folds
        return result

    @property
    def table(self) -> pd.DataFrame:
        """The numbers as a plain DataFrame."""
        return pd.DataFrame(self)

    def _title(self) -> str:
        description = _CRITERIA[self.criterion][3].format(k=self.n_folds)
        first = next(iter(self.elpd_results.values()))
        return (
            f"Model comparison by {description} (bayeslmm)\n"
            f"Data: {first.n_data_points} observations; higher elpd = better predictions of new observations"
        )

    def _short_labels(self) -> list[str]:
        if list(self.index) == list(self["formula"]):
            return [f"m{i}" for i in range(1, len(self) + 1)]
        return [str(label) for label in self.index]

    def _display_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self).drop(columns=["formula", "best"])
        frame.index = pd.Index(self._short_labels())
        frame = frame.rename(columns={"n_high_k": f"k>{K_THRESHOLD}"})
        if self.criterion == "kfold":
            frame = frame.drop(columns=f"k>{K_THRESHOLD}")
        for column, text in (("Chisq", "{:.2f}".format), ("Df", lambda v: f"{int(v)}"), ("P-val", p_value_format)):
            if column in frame:  # rows without a test print blank
                frame[column] = [("" if pd.isna(value) else text(value)) for value in frame[column]]
        frame[""] = np.where(self["best"].to_numpy(), "<- best", "")
        return frame

    def _footer_lines(self) -> list[str]:
        lines = [
            "elpd_diff: elpd minus the best model's; SE_diff: its standard error (paired over observations).",
            "A difference larger than about 4 and than 2 SE_diff is clear; smaller ones are not.",
        ]
        if "Chisq" in self.columns:
            lines += [
                "AIC ... P-val: lme4's anova(refit = TRUE) of the maximum-likelihood refits; Chisq, Df, P-val test each "
                "model against the row above, where it is nested in it (none otherwise).",
                "The likelihood-ratio test asks whether the extra parameters are exactly 0; elpd_diff asks how much "
                "better the model predicts new observations. A clear elpd gain usually comes with a small P-val, but not "
                "the other way round: with many observations tiny effects are significant yet predict no better, and "
                "P-vals of variance parameters (tested at their boundary, 0) are conservative.",
            ]
        if self.criterion != "kfold" and self["n_high_k"].fillna(0).sum():
            # the full advice is in the ParetoKWarning (and in .notes); the table only points to it
            lines.append(
                f"k>{K_THRESHOLD}: observations whose PSIS-LOO estimate is unreliable; lrt(..., reloo=True) "
                "or lrt(..., kfold=10) replaces it (see the warning)"
            )
        return lines

    def summary_parts(self) -> SummaryParts:
        """The printed form as :class:`~bayeslmm.results.report.SummaryParts`: title, models, table, how to read it."""
        formats = {"npar": "{:d}".format, "weight": "{:.2f}".format}
        frame = self._display_frame()
        formats |= {
            c: "{:.1f}".format for c in frame.columns if c not in formats and c not in ("", f"k>{K_THRESHOLD}", "Chisq", "Df", "P-val")
        }
        formats |= {c: "{:.2f}".format for c in ("AIC", "BIC", "logLik", "deviance") if c in frame.columns}
        models = [f"{label}: {formula}" for label, formula in zip(self._short_labels(), self["formula"])]
        header = self._title().split("\n") + ["Models:", *models]
        return SummaryParts(header, [("", frame)], footer=self._footer_lines(), formats=formats)

    def to_text(self) -> str:
        """The printed form: title, model list, table, how to read it."""
        return layout_text(self.summary_parts())

    def __repr__(self) -> str:
        return self.to_text()

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, ax=None):
        """elpd with SE bars per model; see :func:`bayeslmm.plots.plot_compare`."""
        from bayeslmm.plots import plot_compare

        return plot_compare(self, ax=ax)

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())
