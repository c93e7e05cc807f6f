"""Inference: run NUTS on a PyMC model and check the result.

nutpie is used when it is installed (it is a dependency, so normally always); PyMC's own NUTS is the
fallback. After sampling, :func:`check_diagnostics` turns divergences, R-hat above 1.01 and bulk ESS
below 400 into messages that say what happened and what to try -- the Bayesian counterpart of lme4's
convergence and singular-fit messages.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr

__all__ = [
    "SamplerSettings",
    "sample",
    "check_diagnostics",
    "auto_progressbar",
    "resolve_progressbar",
    "RHAT_MAX",
    "ESS_MIN",
    "check_sampler_arguments",
]

RHAT_MAX = 1.01
ESS_MIN = 400


@dataclass(frozen=True)
class SamplerSettings:
    """How a posterior was obtained: sampler, draws and chains, seed, wall time in seconds."""

    sampler: str
    draws: int
    tune: int
    chains: int
    random_seed: int | None
    seconds: float

    def __str__(self) -> str:
        # NUTS runs through nutpie or PyMC; the large-model path names its own algorithm
        method = self.sampler if self.sampler.startswith("independence MH") else f"NUTS ({self.sampler})"
        return (
            f"{method}, {self.chains} chains x {self.draws} draws after {self.tune} tuning "
            f"steps, {self.seconds:.{1 if self.seconds >= 1 else 2}f} s"
        )


def auto_progressbar(env: Mapping[str, str], stderr_is_tty: bool, in_jupyter: bool) -> bool:
    """Whether to show a progress bar when the caller did not say: the rule behind ``progressbar=None``.

    Off under continuous integration (``CI`` set to anything but ``""``, ``"0"``, ``"false"``,
    ``"no"``), where a bar only fills the log with redraws; otherwise on in a Jupyter kernel or when
    standard error is a terminal, and off when output goes to a file or a pipe.

    Parameters
    ----------
    env : mapping
        Environment variables (``os.environ``).
    stderr_is_tty : bool
        Whether standard error is a terminal.
    in_jupyter : bool
        Whether the code runs in a Jupyter (IPython) kernel.

    Examples
    --------
    >>> auto_progressbar({"CI": "true"}, stderr_is_tty=True, in_jupyter=False)
    False
    >>> auto_progressbar({}, stderr_is_tty=False, in_jupyter=True)
    True
    """
    if env.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return bool(stderr_is_tty or in_jupyter)


def resolve_progressbar(progressbar: bool | None) -> bool:
    """``progressbar`` itself when given, else :func:`auto_progressbar` for this process."""
    if progressbar is not None:
        return bool(progressbar)
    return auto_progressbar(os.environ, _stderr_is_tty(), _in_jupyter())


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _in_jupyter() -> bool:
    # only look at IPython if it is already imported: importing it here would cost a second
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def check_sampler_arguments(draws: int, tune: int, chains: int) -> None:
    """Raise ValueError unless draws and chains are positive integers and tune a non-negative one."""
    for name, value in {"draws": draws, "tune": tune, "chains": chains}.items():
        if not isinstance(value, int | np.integer) or value < (0 if name == "tune" else 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def default_sampler() -> str:
    """``"nutpie"`` when importable, else ``"pymc"``."""
    return "nutpie" if importlib.util.find_spec("nutpie") else "pymc"


def sample(
    model: pm.Model,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    keep: list[str],
    progressbar: bool = False,
    **options,
) -> tuple[xr.DataTree, SamplerSettings]:
    """Sample ``model`` with NUTS.

    Parameters
    ----------
    model : pymc.Model
    draws, tune, chains : int
        Kept draws, tuning steps and chains.
    random_seed : int or None
        The same seed gives the same draws.
    keep : list of str
        Posterior variables to keep; internal ones (non-centred ``z``, centred ``beta``) are dropped.
    progressbar : bool
    **options
        Passed to :func:`pymc.sample` (e.g. ``target_accept``, ``nuts_sampler``).

    Returns
    -------
    idata : xarray.DataTree
        With ``posterior`` (only ``keep``), ``sample_stats`` and ``observed_data`` groups.
    settings : SamplerSettings
    """
    options.setdefault("nuts_sampler", default_sampler())
    start = time.perf_counter()
    with warnings.catch_warnings():
        # PyTensor's advice about BLAS concerns its C backend; nutpie compiles with numba instead
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        idata = pm.sample(
            model=model,
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=random_seed,
            progressbar=progressbar,
            compute_convergence_checks=False,
            **options,
        )
    seconds = time.perf_counter() - start
    posterior = idata["posterior"].to_dataset()[keep]
    tree = xr.DataTree.from_dict(
        {
            "posterior": posterior,
            "sample_stats": idata["sample_stats"].to_dataset(),
            "observed_data": idata["observed_data"].to_dataset(),
        }
    )
    settings = SamplerSettings(
        sampler=options["nuts_sampler"], draws=draws, tune=tune, chains=chains, random_seed=random_seed, seconds=seconds
    )
    return tree, settings


def check_diagnostics(idata: xr.DataTree, var_names: list[str]) -> list[str]:
    """Messages about divergences, R-hat and bulk ESS of ``var_names``; empty when all is well."""
    messages = []
    stats = idata["sample_stats"].to_dataset()
    n_draws = stats.sizes["chain"] * stats.sizes["draw"]
    if "diverging" in stats:
        n_divergent = int(stats["diverging"].sum())
        if n_divergent:
            messages.append(
                f"{n_divergent} of {n_draws} draws ended in a divergent transition: the posterior may "
                "be biased. Try fit(target_accept=0.95); if they persist, a variance is probably near "
                "zero (the Bayesian sign of lme4's singular fit): simplify the random effects, e.g. "
                "drop a correlation with '||' or a slope"
            )
    posterior = _without_unit_diagonals(idata["posterior"].to_dataset()[var_names])
    with warnings.catch_warnings():
        # the blanked diagonals give NaN R-hat and ESS, with a RuntimeWarning
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(posterior) if stats.sizes["chain"] > 1 else None
        ess = az.ess(posterior, method="bulk")
    if rhat is not None:
        worst = _worst(rhat, largest=True)
        if worst is not None and worst[1] > RHAT_MAX:
            messages.append(
                f"R-hat of {worst[0]} is {worst[1]:.4f} (> {RHAT_MAX}): the chains disagree. "
                "Run more tuning and draws, e.g. fit(tune=2000, draws=2000)"
            )
    lowest = _worst(ess, largest=False)
    if lowest is not None and lowest[1] < ESS_MIN:
        messages.append(
            f"bulk effective sample size of {lowest[0]} is {lowest[1]:.0f} (< {ESS_MIN}): intervals "
            "and means are imprecise. Draw more, e.g. fit(draws=2000), or use more chains"
        )
    return messages


def _without_unit_diagonals(posterior: xr.Dataset) -> xr.Dataset:
    """Blank the diagonals of correlation matrices: they are 1 by definition, so not diagnosable."""
    posterior = posterior.copy()
    for name in posterior.data_vars:
        if str(name).startswith("corr_"):
            k = posterior[name].shape[-1]
            off_diagonal = xr.DataArray(~np.eye(k, dtype=bool), dims=posterior[name].dims[-2:])
            posterior[name] = posterior[name].where(off_diagonal)
    return posterior


def _worst(statistic, largest: bool) -> tuple[str, float] | None:
    """The variable (with its coordinate) whose diagnostic is worst, and its value."""
    best_name, best_value = None, None
    for name, values in statistic.data_vars.items():
        array = np.asarray(values)
        if array.size == 0 or np.all(np.isnan(array)):
            continue
        flat = np.nanargmax(array) if largest else np.nanargmin(array)
        value = float(array.reshape(-1)[flat])
        if best_value is None or (value > best_value if largest else value < best_value):
            label = name
            if array.ndim:
                index = np.unravel_index(flat, array.shape)
                coords = [str(values[dim].values[i]) for dim, i in zip(values.dims, index) if dim in values.coords]
                label = f"{name}[{', '.join(coords)}]"
            best_name, best_value = label, value
    return None if best_name is None else (best_name, best_value)
