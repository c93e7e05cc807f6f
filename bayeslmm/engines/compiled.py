"""The samplers' kernels, compiled ahead of time with ``bayeslmm compile``.

Two steps, both once per installation (``scripts/bootstrap.sh`` runs them; pip users run
``bayeslmm compile``):

1. numba compiles each engine's kernels (collapsed Gaussian and GLMM samplers, 30-70 s each) and caches
   the machine code on disk (``cache=True``: ``__pycache__`` next to the source, or ``NUMBA_CACHE_DIR``).
2. :func:`bayeslmm.engines.native.build` links that code into a shared library (a few seconds), which
   fits then load with ctypes without importing numba: a whole short script is about 1 s faster.

A fit that finds no library loads numba's cached kernels, and one that finds no cache compiles them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["KERNELS", "compile_all", "load_all"]


def _collapsed() -> None:
    from bayeslmm.engines.collapsed.kernels import compile_kernels

    compile_kernels()


def _glmm() -> None:
    from bayeslmm.engines.glmm.kernels import compile_kernels

    compile_kernels()


#: Each engine's compile function, by the name printed while compiling.
KERNELS: dict[str, Callable[[], None]] = {
    "collapsed Gaussian sampler": _collapsed,
    "GLMM sampler": _glmm,
}


def compile_all(report: Callable[[str], None] | None = None) -> dict[str, float]:
    """Compile every engine's kernels with numba, then build the native library from them.

    Returns the seconds each step took (cached kernels load in about a second; an existing library is
    not rebuilt). ``report`` receives one line per step, and the reason when no library can be built.
    """
    from bayeslmm.engines import native

    seconds = {}
    for name, compile_kernel in KERNELS.items():
        start = time.perf_counter()
        compile_kernel()
        seconds[name] = time.perf_counter() - start
        if report is not None:
            report(f"{name}: {seconds[name]:.1f} s")
    start = time.perf_counter()
    path = native.build(report)
    seconds["native library"] = time.perf_counter() - start
    if report is not None and path is not None:
        report(f"native library: {seconds['native library']:.1f} s ({path})")
    return seconds


def load_all() -> str:
    """Load every engine's kernels into this process (a worker's first task need not); returns where
    they came from, ``"native"`` or ``"numba"`` (:func:`bayeslmm.engines.native.source`)."""
    from bayeslmm.engines import native

    for engine in native.ENGINES:
        native.addresses(engine)
    return native.source()
