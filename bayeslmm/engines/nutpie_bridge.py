"""Run nutpie's NUTS on a log density given as a C callback: the one place that reaches into nutpie.

The collapsed sampler (and any other engine with a numba ``cfunc`` log density) hands nutpie a C
function pointer, so that no Python runs inside the sampling loop and nothing is compiled per model.
nutpie's public Python front end is not used, for two measured reasons:

- ``import nutpie`` imports ArviZ with its plotting stack (about 1.3 s on the development machine,
  more than a whole collapsed fit), only to convert traces we do not need converted. The compiled core
  ``nutpie._lib`` alone loads in milliseconds; :func:`core` loads it without running
  ``nutpie/__init__.py`` (when the user has not imported nutpie already).
- nutpie's ArviZ conversion of the whole trace, warm-up included, cost as much as the sampling; the
  raw Arrow trace is read here straight into NumPy and a ``sample_stats`` Dataset.

Progress is reported through a callback receiving nutpie's per-chain progress objects, so the display
belongs to bayeslmm (:mod:`bayeslmm.engines.progress`), never to nutpie.

The private API used (``_lib.PyMcModel``, ``LogpFunc``, ``ExpandFunc``, ``PySampler.from_pymc``,
``PyNutsSettings``, ``PyStorage.arrow``, ``ProgressType.none``) is that of nutpie 0.16; :func:`core`
refuses other minor versions with a clear message, and the tests exercise every call.
"""

from __future__ import annotations

import datetime
import importlib.machinery
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bayeslmm.engines.native import array_header
from bayeslmm.engines.posterior_names import dataset
from bayeslmm.engines.progress import Progress, nutpie_callback

__all__ = ["core", "CallbackDensity", "sample_nuts", "SUPPORTED_NUTPIE"]

#: nutpie minor versions whose private core API this module is written against.
SUPPORTED_NUTPIE = ("0.16",)

# per-draw statistics left out of sample_stats (positions and gradients of the unconstrained parameters)
_SKIPPED_STATS = {
    "chain", "draw", "gradient", "unconstrained_draw", "mass_matrix_inv", "mass_matrix_eigvals",
    "mass_matrix_stds", "divergence_start", "divergence_end", "divergence_momentum",
    "divergence_start_gradient", "transformed_position", "transformed_gradient", "transformation_mu",
}


def core():
    """nutpie's compiled core ``nutpie._lib``, loaded without nutpie's Python package when possible.

    Raises
    ------
    ImportError
        nutpie is not installed, or its version is not one this module supports.
    """
    module = sys.modules.get("nutpie._lib")
    if module is None and "nutpie" in sys.modules:
        import nutpie._lib as module  # noqa: PLC0415 -- the user imported nutpie already
    if module is None:
        spec = importlib.util.find_spec("nutpie")  # finds the package without executing it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("bayeslmm's samplers need nutpie: pip install nutpie")
        folder = Path(next(iter(spec.submodule_search_locations)))
        candidates = sorted(folder.glob("_lib*.so")) + sorted(folder.glob("_lib*.pyd"))
        if not candidates:
            import nutpie._lib as module  # noqa: PLC0415 -- an unusual layout: let Python find it
        else:
            loader = importlib.machinery.ExtensionFileLoader("nutpie._lib", str(candidates[0]))
            lib_spec = importlib.util.spec_from_file_location("nutpie._lib", candidates[0], loader=loader)
            module = importlib.util.module_from_spec(lib_spec)
            loader.exec_module(module)
            sys.modules["nutpie._lib"] = module
    version = str(getattr(module, "__version__", "?"))
    if not version.startswith(SUPPORTED_NUTPIE):
        raise ImportError(
            f"bayeslmm supports nutpie {', '.join(SUPPORTED_NUTPIE)}.x, found {version}; "
            f"pip install 'nutpie>={SUPPORTED_NUTPIE[0]},<{_next_minor(SUPPORTED_NUTPIE[-1])}'"
        )
    return module


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


