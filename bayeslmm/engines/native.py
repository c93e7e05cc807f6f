"""The samplers' kernels as C functions, from a shared library built at installation or from numba.

Every engine with a compiled log density (the collapsed Gaussian sampler and the GLMM sampler) has
three C functions: nutpie's ``logp`` and ``expand`` callbacks, and ``evaluate_many``, which evaluates
(or, in draw mode, completes) many parameter vectors at once. :func:`addresses` gives their
addresses from one of two sources with the same machine code:

- **The native library** (``bayeslmm_kernels-<key>.so``), which :func:`build` makes once at
  installation (``bayeslmm compile``): numba compiles the kernels as usual, the LLVM modules of the
  C functions are emitted as one position-independent object file, and the system C compiler links
  it with :file:`native_runtime.c` (the memory, GIL and BLAS/LAPACK functions the generated code
  calls, which inside numba come from numba's runtime). Loading it with ctypes takes milliseconds
  and imports nothing, where importing numba and loading its cached kernels took about 1 s, and
  tearing LLVM down at exit another 0.5 s: most of what a short script waited for beyond the fit.
- **numba** (``cfunc`` with numba's disk cache): when no library is there, it could not be built
  (no C compiler, an unsupported platform), or ``BAYESLMM_NATIVE=0`` asks for it.

The library's ``key`` hashes the kernels' source, this module, the runtime, the versions of numba,
llvmlite and Python and the CPU's instruction set (the code is compiled for the host CPU), so an
edit or an upgrade makes a stale library invisible and the next ``bayeslmm compile`` builds a new
one. It lives in ``$BAYESLMM_CACHE_DIR``, else ``$NUMBA_CACHE_DIR/bayeslmm``, else next to this
file in ``__pycache__`` (where numba caches the kernels), else ``~/.cache/bayeslmm``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

__all__ = ["ENGINES", "addresses", "callbacks", "array_header", "evaluate_many", "source", "build", "library_path"]

#: Engines with compiled kernels (``bayeslmm.engines.<engine>.kernels``).
ENGINES = ("collapsed", "glmm")
#: The C functions of every engine.
FUNCTIONS = ("logp", "expand", "evaluate_many")

_HERE = Path(__file__).resolve().parent
_RUNTIME = _HERE / "native_runtime.c"
_SOURCES = (
    _HERE / "collapsed" / "kernels.py", _HERE / "collapsed" / "codes.py", _HERE / "glmm" / "kernels.py",
    _HERE / "glmm" / "codes.py", _RUNTIME, Path(__file__).resolve(),
)
# int64 evaluate_many(int64 mode, int64* shape, double* xs, double* a, double* b, double* values, void* data)
_MANY_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_void_p, ctypes.c_void_p,
)
_LINALG = (("cython_blas", "ddot"), ("cython_blas", "dgemv"), ("cython_blas", "dgemm"),
           ("cython_lapack", "dgetrf"), ("cython_lapack", "dgetri"), ("cython_lapack", "dpotrf"))


def _symbol(engine: str, name: str) -> str:
    return f"bayeslmm_{engine}_{name}"


def _native_allowed() -> bool:
    return os.environ.get("BAYESLMM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------------- where and which
def _cpu_signature() -> str:
    """The machine and its instruction-set extensions (the library is compiled for this CPU)."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    return f"{platform.machine()} {flags.strip()}"


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "none"


@functools.cache
def _key() -> str:
    digest = hashlib.sha256()
    for path in _SOURCES:
        digest.update(path.read_bytes())
    digest.update(f"{_version('numba')} {_version('llvmlite')} {sys.version_info[:2]} {_cpu_signature()}".encode())
    return digest.hexdigest()[:16]


def _cache_dirs() -> list[Path]:
    """Candidate folders for the library, in order of preference."""
    if os.environ.get("BAYESLMM_CACHE_DIR"):
        return [Path(os.environ["BAYESLMM_CACHE_DIR"])]
    if os.environ.get("NUMBA_CACHE_DIR"):
        return [Path(os.environ["NUMBA_CACHE_DIR"]) / "bayeslmm"]
    return [_HERE / "__pycache__", Path.home() / ".cache" / "bayeslmm"]


def library_path() -> Path | None:
    """The native library for these kernels on this machine, or None if none is built."""
    name = f"bayeslmm_kernels-{_key()}{_suffix()}"
    return next((folder / name for folder in _cache_dirs() if (folder / name).is_file()), None)


def _suffix() -> str:
    return ".dylib" if sys.platform == "darwin" else ".so"


# ----------------------------------------------------------------------------------- using the kernels
def source() -> str:
    """Where the kernels come from in this process: ``"native"`` (the library) or ``"numba"``."""
    return "native" if _library() is not None else "numba"


@functools.cache
def _library() -> ctypes.CDLL | None:
    if not _native_allowed():
        return None
    path = library_path()
    if path is None:
        return None
    try:
        library = ctypes.CDLL(str(path))  # RTLD_NOW: a missing symbol fails here, not in a fit
    except OSError:
        return None
    library.bayeslmm_set_linalg(*(ctypes.c_void_p(_scipy_routine(m, name)) for m, name in _LINALG))
    return library


def _scipy_routine(module: str, name: str) -> int:
    """Address of SciPy's BLAS or LAPACK routine ``name`` (32-bit Fortran integers), as numba finds it."""
    capsule = import_module(f"scipy.linalg.{module}").__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


