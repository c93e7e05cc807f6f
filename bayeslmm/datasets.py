"""Datasets: lme4's classic data sets, shipped with the package, and a Simpson's-paradox simulator."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError

__all__ = ["load_dataset", "list_datasets", "simulate_simpson"]

_FILES = {
    "sleepstudy": "sleepstudy.csv",
    "dyestuff": "Dyestuff.csv",
    "penicillin": "Penicillin.csv",
    "cbpp": "cbpp.csv",
    "insteval": "InstEval.csv",
    "verbagg": "VerbAgg.csv",
    "grouseticks": "grouseticks.csv",
    "cake": "cake.csv",
}
_ALIASES = {"sleep": "sleepstudy"}
# Columns that are factors in R but stored as numbers in the CSVs: without this, `~ period` would fit a
# linear trend where lme4 fits one coefficient per level.
_FACTORS = {
    "cbpp": ["period"],
    "insteval": ["studage", "lectage"],
    "grouseticks": ["INDEX", "BROOD", "YEAR", "LOCATION"],
    "cake": ["replicate", "recipe"],
}
# Ordered factors in R, with their levels in order (lme4's cake: temperature 175 < 185 < ... < 225).
_ORDERED = {"cake": {"temperature": ["175", "185", "195", "205", "215", "225"]}}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (``"sleep"`` is pymer4's name for sleepstudy)."""
    return sorted(_FILES) + sorted(_ALIASES)


def load_dataset(name: str) -> pd.DataFrame:
    """Load one of lme4's data sets.

    Parameters
    ----------
    name : str
        ``"sleepstudy"`` (or ``"sleep"``), ``"Dyestuff"``, ``"Penicillin"``, ``"cbpp"``, ``"InstEval"``,
        ``"VerbAgg"``, ``"grouseticks"`` (with ``cHEIGHT``, the centred height), ``"cake"``
        (case-insensitive).

    Returns
    -------
    pandas.DataFrame
        A fresh copy; columns as in R, factors that are numbers in the file as ``category``.

    Examples
    --------
    >>> load_dataset("sleepstudy").shape
    (180, 3)
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _FILES:
        raise DataError(f"no dataset named {name!r}; available: {', '.join(list_datasets())}")
    with resources.files("bayeslmm.data").joinpath(_FILES[key]).open("r") as handle:
        frame = pd.read_csv(handle)
    frame = frame.drop(columns=["rownames"], errors="ignore")
    for column in _FACTORS.get(key, []):
        frame[column] = frame[column].astype(str).astype("category")
    for column, levels in _ORDERED.get(key, {}).items():
        frame[column] = pd.Categorical(frame[column].astype(str), categories=levels, ordered=True)
    return frame


def simulate_simpson(
    n_participants: int = 20,
    n_per_participant: int = 10,
    within_slope: float = -1.0,
    between_slope: float = 2.0,
    noise_sd: float = 1.0,
    random_seed: int | None = 0,
) -> pd.DataFrame:
    """Simulate Simpson's paradox: negative slopes within participants, positive across them.

    The course's data: 20 participants measured 10 times each (200 rows). Participant ``i`` has
    predictor values spread uniformly over ``mean_x[i] +- 1.5``, with the ``mean_x`` evenly spaced from 0
    to 8, and its own intercept ``(between_slope - within_slope) mean_x[i]``, so that within each
    participant ``y`` falls with ``within_slope`` as ``x`` rises while the participants' mean ``y`` rises
    with ``between_slope`` across their mean ``x``:
    ``y = intercept_i + within_slope x + N(0, noise_sd^2)``.

    Parameters
    ----------
    n_participants, n_per_participant : int
    within_slope : float
        Slope of ``y`` on ``x`` inside each participant (negative for the paradox).
    between_slope : float
        Slope of the participants' mean ``y`` on their mean ``x`` (positive for the paradox).
    noise_sd : float
        Residual standard deviation.
    random_seed : int, optional

    Returns
    -------
    pandas.DataFrame
        Columns ``participant`` (int, 1, 2, ...), ``intercept`` (the participant's true intercept),
        ``x``, ``y``; ``n_participants * n_per_participant`` rows.
    """
    if n_participants < 2 or n_per_participant < 2:
        raise ValueError("simulate_simpson needs at least 2 participants with at least 2 rows each")
    rng = np.random.default_rng(random_seed)
    participant = np.repeat(np.arange(1, n_participants + 1), n_per_participant)
    mean_x = np.linspace(0.0, 8.0, n_participants)[participant - 1]
    x = mean_x + rng.uniform(-1.5, 1.5, size=participant.size)
    intercept = (between_slope - within_slope) * mean_x
    y = intercept + within_slope * x + rng.normal(0, noise_sd, size=participant.size)
    return pd.DataFrame({"participant": participant, "intercept": intercept, "x": x, "y": y})
