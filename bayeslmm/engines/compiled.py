"""The numba kernels of every engine, compiled ahead of time with ``bayeslmm compile``.

numba compiles a kernel the first time it runs and caches the machine code on disk (``cache=True``,
in ``__pycache__`` next to the source, or ``NUMBA_CACHE_DIR``), so every later process loads it in a
fraction of a second. The first compile takes about 20 s per engine (collapsed Gaussian and GLMM
samplers) on a laptop-class CPU. To keep that out of the first fit, the installation (``scripts/bootstrap.sh``) runs :func:`compile_all`; pip users can run
``bayeslmm compile`` once after installing. A fit that finds no cache compiles as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["KERNELS", "compile_all"]


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
    """Compile every engine's kernels; return the seconds each took (a cached kernel takes well under 1 s)."""
    seconds = {}
    for name, compile_kernel in KERNELS.items():
        start = time.perf_counter()
        compile_kernel()
        seconds[name] = time.perf_counter() - start
        if report is not None:
            report(f"{name}: {seconds[name]:.1f} s")
    return seconds