@functools.cache
def addresses(engine: str) -> dict[str, int]:
    """Addresses of ``engine``'s C functions (:data:`FUNCTIONS`), from the native library when there
    is one, else from numba (compiled, or loaded from numba's disk cache)."""
    if engine not in ENGINES:
        raise ValueError(f"no compiled kernels for engine {engine!r}; expected one of {ENGINES}")
    library = _library()
    if library is not None:
        return {name: ctypes.cast(getattr(library, _symbol(engine, name)), ctypes.c_void_p).value for name in FUNCTIONS}
    kernels = import_module(f"bayeslmm.engines.{engine}.kernels")  # numba: loaded here
    return {name: kernels.c_function(name).address for name in FUNCTIONS}


def callbacks(engine: str) -> tuple[int, int]:
    """Addresses of ``engine``'s nutpie callbacks: the log density and the expand function."""
    functions = addresses(engine)
    return functions["logp"], functions["expand"]


def array_header(arrays: tuple) -> np.ndarray:
    """How the kernels find a model's arrays: (address, length) of each, in order, as uint64.

    Parameters
    ----------
    arrays : tuple of ndarray
        C-contiguous; the caller keeps them alive while a kernel reads them.

    Returns
    -------
    ndarray of uint64, shape (2 * len(arrays),)
    """
    return np.array([v for a in arrays for v in (a.ctypes.data, a.size)], dtype=np.uint64)


def evaluate_many(engine: str, arrays: tuple, mode: int, xs: np.ndarray, a: np.ndarray, b: np.ndarray,
                  values: np.ndarray) -> None:
    """Run ``engine``'s ``evaluate_many`` on the rows of ``xs``; releases the GIL while it runs.

    Parameters
    ----------
    engine : str
    arrays : tuple of ndarray
        The model's packed arrays (float64 ones, then int64 ones), as nutpie's callbacks read them.
    mode : int
        The kernel's mode code.
    xs : ndarray, shape (n, d)
    a, b : ndarray, shape (n, *)
        The kernel's per-row inputs and outputs (collapsed: standard normal draws and the drawn
        effects; GLMM: the completed effects, and ``b`` of shape (n, 0)).
    values : ndarray, shape (n,)
        Filled with the log densities.

    Raises
    ------
    FloatingPointError
        The kernel failed (the GLMM kernel's evaluation raised).
    """
    if not all(isinstance(m, np.ndarray) and m.dtype == np.float64 and m.flags.c_contiguous for m in (xs, a, b, values)):
        raise ValueError("evaluate_many writes into its arguments: pass C-contiguous float64 arrays")
    n = xs.shape[0]
    if a.shape[0] != n or b.shape[0] != n or values.shape != (n,):
        raise ValueError(f"evaluate_many: every argument needs {n} rows")
    shape = np.array([n, xs.shape[1], a.shape[1], b.shape[1]], dtype=np.int64)
    header = array_header(arrays)
    function = _MANY_TYPE(addresses(engine)["evaluate_many"])
    status = function(mode, shape.ctypes.data, xs.ctypes.data, a.ctypes.data, b.ctypes.data, values.ctypes.data,
                      header.ctypes.data)
    if status != 0:
        raise FloatingPointError(f"the {engine} kernel failed to evaluate (status {status})")


# ----------------------------------------------------------------------------------- building
def build(report: Callable[[str], None] | None = None) -> Path | None:
    """Build the native library for this machine (numba compiles, or loads, the kernels first).

    Returns its path, or None (with the reason passed to ``report``) when it cannot be built here:
    the kernels then load from numba, as before, only slower to start.
    """
    say = report or (lambda message: None)
    existing = library_path()
    if existing is not None:
        return existing
    if sys.platform not in ("linux", "darwin"):
        say(f"native kernels: not built on {sys.platform}; numba's are used")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        say("native kernels: no C compiler (cc, gcc or clang) found; numba's are used")
        return None
    obj = _object_code()
    for folder in _cache_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return _link(compiler, obj, folder / f"bayeslmm_kernels-{_key()}{_suffix()}", say)
        except OSError:
            continue
    say("native kernels: no writable folder for the library; numba's are used")
    return None


def _object_code() -> bytes:
    """Every engine's C functions as one position-independent object file for the host CPU.

    numba keeps each compiled function's LLVM module, with everything it calls, for linking into
    other functions (``_get_module_for_linking``, numba's own API, also for functions loaded from its
    cache); each C function's module is taken from there, its entry renamed to a stable symbol.
    """
    import llvmlite.binding as llvm

    combined = None
    for engine in ENGINES:
        kernels = import_module(f"bayeslmm.engines.{engine}.kernels")
        for name in FUNCTIONS:
            compiled = kernels.c_function(name)
            module = compiled._library._get_module_for_linking().clone()
            entry = module.get_function(compiled.native_name)
            entry.name = _symbol(engine, name)
            entry.linkage = "external"
            if combined is None:
                combined = module
            else:
                combined.link_in(module)
    combined.verify()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3, reloc="pic",
        codemodel="default",
    )
    return machine.emit_object(combined)


def _link(compiler: str, obj: bytes, target: Path, say: Callable[[str], None]) -> Path | None:
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        object_file = Path(work) / "kernels.o"
        object_file.write_bytes(obj)
        built = Path(work) / target.name
        flags = ["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []
        command = [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(object_file), str(_RUNTIME), "-lm", *flags]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            say(f"native kernels: linking failed, numba's are used:\n{result.stderr.strip()}")
            return None
        try:
            ctypes.CDLL(str(built))  # every symbol resolves, or it fails here
        except OSError as error:
            say(f"native kernels: the library does not load ({error}); numba's are used")
            return None
        os.replace(built, target)  # atomic: a concurrent build or fit never sees half a file
    for stale in target.parent.glob(f"bayeslmm_kernels-*{_suffix()}"):
        if stale != target:  # built for older sources: no key can find it again
            stale.unlink(missing_ok=True)  # a process that loaded it keeps its mapping
    return target
