"""Every sampler returns the same posterior variables with the same dims and coordinates.

The tables, plots, LOO and storage read the posterior by these names (bayeslmm.engines.posterior_names),
so a sampler that names a variable or a dimension differently breaks them silently.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bayeslmm import Lm, Lm2, Lmer, Prior, load_dataset

SMALL = {"draws": 60, "tune": 60, "chains": 2, "random_seed": 2}
FORMULA = "Reaction ~ Days + (Days | Subject) + (1 | late)"


@pytest.fixture(scope="module")
def sleep():
    data = load_dataset("sleepstudy")
    return data.assign(late=np.where(data["Days"] > 4, "late", "early"))


def _fit(model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**SMALL, **options)
    return model


MIXED = {
    "collapsed NUTS": ({}, None),
    "collapsed independence MH": ({"method": "imh"}, None),
    "full PyMC model (nutpie)": ({"marginalize": False}, None),
    # a Student-t prior: the exact GLMM engine, which takes gaussian models the collapsed sampler cannot
    "GLMM engine": ({}, {"Days": Prior("StudentT", nu=3, mu=0, sigma=10)}),
}


@pytest.mark.parametrize("options, priors", MIXED.values(), ids=MIXED.keys())
def test_mixed_model_posterior(sleep, options, priors):
    model = _fit(Lmer(FORMULA, sleep, priors=priors), **options)
    posterior = model.posterior
    assert set(posterior.data_vars) == {"beta", "sigma", "sd_Subject", "corr_Subject", "ranef_Subject", "sd_late", "ranef_late"}
    expected = {
        "beta": ("chain", "draw", "fixed_term"),
        "sigma": ("chain", "draw"),
        "sd_Subject": ("chain", "draw", "Subject__term"),
        "corr_Subject": ("chain", "draw", "Subject__term", "Subject__term_"),
        "ranef_Subject": ("chain", "draw", "Subject__level", "Subject__term"),
        "sd_late": ("chain", "draw", "late__term"),
        "ranef_late": ("chain", "draw", "late__level", "late__term"),
    }
    for name, dims in expected.items():
        assert posterior[name].dims == dims, name
    assert posterior.sizes["chain"] == 2 and posterior.sizes["draw"] == 60
    assert list(posterior["fixed_term"].values) == ["(Intercept)", "Days"]
    assert list(posterior["Subject__term"].values) == list(posterior["Subject__term_"].values) == ["(Intercept)", "Days"]
    assert list(posterior["Subject__level"].values) == sorted(sleep["Subject"].unique())
    assert list(posterior["late__level"].values) == ["early", "late"] and list(posterior["late__term"].values) == ["(Intercept)"]
    assert "diverging" in model.idata["sample_stats"] and model.idata["log_likelihood"]["y"].dims == ("chain", "draw", "obs")


def test_complete_pooling_posterior(sleep):
    posterior = _fit(Lm("Reaction ~ Days", sleep)).posterior
    assert set(posterior.data_vars) == {"beta", "sigma"}
    assert posterior["beta"].dims == ("chain", "draw", "fixed_term") and posterior["sigma"].dims == ("chain", "draw")


def test_no_pooling_posterior(sleep):
    posterior = _fit(Lm2("Reaction ~ Days", sleep, group="Subject")).posterior
    assert set(posterior.data_vars) == {"beta", "sigma"}
    assert posterior["beta"].dims == ("chain", "draw", "group", "fixed_term")
    assert posterior["sigma"].dims == ("chain", "draw", "group")


def test_dataset_holds_what_xarray_would_build():
    """posterior_names.dataset skips xarray's general conversion (and its import of dask.array); the
    Dataset must be the one xarray builds: values, dtypes, coordinates and attributes, None kept in an
    object array of Nones and turned into NaN beside text, as xarray does."""
    import pandas as pd
    import xarray as xr

    from bayeslmm.engines.posterior_names import dataset

    rng = np.random.default_rng(0)
    messages = np.full((2, 3), None, dtype=object)
    messages[1, 2] = "divergence"
    variables = {
        "beta": (("chain", "draw", "fixed_term"), rng.normal(size=(2, 3, 2))),
        "diverging": (("chain", "draw"), np.zeros((2, 3), dtype=bool)),
        "depth": (("chain", "draw"), np.arange(6, dtype=np.uint64).reshape(2, 3)),
        "no_message": (("chain", "draw"), np.full((2, 3), None, dtype=object)),
        "message": (("chain", "draw"), messages),
    }
    coords = {"chain": np.arange(2), "draw": np.arange(3), "fixed_term": ["Intercept", "Days"]}
    ours = dataset(variables, coords, {"sampler": "test"})
    expected = xr.Dataset(variables, coords={k: pd.Index(v) for k, v in coords.items()}, attrs={"sampler": "test"})
    xr.testing.assert_identical(ours, expected)
    for name in variables:
        assert ours[name].dtype == expected[name].dtype
    assert ours["no_message"].values[0, 0] is None
    assert np.isnan(ours["message"].values[0, 0]) and ours["message"].values[1, 2] == "divergence"
    assert list(ours.indexes["fixed_term"]) == ["Intercept", "Days"]
