"""What every sampler shares: its settings, the checks of ``fit`` arguments, the progress-bar rule.

:func:`check_fit_arguments` validates ``draws``, ``tune``, ``chains``, ``random_seed`` and the sampler
options before anything is built or compiled, so a typo or an impossible value is a clear error, never
a raw message from nutpie or PyMC.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SamplerSettings",
    "SAMPLER_OPTIONS",
    "check_fit_arguments",
    "check_sampler_arguments",
    "check_random_seed",
    "auto_progressbar",
    "resolve_progressbar",
    "posterior_tree",
]


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
        # NUTS runs through nutpie or PyMC; the other samplers name their own algorithm
        exact = self.sampler.startswith(("independence MH", "exact"))
        method = self.sampler if exact else f"NUTS ({self.sampler})"
        return (
            f"{method}, {self.chains} chains x {self.draws} draws after {self.tune} tuning "
            f"steps, {self.seconds:.{1 if self.seconds >= 1 else 2}f} s"
        )


#: Options ``fit`` passes to the samplers, with what each accepts.
SAMPLER_OPTIONS: dict[str, str] = {
    "target_accept": "a number strictly between 0 and 1 (NUTS's target acceptance rate; default 0.9 for the collapsed sampler, 0.8 otherwise)",
    "cores": "a positive integer (chains run in parallel on this many threads)",
    "maxdepth": "a positive integer (NUTS's maximum tree depth, default 10)",
    "nuts_sampler": "'nutpie' or 'pymc' (the NUTS implementation of the full PyMC model)",
    "method": "'auto', 'nuts' or 'imh' (how the collapsed sampler samples the variance parameters)",
}


def posterior_tree(posterior, sample_stats, y: np.ndarray, keep: list[str] | None = None):
    """What every sampler returns: ``posterior`` (only ``keep``'s variables, when given),
    ``sample_stats`` and ``observed_data`` (``y`` on ``obs``), as an ``xarray.DataTree``."""
    import xarray as xr  # not at import: the command line and ``import bayeslmm`` never need it

    from bayeslmm.engines.posterior_names import dataset

    if keep is not None:
        posterior = posterior[[name for name in keep if name in posterior]]
    observed = dataset({"y": (("obs",), np.asarray(y, dtype=float))}, {"obs": np.arange(len(y))})
    return xr.DataTree.from_dict({"posterior": posterior, "sample_stats": sample_stats, "observed_data": observed})


def check_sampler_arguments(draws: Any, tune: Any, chains: Any) -> None:
    """Raise ValueError unless draws and chains are positive integers and tune a non-negative one."""
    for name, value in {"draws": draws, "tune": tune, "chains": chains}.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < (0 if name == "tune" else 1):
            kind = "a non-negative" if name == "tune" else "a positive"
            raise ValueError(f"{name} must be {kind} integer, got {value!r}")


def check_random_seed(random_seed: Any) -> int | None:
    """Return the seed as an int (or None).

    Raises
    ------
    ValueError
        Not None and not an integer in [0, 2**32).
    """
    if random_seed is None:
        return None
    if isinstance(random_seed, bool) or not isinstance(random_seed, int | np.integer):
        raise ValueError(
            f"random_seed must be an integer between 0 and 2**32 - 1 (or None), got {random_seed!r} "
            f"({type(random_seed).__name__})"
        )
    if not 0 <= int(random_seed) < 2**32:
        raise ValueError(f"random_seed must be between 0 and 2**32 - 1, got {random_seed}")
    return int(random_seed)


def check_fit_arguments(draws: Any, tune: Any, chains: Any, random_seed: Any, options: Mapping[str, Any]) -> int | None:
    """Check every argument of ``fit`` before anything runs; return the seed as an int.

    Raises
    ------
    TypeError
        An option that no sampler takes (a typo, or an lme4 argument such as ``REML``).
    ValueError
        A value out of range.
    """
    unknown = [name for name in options if name not in SAMPLER_OPTIONS]
    if unknown:
        hint = ""
        if "REML" in unknown:
            hint = " (REML is an argument of fit_frequentist(REML=...), the lme4 fit)"
        raise TypeError(
            f"fit() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}{hint}; it takes draws, "
            f"tune, chains, random_seed, summarize, progressbar (Lmer: also marginalize, factors, ordered) "
            f"and the sampler options {', '.join(SAMPLER_OPTIONS)}"
        )
    check_sampler_arguments(draws, tune, chains)
    seed = check_random_seed(random_seed)
    for name, value in options.items():
        if not _option_ok(name, value):
            raise ValueError(f"{name} must be {SAMPLER_OPTIONS[name]}, got {value!r}")
    return seed


def _option_ok(name: str, value: Any) -> bool:
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if name == "target_accept":
        return isinstance(value, float | int) and not isinstance(value, bool) and 0 < value < 1
    if name in ("cores", "maxdepth"):
        return is_int and value >= 1
    if name == "nuts_sampler":
        return value in ("nutpie", "pymc")
    if name == "method":
        return value in ("auto", "nuts", "imh")
    return True  # pragma: no cover - every option is listed above


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
    return auto_progressbar(os.environ, stderr_is_tty(), in_jupyter())


def stderr_is_tty() -> bool:
    """Whether standard error is a terminal (False for replaced or closed streams)."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def in_jupyter() -> bool:
    """Whether the code runs in a Jupyter kernel (looks only at an IPython already imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and getattr(shell, "kernel", None) is not None
