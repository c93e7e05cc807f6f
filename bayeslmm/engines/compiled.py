"""The samplers' kernels, compiled ahead of time with ``bayeslmm compile``.

Three steps, all once per installation (``scripts/bootstrap.sh`` runs them; pip users run
``bayeslmm compile``):

0. Python compiles the package's modules to bytecode (about a second). pip does so when it installs a
   package, but not for an editable install, and a process with ``PYTHONDONTWRITEBYTECODE`` set never
   writes what it compiles: each process then compiles every module of a fit from source, about 0.2 s.
1. numba compiles each engine's kernels (collapsed Gaussian and GLMM samplers, 30-70 s each) and caches
   the machine code on disk (``cache=True``: ``__pycache__`` next to the source, or ``NUMBA_CACHE_DIR``).
2. :func:`bayeslmm.engines.native.build` links that code into a shared library (a few seconds), which
   fits then load with ctypes without importing numba: a whole short script is about 1 s faster.

A fit that finds no library loads numba's cached kernels, and one that finds no cache compiles them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["KERNELS", "compile_bytecode", "compile_all", "load_all"]


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


def compile_bytecode() -> bool:
    """Write the bytecode (``__pycache__/*.pyc``) of every module of the package, where it is missing
    or older than its source; False when some could not be written (a read-only installation)."""
    import compileall

    package = Path(__file__).resolve().parents[1]
    return bool(compileall.compile_dir(package, quiet=2))


def compile_all(report: Callable[[str], None] | None = None) -> dict[str, float]:
    """Compile the package's bytecode and every engine's kernels with numba, then build the native
    library from the kernels.

    Returns the seconds each step took (cached kernels load in about a second; an existing library is
    not rebuilt). ``report`` receives one line per step, and the reason when no library can be built.
    """
    from bayeslmm.engines import native

    start = time.perf_counter()
    written = compile_bytecode()
    seconds = {"bytecode": time.perf_counter() - start}
    if report is not None:
        where = "" if written else " (some modules could not be written: their folder is read-only)"
        report(f"bytecode: {seconds['bytecode']:.1f} s{where}")
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