@dataclass
class CallbackDensity:
    """A log density on R^d given by C callbacks, with the arrays they read.

    Attributes
    ----------
    n_dim : int
        ``d``.
    logp_address : int
        Address of ``int64 logp(uint64 d, double* x, double* grad, double* logp, void* user_data)``
        (nutpie's signature; returns 0 on success, nonzero for a rejected point).
    expand_address : int
        Address of ``int64 expand(uint64 d, uint64 d_out, double* x, double* out, void* user_data)``
        that copies the position into the stored draw.
    user_data : ndarray of uint64
        Passed to the callbacks as ``user_data`` (typically the addresses and lengths of ``arrays``).
    arrays : tuple of ndarray
        Kept alive while sampling: the callbacks read them through ``user_data``.
    init : ndarray, shape (d,)
        Centre of the starting points.
    jitter : float
        Each chain starts at ``init`` plus uniform(-jitter, jitter) noise (R-hat needs dispersed starts).
    """

    n_dim: int
    logp_address: int
    expand_address: int
    user_data: np.ndarray
    arrays: tuple = field(default=(), repr=False)
    init: np.ndarray | None = None
    jitter: float = 0.5

    @classmethod
    def over_arrays(cls, n_dim: int, callbacks: tuple[int, int], arrays: tuple, init: np.ndarray | None = None,
                    jitter: float = 0.5) -> "CallbackDensity":
        """A density whose callbacks read ``arrays`` through ``user_data`` = (address, length) of each,
        in order, as uint64: the layout the numba kernels' ``_c_logp`` unpack.

        Parameters
        ----------
        n_dim : int
        callbacks : (int, int)
            Addresses of the log-density and expand callbacks.
        arrays : tuple of ndarray
            C-contiguous, in the order the callback reads them.
        init, jitter
            As the attributes.
        """
        header = array_header(arrays)
        logp, expand = callbacks
        return cls(n_dim=n_dim, logp_address=logp, expand_address=expand, user_data=header, arrays=arrays,
                   init=init, jitter=jitter)

    def initial_point(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        init = np.zeros(self.n_dim) if self.init is None else self.init
        return init + rng.uniform(-self.jitter, self.jitter, size=self.n_dim)


def sample_nuts(
    density: CallbackDensity,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    cores: int | None = None,
    progressbar: bool = False,
    **settings: Any,
) -> tuple[np.ndarray, xr.Dataset]:
    """Sample ``density`` with nutpie's NUTS (diagonal mass-matrix adaptation).

    Parameters
    ----------
    density : CallbackDensity
    draws, tune, chains : int
    random_seed : int or None
    cores : int, optional
        Chains run in parallel on this many threads (default: min(chains, 2)).
    progressbar : bool
        Show bayeslmm's progress display (:class:`bayeslmm.engines.progress.Progress`), fed about every
        100 ms from nutpie's per-chain progress objects.
    **settings
        nutpie sampler settings, e.g. ``target_accept``, ``maxdepth``.

    Returns
    -------
    theta : ndarray, shape (chains, draws, d)
        The kept draws.
    sample_stats : xarray.Dataset
        nutpie's per-draw statistics (``diverging``, ``step_size``, ``n_steps``, ``lp``, ...), dims
        (chain, draw).
    """
    lib = core()
    seed = int(np.random.default_rng(random_seed).integers(2**63)) if random_seed is None else int(random_seed)
    options = _lib_settings(lib, seed, draws, tune, chains, settings)
    model = _model(lib, density)
    with Progress(chains * (draws + tune), f"Sampling {chains} chains", "draws", enabled=progressbar) as bar:
        sampler = lib.PySampler.from_pymc(
            options, int(cores or min(chains, 2)), model, lib.ProgressType.none(),
            nutpie_callback(bar) if progressbar else None, 100, lib.PyStorage.arrow(),
        )
        try:
            sampler.wait(None)
        except KeyboardInterrupt:
            sampler.abort()
            raise
        results = sampler.take_results()
    return _read_trace(results, options, density.n_dim)


def _lib_settings(lib, seed: int, draws: int, tune: int, chains: int, settings: dict):
    options = lib.PyNutsSettings.Diag(seed)
    updates = {"num_tune": int(tune), "num_draws": int(draws), "num_chains": int(chains)}
    updates.update(settings)
    options.update(updates)
    return options


def _model(lib, density: CallbackDensity):
    d = density.n_dim
    address = int(density.user_data.ctypes.data)
    # the callbacks read the arrays through the addresses in user_data; ``density`` keeps them alive
    expand = lib.ExpandFunc(d, d, density.expand_address, address, density)
    logp = lib.LogpFunc(density.logp_address, address, density)
    variables = lib.PyVariable.new_variables(["theta"], ["float64"], [(d,)], {"theta_dim": d}, {"theta": ("theta_dim",)})

    def no_flow_adaptation(*args, **kwargs):  # nutpie asks for it only with adaptation="flow"
        raise NotImplementedError("flow adaptation is not available for bayeslmm's samplers")

    return lib.PyMcModel(
        logp, expand, variables, d, {"theta_dim": d}, {"theta_dim": np.arange(d)}, density.initial_point,
        no_flow_adaptation,
    )


def _read_trace(results, settings, n_dim: int) -> tuple[np.ndarray, xr.Dataset]:
    """Kept draws ``theta`` (chains, draws, n_dim) and ``sample_stats`` from nutpie's raw Arrow trace.

    The content of nutpie's own ``sample_stats`` (without the unconstrained positions and gradients),
    built straight from the Arrow columns: no ArviZ conversion of the warm-up.
    """
    import pyarrow as pa

    draw_batches, stat_batches = results.get_arrow_trace()
    chains = len(draw_batches)
    columns: list[dict] = []
    kept = []
    for draw, stat in zip(draw_batches, stat_batches):
        tuning = pa.array(stat.column("tuning")).to_numpy(zero_copy_only=False)
        start = int(tuning.sum())
        kept.append(draw.num_rows - start)
        x = pa.array(draw.column("theta")).flatten().to_numpy(zero_copy_only=False).reshape(-1, n_dim)
        chain_cols = {"theta": x[start:]}
        for name in stat.column_names:
            if name in _SKIPPED_STATS:
                continue
            col = pa.array(stat.column(name))
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                continue
            if col.null_count and (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
                col = col.fill_null(False if pa.types.is_boolean(col.type) else 0)  # as nutpie does
            chain_cols[name] = col.to_numpy(zero_copy_only=False)[start:]
        columns.append(chain_cols)
    n_draws = max(kept) if kept else 0
    theta = np.full((chains, n_draws, n_dim), np.nan)
    data = {}
    for c, chain_cols in enumerate(columns):
        theta[c, : kept[c]] = chain_cols.pop("theta")
        for name, values in chain_cols.items():
            if name not in data:
                if values.dtype.kind == "f":
                    data[name] = np.full((chains, n_draws), np.nan, dtype=values.dtype)
                elif values.dtype == object:
                    data[name] = np.full((chains, n_draws), None, dtype=object)
                else:
                    data[name] = np.zeros((chains, n_draws), dtype=values.dtype)
            data[name][c, : kept[c]] = values
    attrs = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "sample_dims": ["chain", "draw"],
        "inference_library": "nutpie",
        "inference_library_version": str(core().__version__),
        "inference_library_settings": json.dumps(settings.as_dict()),
    }
    coords = {"chain": np.arange(chains), "draw": np.arange(n_draws)}
    stats = dataset({k: (("chain", "draw"), v) for k, v in data.items()}, coords, attrs)
    return theta, stats
