"""Convergence diagnostics of MCMC draws: R-hat, effective sample sizes, and the fit's warnings.

R-hat and ESS are the rank-normalised split statistics of Vehtari, Gelman, Simpson, Carpenter and
Bürkner (2021), "Rank-normalization, folding, and localization: an improved R-hat", computed exactly
as ArviZ computes them (``arviz_stats``; the tests check agreement to 1e-10). They are written here
in NumPy rather than called from ArviZ for start-up time alone: importing ``arviz_stats`` costs about
0.7 s (it loads ``scipy.stats`` and the LOO machinery), more than a whole collapsed fit of sleepstudy,
and every fit needs the diagnostics. ArviZ is still what computes LOO, HDIs and plots.

:func:`check_diagnostics` turns divergences, R-hat above 1.01 and bulk ESS below 400 into messages
that say what happened and what to try -- the Bayesian counterpart of lme4's convergence messages.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["RHAT_MAX", "ESS_MIN", "rhat", "ess_bulk", "ess_tail", "check_diagnostics"]

RHAT_MAX = 1.01
ESS_MIN = 400


# ----------------------------------------------------------------------------------------- statistics
def rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat, the larger of the bulk and the folded (tail) versions.

    Parameters
    ----------
    draws : ndarray, shape (chain, draw, ...)

    Returns
    -------
    ndarray, shape draws.shape[2:]
        NaN where it cannot be computed (fewer than 2 chains or 4 draws, or NaN draws).
    """
    return _apply(draws, _rhat_rank)


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """Bulk effective sample size (rank-normalised split chains), shape ``draws.shape[2:]``."""
    return _apply(draws, lambda x: _ess(_z_scale(_split_chains(x))))


def ess_tail(draws: np.ndarray, prob: float = 0.05) -> np.ndarray:
    """Tail effective sample size: the smaller ESS of the ``prob`` and ``1 - prob`` quantiles."""
    return _apply(draws, lambda x: min(_ess_quantile(x, prob), _ess_quantile(x, 1 - prob)))


def _apply(draws: np.ndarray, function) -> np.ndarray:
    draws = np.asarray(draws, dtype=float)
    chains, n_draws = draws.shape[:2]
    flat = draws.reshape(chains, n_draws, -1)
    out = np.empty(flat.shape[2])
    for i in range(flat.shape[2]):
        x = flat[:, :, i]
        out[i] = np.nan if np.isnan(x).any() or n_draws < 4 else function(x)
    return out.reshape(draws.shape[2:])


def _split_chains(x: np.ndarray) -> np.ndarray:
    half = x.shape[1] // 2
    return np.vstack((x[:, :half], x[:, -half:]))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank), as ``scipy.stats.rankdata``."""
    flat = x.reshape(-1)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average = upper - (counts - 1) / 2.0
    return average[inverse].reshape(x.shape)


def _z_scale(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    size = x.size
    return ndtri((_ranks(x) - 3 / 8) / (size - 2 * 3 / 8 + 1))


def _rhat_basic(x: np.ndarray) -> float:
    n = x.shape[1]
    between = n * np.var(x.mean(axis=1), ddof=1)
    within = np.mean(np.var(x, axis=1, ddof=1))
    return float(np.sqrt((between / within + n - 1) / n))


def _rhat_rank(x: np.ndarray) -> float:
    if x.shape[0] < 2:
        return np.nan
    split = _split_chains(x)
    bulk = _rhat_basic(_z_scale(split))
    tail = _rhat_basic(_z_scale(np.abs(split - np.median(split))))
    return max(bulk, tail)


def _autocov(x: np.ndarray) -> np.ndarray:
    n = x.shape[1]
    m = _next_fast_len(2 * n)
    centred = x - x.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=m, axis=1)
    spectrum *= np.conjugate(spectrum)
    return np.fft.irfft(spectrum, n=m, axis=1)[:, :n] / n


def _next_fast_len(target: int) -> int:
    """Smallest 5-smooth number >= target (scipy.fftpack.next_fast_len)."""
    from scipy.fft import next_fast_len

    return next_fast_len(target, real=True)


def _ess(x: np.ndarray) -> float:
    """Effective sample size of a (chain, draw) array by Geyer's initial monotone sequence."""
    x = np.asarray(x, dtype=float)
    if np.max(x) - np.min(x) < np.finfo(float).resolution:
        return float(x.size)
    n_chain, n_draw = x.shape
    acov = _autocov(x)
    chain_mean = x.mean(axis=1)
    mean_var = np.mean(acov[:, 0]) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus += np.var(chain_mean, ddof=1)
    rho = np.zeros(n_draw)
    rho_even = 1.0
    rho[0] = rho_even
    rho_odd = 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho[1] = rho_odd
    t = 1
    while t < n_draw - 3 and rho_even + rho_odd > 0.0:
        rho_even = 1.0 - (mean_var - np.mean(acov[:, t + 1])) / var_plus
        rho_odd = 1.0 - (mean_var - np.mean(acov[:, t + 2])) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1] = rho_even
            rho[t + 2] = rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = (rho[t - 1] + rho[t]) / 2.0
            rho[t + 2] = rho[t + 1]
        t += 2
    total = n_chain * n_draw
    tau = -1.0 + 2.0 * np.sum(rho[: max_t + 1]) + np.sum(rho[max_t + 1 : max_t + 2])
    tau = max(tau, 1 / np.log10(total))
    return float(np.nan if np.isnan(rho).any() else total / tau)


