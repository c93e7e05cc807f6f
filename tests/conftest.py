"""Shared fixtures: each model is fitted once per test session and shared by every test that reads it."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from bayeslmm import Lmer, load_dataset


@pytest.fixture(scope="session")
def sleep() -> pd.DataFrame:
    return load_dataset("sleepstudy")


def _fit(formula: str, data: pd.DataFrame, priors: dict | None = None, **kwargs) -> Lmer:
    model = Lmer(formula, data, priors=priors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**kwargs)
    return model


@pytest.fixture(scope="session")
def sleep_corr(sleep) -> Lmer:
    """``(Days | Subject)`` with the default sampler settings (4 chains x 1000 + 1000)."""
    return _fit("Reaction ~ Days + (Days | Subject)", sleep, random_seed=11)


@pytest.fixture(scope="session")
def fit_model():
    """Fit a model with small settings: 2 chains x 500 draws after 500 tuning steps."""

    def fit(formula: str, data: pd.DataFrame, **kwargs) -> Lmer:
        settings = {"draws": 500, "tune": 500, "chains": 2, "random_seed": 3} | kwargs
        return _fit(formula, data, **settings)

    return fit


@pytest.fixture(scope="session")
def cake() -> pd.DataFrame:
    """lme4's cake: temperature an ordered categorical (175 < ... < 225), recipe and replicate categorical."""
    return load_dataset("cake")


@pytest.fixture(scope="session")
def cake_interaction(cake) -> Lmer:
    """lmerTest's Type III / emmeans example, 2 chains x 500 draws (the REML numbers do not depend on them)."""
    return _fit("angle ~ recipe * temperature + (1 | recipe:replicate)", cake,
                draws=500, tune=500, chains=2, random_seed=5)
