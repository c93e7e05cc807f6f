"""Predictions and simulations: the model evaluated on new rows, at the posterior draws or the (RE)ML fit.

New rows go through :meth:`bayeslmm.spec.design.Design.evaluate` (the fit's codings and transformations;
a categorical level the model was not fitted to is refused there) and the linear predictor through
:meth:`~bayeslmm.spec.design.Design.linear_predictor`, the one place it is computed.

Levels of a grouping factor that the model has not seen (a new subject) have no fitted group effect.
What a prediction does for them is the caller's choice (``unseen``), and the output says which:

``"population"``
    the group effect is 0: the prediction for an average new group (lme4's ``allow.new.levels=TRUE``,
    the default);
``"sample"``
    a group effect drawn from the fitted random-effects distribution ``N(0, Sigma)``, once per
    posterior draw and new level (all rows of one new level share it): the prediction for a new group
    with its uncertainty; Bayesian only;
``"error"``
    a :class:`~bayeslmm.errors.DataError` naming the unseen levels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.engines.posterior_names import var_names
from bayeslmm.errors import DataError
from bayeslmm.results import posterior as posterior_eval
from bayeslmm.results.summaries import interval_columns, stack_draws
from bayeslmm.spec.contrasts import display_name
from bayeslmm.spec.design import Design, to_pandas
from bayeslmm.spec.random_effects import UNSEEN
from bayeslmm.spec.random_effects import _factor_labels as factor_labels  # the one definition of a row's level

__all__ = ["UNSEEN_CHOICES", "NewRows", "new_rows", "predict_table", "prediction_draws", "simulate_table"]

#: What a prediction may do with a level of a grouping factor the model has not seen.
UNSEEN_CHOICES = ("population", "sample", "error")


class NewRows:
    """Rows to predict: their design and which group levels in them the model has not seen.

    Attributes
    ----------
    design : Design
        Evaluated on the rows (the fitted design itself for ``data=None``).
    use_rfx : bool
    unseen : str
        One of :data:`UNSEEN_CHOICES`.
    new_levels : dict of str to list
        The unseen levels of each grouping factor.
    """

    def __init__(self, design: Design, use_rfx: bool, unseen: str, new_levels: dict[str, list]) -> None:
        self.design, self.use_rfx, self.unseen, self.new_levels = design, use_rfx, unseen, new_levels

    def random_effects_note(self) -> np.ndarray:
        """Per row: what its group effects are (``"fitted"``, ``"none"``, ``"population level for new Subject"``)."""
        n = self.design.n_obs
        if not self.use_rfx or not self.design.blocks:
            return np.full(n, "none (population level)", dtype=object)
        what = "population level" if self.unseen == "population" else "drawn"
        notes = [[] for _ in range(n)]
        for factor in self.new_levels:
            block = self.design.blocks_of(factor)[0]
            for row in np.flatnonzero(block.group_index == UNSEEN):
                notes[row].append(f"{what} for new {factor}")
        return np.array(["; ".join(parts) if parts else "fitted" for parts in notes], dtype=object)


def new_rows(
    design: Design, data: Any, use_rfx: bool = True, unseen: str = "population", offset: Any = None
) -> NewRows:
    """Evaluate the model on ``data`` (the fitted rows when None) and check it for predictions.

    ``offset`` is the ``offset=`` of the new rows, for a model fitted with one (the formula's
    ``offset(...)`` terms are evaluated on ``data``).

    Raises
    ------
    ValueError
        ``unseen`` is not one of :data:`UNSEEN_CHOICES`.
    DataError
        ``data`` lacks a predictor, a grouping column (with ``use_rfx``), has missing values in one, or
        a categorical level the model was not fitted to; or ``unseen="error"`` and a grouping factor
        has a new level.
    """
    if unseen not in UNSEEN_CHOICES:
        raise ValueError(f"unseen must be one of {UNSEEN_CHOICES}, got {unseen!r}")
    if data is None:
        return NewRows(design, use_rfx, unseen, {})
    frame = to_pandas(data)
    if use_rfx:
        missing = sorted({c for factor in design.factors for c in factor.split(":") if c not in frame.columns})
        if missing:
            raise DataError(
                f"the new data lacks the grouping column(s) {missing}: predictions with group effects "
                "(use_rfx=True) need them; pass use_rfx=False for population-level predictions"
            )
    used = [c for c in design.predictor_columns() if c in frame.columns]
    if use_rfx:
        used += [c for factor in design.factors for c in factor.split(":")]
    incomplete = [c for c in dict.fromkeys(used) if frame[c].isna().any()]
    if incomplete:
        rows = frame.index[frame[incomplete].isna().any(axis=1)]
        raise DataError(
            f"the new data has missing values in {incomplete} (rows {list(rows[:5])}"
            f"{' ...' if len(rows) > 5 else ''}); drop or fill those rows before predicting"
        )
    try:
        new = design.evaluate(frame, offset=offset)
    except DataError as error:  # name coded columns as the user wrote them
        raise DataError(display_name(str(error))) from None
    levels = new.random.unseen_levels(new.data) if use_rfx and new.blocks else {}
    for factor, values in levels.items():
        fitted = {str(level): level for level in design.factors[factor]}
        lookalikes = [value for value in values if str(value) in fitted]
        if lookalikes:
            raise DataError(
                f"grouping factor {factor!r}: the new level(s) {lookalikes[:5]} match fitted levels only as text "
                f"(the model was fitted to {type(fitted[str(lookalikes[0])]).__name__} values such as "
                f"{fitted[str(lookalikes[0])]!r}); give the column the type it had in the fit"
            )
    if levels and unseen == "error":
        listed = "; ".join(f"{factor}: {values}" for factor, values in levels.items())
        raise DataError(
            f"the new data has group levels the model was not fitted to ({listed}); pass "
            "unseen='population' for the population-level prediction or unseen='sample' to draw their "
            "group effects from the fitted distribution"
        )
    return NewRows(new, use_rfx, unseen, levels)


def _draw_effects(
    posterior: xr.Dataset, block, draws: np.ndarray, n_levels: int, rng: np.random.Generator
) -> np.ndarray:
    """Group effects of ``n_levels`` new levels from ``N(0, Sigma_s)`` for each draw ``s``, shape (S, n_levels, k)."""
    names = var_names(block)
    k = block.n_terms
    sd = stack_draws(posterior, names["sd"]).reshape(-1, k)[draws]
    if k > 1:
        corr = stack_draws(posterior, names["corr"]).reshape(-1, k, k)[draws]
        factor = sd[:, :, None] * np.linalg.cholesky(corr + 1e-12 * np.eye(k))
    else:
        factor = sd[:, :, None]
    z = rng.standard_normal((len(draws), n_levels, k))
    return np.einsum("skj,suj->suk", factor, z)


def _level_codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes ``0, 1, ...`` of the distinct labels (as text), and how many there are."""
    _, inverse = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    return inverse.astype(np.int64), (int(inverse.max()) + 1 if len(labels) else 0)


