"""model.save(path) and bayeslmm.load(path): every result attribute comes back exactly, nothing is resampled."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeslmm
from bayeslmm import Lm, Lmer, NotFittedError, Prior, ResultFileError, load, load_dataset
from bayeslmm.results.archive import FORMAT_VERSION

pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")

SMALL = {"draws": 200, "tune": 200, "chains": 2, "random_seed": 5}


def _fit(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains: diagnostics warnings are expected and kept in .warnings
        model.fit(**SMALL)
    return model


@pytest.fixture(scope="module")
def awkward_sleep() -> pd.DataFrame:
    """sleepstudy with every dtype a user might bring, a string index and a missing response."""
    frame = load_dataset("sleepstudy")
    frame["Subject"] = pd.Categorical(frame["Subject"])  # categories are integers: Parquet would lose them
    frame["arm"] = pd.Categorical(np.where(frame["Days"] < 5, "early", "late"), categories=["late", "early"], ordered=True)
    frame["note"] = pd.array(np.where(frame.index % 7 == 0, None, "ok"), dtype="string")
    frame["visit"] = pd.array(frame["Days"] + 1, dtype="Int64")
    frame["small"] = frame["Days"].astype("int16")
    frame["when"] = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(frame["Days"], unit="D")
    frame.index = pd.Index([f"row{i}" for i in range(len(frame))], name="row_id")
    frame.loc["row3", "Reaction"] = np.nan
    return frame


@pytest.fixture(scope="module")
def correlated(awkward_sleep) -> Lmer:
    priors = {"Days": Prior("Normal", mu=0, sigma=20), "sigma": Prior("HalfNormal", sigma=50), "eta": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped row
        model = Lmer("Reaction ~ Days + arm + (Days | Subject)", awkward_sleep, priors=priors)
    return _fit(model)


@pytest.fixture(scope="module")
def crossed() -> Lmer:
    return _fit(Lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", load_dataset("penicillin")))


def _assert_frames(left, right) -> None:
    if isinstance(left, dict):
        assert list(left) == list(right)
        for key in left:
            pd.testing.assert_frame_equal(left[key], right[key], check_exact=True)
    elif left is None:
        assert right is None
    else:
        pd.testing.assert_frame_equal(left, right, check_exact=True)


def assert_same_model(original: Lmer, loaded: Lmer) -> None:
    """Every attribute a user reads, compared exactly."""
    assert type(loaded) is type(original)
    assert loaded.fitted
    assert loaded.formula == original.formula
    assert loaded.family.name == original.family.name
    tables = ["coefs", "data", "priors", "design_matrix"]
    if not isinstance(original, Lm):
        tables += ["fixef", "ranef", "ranef_var", "ranef_corr", "ranef_summary"]
    for name in tables:
        left, right = getattr(original, name), getattr(loaded, name)
        _assert_frames(left() if callable(left) else left, right() if callable(right) else right)
    pd.testing.assert_frame_equal(original.coef_summary(prob=0.9, hdi=True), loaded.coef_summary(prob=0.9, hdi=True))
    assert loaded.grps == original.grps
    assert list(loaded.levels) == list(original.levels)
    for factor, levels in original.levels.items():
        pd.testing.assert_index_equal(loaded.levels[factor], levels, exact=True)
    assert loaded.warnings == original.warnings
    assert loaded.sampler == original.sampler
    assert loaded.summary() == original.summary()
    assert repr(loaded) == repr(original)
    assert loaded.design.n_dropped == original.design.n_dropped
    np.testing.assert_array_equal(loaded.design.y, original.design.y)
    assert set(loaded.idata.children) == set(original.idata.children)
    for group in original.idata.children:
        xr.testing.assert_identical(loaded.idata[group].to_dataset(), original.idata[group].to_dataset())
    assert loaded.idata.attrs == original.idata.attrs


def test_correlated_model_round_trips_exactly(correlated, tmp_path):
    path = correlated.save(tmp_path / "sleep.zarr")
    assert path == tmp_path / "sleep.zarr" and path.is_dir()
    loaded = load(path)
    assert_same_model(correlated, loaded)
    assert loaded.design.n_dropped == 1 and "1 rows dropped" in loaded.summary()
    assert set(loaded.idata.children) >= {"posterior", "sample_stats", "observed_data", "log_likelihood"}


def test_data_dtypes_and_index_survive(correlated, awkward_sleep, tmp_path):
    loaded = load(correlated.save(tmp_path / "dtypes.zarr"))
    pd.testing.assert_series_equal(loaded.data.dtypes, correlated.data.dtypes)
    assert isinstance(loaded.data["Subject"].dtype, pd.CategoricalDtype)
    assert loaded.data["Subject"].cat.categories.dtype == np.int64
    assert loaded.data["arm"].cat.ordered and list(loaded.data["arm"].cat.categories) == ["late", "early"]
    assert loaded.data.index.name == "row_id" and "row3" not in loaded.data.index
    pd.testing.assert_frame_equal(loaded.design.data, awkward_sleep.drop(index="row3"), check_exact=True)


def test_prior_overrides_are_restored(correlated, tmp_path):
    loaded = load(correlated.save(tmp_path / "priors.zarr"))
    assert loaded.prior_overrides == correlated.prior_overrides
    assert loaded.priors.loc["Days", "prior"] == "Normal(mu=0, sigma=20)"
    assert loaded.priors.loc["corr(Subject)", "prior"] == "LKJ(eta=2)"


def test_crossed_model_round_trips_exactly(crossed, tmp_path):
    loaded = load(crossed.save(tmp_path / "penicillin.zarr"))
    assert_same_model(crossed, loaded)
    assert isinstance(loaded.ranef, dict) and list(loaded.ranef) == ["plate", "sample"]


def test_complete_pooling_model_round_trips(tmp_path):
    model = _fit(Lm("Reaction ~ Days", load_dataset("sleepstudy")))
    loaded = load(model.save(tmp_path / "lm.zarr"))
    assert_same_model(model, loaded)
    pd.testing.assert_frame_equal(loaded.sigma, model.sigma, check_exact=True)


def test_loaded_model_is_usable(crossed, tmp_path):
    loaded = load(crossed.save(tmp_path / "use.zarr"))
    assert loaded.loo().elpd == pytest.approx(crossed.loo().elpd)
    assert loaded.fit_frequentist().coefs.shape[0] == 1


def test_netcdf_round_trip(crossed, tmp_path):
    pytest.importorskip("h5netcdf")
    path = crossed.save(tmp_path / "penicillin.nc")
    assert path.is_file()
    assert_same_model(crossed, load(path))


def test_overwrite_replaces_results_only(crossed, correlated, tmp_path):
    path = tmp_path / "model.zarr"
    crossed.save(path)
    correlated.save(path)  # a bayeslmm result is replaced
    assert load(path).formula == correlated.formula
    with pytest.raises(FileExistsError, match="overwrite=True"):
        crossed.save(path, overwrite=False)
    other = tmp_path / "precious.zarr"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a bayeslmm result"):
        crossed.save(other)
    assert (other / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zarr", "precious.zarr"]  # no temporaries left


def test_refusals(crossed, tmp_path):
    unfitted = Lmer("Reaction ~ Days + (1 | Subject)", load_dataset("sleepstudy"))
    with pytest.raises(NotFittedError, match="unfitted"):
        unfitted.save(tmp_path / "unfitted.zarr")
    with pytest.raises(ResultFileError, match=r"\.zarr"):
        crossed.save(tmp_path / "model.pkl")
    with pytest.raises(FileNotFoundError, match="no saved result"):
        load(tmp_path / "missing.zarr")
    with pytest.raises(ResultFileError, match=r"\.zarr"):
        load(__file__)
    plain = tmp_path / "plain.zarr"
    xr.DataTree.from_dict({"posterior": xr.Dataset({"a": ("x", np.arange(3.0))})}).to_zarr(plain)
    with pytest.raises(ResultFileError, match="not a bayeslmm result"):
        load(plain)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ResultFileError, match="not a bayeslmm result"):
        load(tmp_path / "empty.zarr")


def test_newer_format_is_refused(crossed, tmp_path):
    tree = xr.open_datatree(crossed.save(tmp_path / "a.zarr"), engine="zarr").load()
    meta = json.loads(tree.attrs["bayeslmm"])
    tree.attrs["bayeslmm"] = json.dumps(meta | {"format_version": FORMAT_VERSION + 1})
    tree.to_zarr(tmp_path / "future.zarr")
    with pytest.raises(ResultFileError, match="newer"):
        load(tmp_path / "future.zarr")


def test_exported():
    assert bayeslmm.load is load and "load" in bayeslmm.__all__
