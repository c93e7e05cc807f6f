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
    n_participants: int = 5,
    n_per_participant: int = 20,
    within_slope: float = -1.0,
    between_slope: float = 2.0,
    noise_sd: float = 1.0,
    random_seed: int | None = 0,
) -> pd.DataFrame:
    """Simulate Simpson's paradox: negative slopes within participants, positive across them.

    Participant ``i`` has predictor values around ``mean_x[i] = 2 i`` and an intercept chosen so that its
    mean outcome rises with ``between_slope`` across participants, while within each participant ``y``
    falls with ``within_slope`` as ``x`` rises.

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
        Columns ``participant`` (int), ``x``, ``y``; ``n_participants * n_per_participant`` rows.
    """
    if n_participants < 2 or n_per_participant < 2:
        raise ValueError("simulate_simpson needs at least 2 participants with at least 2 rows each")
    rng = np.random.default_rng(random_seed)
    participant = np.repeat(np.arange(1, n_participants + 1), n_per_participant)
    mean_x = 2.0 * (participant - 1)
    x = mean_x + rng.uniform(-1.5, 1.5, size=participant.size)
    y = between_slope * mean_x + within_slope * (x - mean_x) + rng.normal(0, noise_sd, size=participant.size)
    return pd.DataFrame({"participant": participant, "x": x, "y": y})
