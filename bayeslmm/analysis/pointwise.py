"""Pointwise log-likelihood of a fitted model, and what PSIS-LOO says about it.

The shared ground of :mod:`~bayeslmm.analysis.comparison` (LOO, ``lrt``), :mod:`~bayeslmm.analysis.waic`
and :mod:`~bayeslmm.analysis.refits` (exact refits, K-fold). ArviZ takes about a second to import, so
it is imported by the function that first needs it, not here.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from bayeslmm.errors import DataError, NotFittedError
from bayeslmm.results import posterior as posterior_eval

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel as Lmer

__all__ = ["K_THRESHOLD", "high_k_message", "log_likelihood", "loo_tree", "n_high_k", "psis_loo", "require_fitted"]

#: Pareto k above which the PSIS estimate of an observation's leave-one-out density is unreliable.
K_THRESHOLD = 0.7
#: The start of ArviZ's own high-k warning, replaced by :class:`~bayeslmm.errors.ParetoKWarning`.
ARVIZ_K_WARNING = "Estimated shape parameter of Pareto distribution"


def require_fitted(model: Any, what: str) -> None:
    """Refuse anything but a fitted model: ``what`` names the calling function in the message."""
    if not hasattr(model, "design") or not hasattr(model, "idata"):
        raise TypeError(f"{what} needs a bayeslmm.Lmer model, got {type(model).__name__}")
    if model.idata is None:
        raise NotFittedError(
            f"{what}: model {model.formula!r} is not fitted; call .fit() on it first"
        )


def log_likelihood(model: "Lmer", posterior: xr.Dataset, rows: np.ndarray) -> np.ndarray:
    """Pointwise log-likelihood of ``rows`` under ``posterior``, shape (chain, draw, len(rows))."""
    return posterior_eval.pointwise_log_likelihood(model.design.subset(rows), posterior, model.family)


def loo_tree(model: "Lmer") -> xr.DataTree:
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


def psis_loo(tree: xr.DataTree) -> Any:
    """ArviZ's PSIS-LOO of :func:`loo_tree`'s tree (``arviz_stats.ELPDDataLOO``, pointwise), its Pareto-k warning silenced."""
    import arviz as az  # a second to import: only when asked for

    with warnings.catch_warnings():
        # replaced by ParetoKWarning, which says how many points and what to do
        warnings.filterwarnings("ignore", message=ARVIZ_K_WARNING)
        return az.loo(tree, pointwise=True, var_name="y")


def n_high_k(result: Any) -> int:
    """Number of observations whose Pareto k exceeds :data:`K_THRESHOLD` in a PSIS-LOO result (0 for K-fold)."""
    if getattr(result, "pareto_k", None) is None:
        return 0
    return int(np.sum(np.asarray(result.pareto_k) > K_THRESHOLD))


def high_k_message(counts: dict[str, int], call: str) -> str:
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