def _ess_quantile(x: np.ndarray, prob: float) -> float:
    indicator = x <= np.quantile(x, prob)
    return _ess(_split_chains(indicator))


# ----------------------------------------------------------------------------------------- messages
def check_diagnostics(idata: xr.DataTree, var_names: list[str]) -> list[str]:
    """Messages about divergences, R-hat and bulk ESS of ``var_names``; empty when all is well."""
    messages = []
    stats = idata["sample_stats"].to_dataset()
    n_chains, n_draws = stats.sizes["chain"], stats.sizes["draw"]
    if "diverging" in stats:
        n_divergent = int(np.count_nonzero(stats["diverging"].values))  # numpy: xarray's sum would import dask
        if n_divergent:
            messages.append(
                f"{n_divergent} of {n_chains * n_draws} draws ended in a divergent transition: the posterior "
                "may be biased. Try fit(target_accept=0.95); if they persist, a variance is probably near "
                "zero (the Bayesian sign of lme4's singular fit): simplify the random effects, e.g. "
                "drop a correlation with '||' or a slope"
            )
    posterior = idata["posterior"].to_dataset()
    worst_rhat, worst_ess = None, None
    for name in var_names:
        values = posterior[name].transpose("chain", "draw", ...)
        draws = _without_unit_diagonal(name, np.asarray(values.values, dtype=float))
        labels = _labels(values)
        if n_chains > 1:
            r = rhat(draws).reshape(-1)
            worst_rhat = _worse(worst_rhat, r, labels, name, largest=True)
        e = ess_bulk(draws).reshape(-1)
        worst_ess = _worse(worst_ess, e, labels, name, largest=False)
    if worst_rhat is not None and worst_rhat[1] > RHAT_MAX:
        messages.append(
            f"R-hat of {worst_rhat[0]} is {worst_rhat[1]:.4f} (> {RHAT_MAX}): the chains disagree. "
            "Run more tuning and draws, e.g. fit(tune=2000, draws=2000)"
        )
    if worst_ess is not None and worst_ess[1] < ESS_MIN:
        messages.append(
            f"bulk effective sample size of {worst_ess[0]} is {worst_ess[1]:.0f} (< {ESS_MIN}): intervals "
            "and means are imprecise. Draw more, e.g. fit(draws=2000), or use more chains"
        )
    return messages


def _without_unit_diagonal(name: str, draws: np.ndarray) -> np.ndarray:
    """Blank the diagonal of a correlation matrix: it is 1 by definition, so not diagnosable."""
    if name.startswith("corr_") and draws.ndim == 4:
        draws = draws.copy()
        k = draws.shape[-1]
        draws[..., np.arange(k), np.arange(k)] = np.nan
    return draws


def _labels(values: xr.DataArray) -> list[str]:
    """``name[coord, ...]`` for every element of a variable, in C order."""
    dims = values.dims[2:]
    if not dims:
        return [str(values.name)]
    grids = np.meshgrid(*[np.asarray(values[d].values) for d in dims], indexing="ij")
    coords = zip(*(g.reshape(-1) for g in grids))
    return [f"{values.name}[{', '.join(map(str, c))}]" for c in coords]


def _worse(current, values: np.ndarray, labels: list[str], name: str, largest: bool):
    if values.size == 0 or np.all(np.isnan(values)):
        return current
    i = int(np.nanargmax(values) if largest else np.nanargmin(values))
    value = float(values[i])
    if current is None or (value > current[1] if largest else value < current[1]):
        return labels[i], value
    return current
