"""WAIC (Watanabe 2010) of a fitted model, from its pointwise log-likelihood.

ArviZ 1.x no longer provides WAIC; the result is an ArviZ ``ELPDData`` so that it prints and compares
like ArviZ's LOO results.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import xarray as xr
from arviz_stats.utils import ELPDData
from scipy.special import logsumexp

from bayeslmm.analysis.pointwise import loo_tree, require_fitted

if TYPE_CHECKING:
    from bayeslmm.results.fitted import FittedModel as Lmer

__all__ = ["ELPDDataWAIC", "P_WAIC_THRESHOLD", "waic"]

#: p_waic of one observation above which WAIC is unreliable (Vehtari, Gelman & Gabry 2017).
P_WAIC_THRESHOLD = 0.4


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
    require_fitted(model, "waic")
    log_lik = loo_tree(model)["log_likelihood"]["y"]
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