def prediction_draws(
    rows: NewRows, posterior: xr.Dataset, draws: np.ndarray, rng: np.random.Generator, new_groups: bool = False
) -> np.ndarray:
    """The linear predictor of the rows at the chosen draws, shape (len(draws), n).

    Parameters
    ----------
    rows : NewRows
    posterior : xarray.Dataset
    draws : ndarray of int
        Positions among the flattened (chain x draw) draws.
    rng : numpy.random.Generator
        For group effects drawn for new levels.
    new_groups : bool
        Draw new group effects for every level (the data as it would come from new groups: lme4's
        ``simulate(use.u = FALSE)``), instead of using the fitted ones.
    """
    design = rows.design
    if not rows.use_rfx or not design.blocks:
        beta = stack_draws(posterior, "beta").reshape(-1, len(design.fixed_terms))[draws]
        return design.linear_predictor(beta, None)
    if not new_groups and (rows.unseen == "population" or not rows.new_levels):
        return posterior_eval.linear_predictor(design, posterior, draws)
    beta = stack_draws(posterior, "beta").reshape(-1, len(design.fixed_terms))[draws]
    blocks, effects = [], []
    for block in design.blocks:
        fitted = stack_draws(posterior, var_names(block)["ranef"]).reshape(-1, block.n_levels, block.n_terms)[draws]
        labels = _labels(design.data, block.factor)
        if new_groups:
            codes, count = _level_codes(labels)
            blocks.append(replace(block, group_index=codes))
            effects.append(_draw_effects(posterior, block, draws, count, rng))
            continue
        unseen_rows = np.flatnonzero(block.group_index == UNSEEN)
        if unseen_rows.size == 0:
            blocks.append(block)
            effects.append(fitted)
            continue
        codes = block.group_index.copy()
        new, count = _level_codes(labels[unseen_rows])
        codes[unseen_rows] = block.n_levels + new
        blocks.append(replace(block, group_index=codes))
        effects.append(np.concatenate([fitted, _draw_effects(posterior, block, draws, count, rng)], axis=1))
    extended = replace(design, random=replace(design.random, blocks=tuple(blocks)))
    return extended.linear_predictor(beta, effects)


