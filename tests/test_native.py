"""The native kernel library (bayeslmm.engines.native): the same numbers as numba's kernels, no numba in a fit.

The library is built by ``bayeslmm compile`` (scripts/bootstrap.sh runs it). When it is missing or
stale (a kernel edited since), the tests build one in a temporary folder, which also tests the build;
only a machine without a C compiler skips them, and says so.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from importlib import import_module

import numpy as np
import pytest

from bayeslmm import Lmer, load_dataset
from bayeslmm.engines import native
from bayeslmm.engines.collapsed import pack as pack_collapsed
from bayeslmm.engines.collapsed.codes import MODE_DRAW as COLLAPSED_DRAW
from bayeslmm.engines.glmm import pack as pack_glmm
from bayeslmm.engines.glmm.codes import MODE_DRAW as GLMM_DRAW

_LOGP_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
)



@pytest.fixture(scope="module")
def library_dir(tmp_path_factory):
    """The folder of a native library for the current sources: the installed one, or one built now."""
    path = native.library_path()
    if path is None:
        if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
            pytest.skip("no C compiler here: no native kernel library, numba's kernels serve")
        folder = tmp_path_factory.mktemp("native")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("BAYESLMM_CACHE_DIR", str(folder))
            messages = []
            path = native.build(messages.append)
            assert path is not None and path.parent == folder, messages
    saved = os.environ.get("BAYESLMM_CACHE_DIR")
    os.environ["BAYESLMM_CACHE_DIR"] = str(path.parent)
    native._library.cache_clear()
    native.addresses.cache_clear()
    yield path.parent
    if saved is None:
        del os.environ["BAYESLMM_CACHE_DIR"]
    else:
        os.environ["BAYESLMM_CACHE_DIR"] = saved
    native._library.cache_clear()
    native.addresses.cache_clear()


def _numba_addresses(engine: str) -> dict[str, int]:
    kernels = import_module(f"bayeslmm.engines.{engine}.kernels")
    return {name: kernels.c_function(name).address for name in native.FUNCTIONS}


def _native_addresses(engine: str) -> dict[str, int]:
    library = ctypes.CDLL(str(native.library_path()))
    native._library()  # hands SciPy's BLAS and LAPACK to the library (the same handle: dlopen counts)
    return {name: ctypes.cast(getattr(library, native._symbol(engine, name)), ctypes.c_void_p).value
            for name in native.FUNCTIONS}


def _logp(address: int, arrays: tuple, x: np.ndarray) -> tuple[int, float, np.ndarray]:
    header = native.array_header(arrays)
    x = np.ascontiguousarray(x, dtype=float)
    grad, value = np.zeros_like(x), np.zeros(1)
    status = _LOGP_TYPE(address)(x.size, x.ctypes.data, grad.ctypes.data, value.ctypes.data, header.ctypes.data)
    return status, float(value[0]), grad


@pytest.fixture(scope="module")
def sleepstudy_packed():
    model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    return pack_collapsed(model.design, model.model_priors)


@pytest.fixture(scope="module", params=["binomial", "negbinomial"])
def glmm_packed(request):
    if request.param == "binomial":
        model = Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_dataset("cbpp"),
                     family="binomial")
    else:
        data = load_dataset("cbpp")
        model = Lmer("incidence ~ period + (1 | herd)", data, family="negbinomial")
    return pack_glmm(model.design, model.model_priors, model.family)


def test_collapsed_native_functions_equal_numba(library_dir, sleepstudy_packed):
    """The library holds numba's code for the same functions: log density, gradient and conditional
    draws agree to rounding at points spread around the start, rejected points included."""
    packed = sleepstudy_packed
    arrays = packed.arrays
    ours, theirs = _native_addresses("collapsed"), _numba_addresses("collapsed")
    rng = np.random.default_rng(3)
    points = packed.init + rng.normal(scale=1.5, size=(20, packed.n_dim))
    points[0, 0] = 800.0  # sigma overflows: a rejected point, with the same status from both
    for x in points:
        status, value, grad = _logp(ours["logp"], arrays, x)
        expected = _logp(theirs["logp"], arrays, x)
        assert status == expected[0]
        if status == 0:
            assert value == pytest.approx(expected[1], rel=1e-12, abs=1e-9)
            np.testing.assert_allclose(grad, expected[2], rtol=1e-10, atol=1e-9)
    assert _logp(ours["logp"], arrays, points[0])[0] != 0

    z = rng.standard_normal((len(points), packed.n_gamma))
    draws = {}
    for label, addresses in (("native", ours), ("numba", theirs)):
        gammas, values = np.zeros_like(z), np.empty(len(points))
        native._MANY_TYPE(addresses["evaluate_many"])(
            COLLAPSED_DRAW, np.array([len(points), packed.n_dim, z.shape[1], z.shape[1]]).ctypes.data,
            points.ctypes.data, z.ctypes.data, gammas.ctypes.data, values.ctypes.data,
            native.array_header(arrays).ctypes.data,
        )
        draws[label] = gammas, values
    np.testing.assert_allclose(draws["native"][0], draws["numba"][0], rtol=1e-10, atol=1e-9)
    np.testing.assert_array_equal(np.isfinite(draws["native"][1]), np.isfinite(draws["numba"][1]))


def test_glmm_native_functions_equal_numba(library_dir, glmm_packed):
    packed = glmm_packed
    arrays = packed.arrays
    ours, theirs = _native_addresses("glmm"), _numba_addresses("glmm")
    rng = np.random.default_rng(4)
    points = packed.init + rng.normal(scale=0.5, size=(10, packed.n_dim))
    for x in points:
        status, value, grad = _logp(ours["logp"], arrays, x)
        expected = _logp(theirs["logp"], arrays, x)
        assert status == expected[0] == 0
        assert value == pytest.approx(expected[1], rel=1e-12)
        np.testing.assert_allclose(grad, expected[2], rtol=1e-10, atol=1e-9)
        assert value == pytest.approx(packed.logp(x), rel=1e-12)  # numba's Python-callable kernel
    outs = packed.effects(points)  # through native.evaluate_many, i.e. the library in this process
    from bayeslmm.engines.glmm.kernels import evaluate_many as numba_many

    expected = np.zeros_like(outs)
    numba_many(np.ascontiguousarray(points), GLMM_DRAW, expected, np.empty(len(points)), *packed.args)
    np.testing.assert_allclose(outs, expected, rtol=1e-10, atol=1e-12)


def test_a_fit_uses_the_library_and_never_imports_numba(library_dir):
    """The point of the library: a whole fit (both engines, and Lm2), with its summaries, loads no numba,
    llvmlite or LLVM. dask stays installed (the test environment has the extra): xarray would import
    dask.array, and through it pydata-sparse and numba, for the first Dataset built the general way."""
    code = (
        "import sys\n"
        "from bayeslmm import Lm2, Lmer, load_dataset\n"
        "from bayeslmm.engines import native\n"
        "m = Lmer('Reaction ~ Days + (Days | Subject)', load_dataset('sleepstudy'))\n"
        "m.fit(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)\n"
        "m.coefs, m.ranef, m.data, m.summary()\n"
        "g = Lmer('cbind(incidence, size - incidence) ~ period + (1 | herd)', load_dataset('cbpp'), family='binomial')\n"
        "g.fit(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)\n"
        "g.coefs, g.summary()\n"
        "Lm2('Reaction ~ Days', load_dataset('sleepstudy'), group='Subject').fit(progressbar=False)\n"
        "print(native.source(), sorted(k for k in ('numba', 'llvmlite', 'sparse', 'dask.array') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "native"
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_numba_serves_when_the_library_is_switched_off(library_dir):
    """BAYESLMM_NATIVE=0 (or no library) loads numba's kernels: same draws from the same seed."""
    code = (
        "from bayeslmm import Lmer, load_dataset\n"
        "from bayeslmm.engines import native\n"
        "m = Lmer('Reaction ~ Days + (Days | Subject)', load_dataset('sleepstudy'))\n"
        "m.fit(draws=50, tune=50, chains=1, random_seed=5, progressbar=False)\n"
        "print(native.source(), repr(float(m.idata['posterior']['beta'].values.sum())))\n"
    )
    results = {}
    for flag in ("0", "1"):
        env = os.environ | {"BAYESLMM_NATIVE": flag}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        results[flag] = out.stdout.split()
    assert results["0"][0] == "numba"
    assert results["1"][0] == "native"
    # the same machine code up to instruction selection: equal draws to rounding
    assert float(results["1"][1]) == pytest.approx(float(results["0"][1]), rel=1e-9)


def test_library_key_follows_the_sources(monkeypatch, tmp_path):
    """An edited kernel makes a built library invisible: it is found by a hash of the sources."""
    before = native._key()
    edited = tmp_path / "kernels.py"
    edited.write_text(native._SOURCES[0].read_text() + "\n# edited\n")
    monkeypatch.setattr(native, "_SOURCES", (edited,) + native._SOURCES[1:])
    native._key.cache_clear()
    try:
        assert native._key() != before
    finally:
        monkeypatch.undo()
        native._key.cache_clear()
    assert native._key() == before


def test_evaluate_many_refuses_arrays_it_cannot_write(sleepstudy_packed):
    packed = sleepstudy_packed
    xs = np.zeros((3, packed.n_dim))
    with pytest.raises(ValueError, match="C-contiguous float64"):
        packed.evaluate_many(xs, 0, np.zeros((3, 0)), np.zeros((3, 0)), np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="3 rows"):
        packed.evaluate_many(xs, 0, np.zeros((2, 0)), np.zeros((3, 0)), np.zeros(3))