def _labels(data: pd.DataFrame, factor: str) -> np.ndarray:
    """Each row's level of ``factor`` (tuples for an interaction ``a:b``)."""
    return factor_labels(data, factor)


def predict_table(
    rows: NewRows,
    posterior: xr.Dataset,
    family,
    pred_type: str = "response",
    prob: float = 0.95,
    predictive: bool = False,
    n_draws: int | None = None,
    random_seed: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Posterior summaries of the expected response (or linear predictor) of each row.

    Parameters
    ----------
    rows : NewRows
    posterior : xarray.Dataset
    family : Family
    pred_type : {"response", "link"}
        The expected response ``g^{-1}(eta)``, or the linear predictor ``eta``.
    prob : float
        Probability of the intervals.
    predictive : bool
        Add a posterior predictive interval (``<lo>_pi``, ``<hi>_pi``): a new observation's response,
        with the observation noise (needs ``pred_type="response"``).
    n_draws : int, optional
        Evenly thinned posterior draws to use; all by default (memory: draws x rows floats).
    random_seed : int, optional
        For the group effects of new levels with ``unseen="sample"`` and the predictive draws.

    Returns
    -------
    table : pandas.DataFrame
        Indexed as the rows; ``Estimate`` (posterior mean), ``<lo>_ci``, ``<hi>_ci`` (equal-tailed
        credible interval), ``SE`` (posterior SD), optionally ``<lo>_pi``, ``<hi>_pi``, and
        ``random_effects`` (what each row's group effects are).
    draws : ndarray, shape (draws, rows)
        The draws summarised: of the expected response or linear predictor, or of new observations
        with ``predictive=True``.
    """
    if pred_type not in ("response", "link"):
        raise ValueError(f"pred_type must be 'response' or 'link', got {pred_type!r}")
    if predictive and pred_type != "response":
        raise ValueError("a predictive interval (predictive=True) is on the response scale: use pred_type='response'")
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    draws = posterior_eval.thinned(total, n_draws)
    rng = np.random.default_rng(random_seed)
    eta = prediction_draws(rows, posterior, draws, rng)
    values = family.inverse_link(eta) if pred_type == "response" else eta
    low, high = interval_columns(prob)
    bounds = np.quantile(values, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    table = pd.DataFrame(
        {"Estimate": values.mean(axis=0), low: bounds[0], high: bounds[1], "SE": values.std(axis=0, ddof=1)},
        index=rows.design.data.index,
    )
    out = values
    if predictive:
        aux = {name: v[draws] for name, v in posterior_eval.aux_draws(posterior, family).items()}
        out = family.random(values, aux, rng, trials=rows.design.trials)
        pi = np.quantile(out, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        table[low.replace("_ci", "_pi")] = pi[0]
        table[high.replace("_ci", "_pi")] = pi[1]
    table["random_effects"] = rows.random_effects_note()
    table.attrs.update({"pred_type": pred_type, "unseen": rows.unseen, "use_rfx": rows.use_rfx, "prob": prob})
    return table, out


def simulate_table(
    rows: NewRows, posterior: xr.Dataset, family, n: int, random_seed: int | None = None
) -> pd.DataFrame:
    """``n`` responses per row from the posterior predictive distribution, one posterior draw each.

    With ``rows.use_rfx`` the group effects are the fitted ones (lme4's ``simulate(use.u = TRUE)``);
    without, every group gets new effects drawn from the fitted distribution (``use.u = FALSE``).

    Returns
    -------
    pandas.DataFrame, shape (rows, n)
        Columns ``sim_1`` ... ``sim_n``, indexed as the rows.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive number of simulated data sets, got {n!r}")
    total = posterior.sizes["chain"] * posterior.sizes["draw"]
    if n > total:
        raise ValueError(f"n = {n} simulations need as many posterior draws; the fit has {total}")
    draws = posterior_eval.thinned(total, n)
    rng = np.random.default_rng(random_seed)
    full = NewRows(rows.design, True, rows.unseen, rows.new_levels)
    eta = prediction_draws(full, posterior, draws, rng, new_groups=not rows.use_rfx and bool(rows.design.blocks))
    aux = {name: v[draws] for name, v in posterior_eval.aux_draws(posterior, family).items()}
    values = family.random(family.inverse_link(eta), aux, rng, trials=rows.design.trials)
    return pd.DataFrame(values.T, index=rows.design.data.index, columns=[f"sim_{i}" for i in range(1, n + 1)])
