"""Posterior summaries: draws turned into the tables pymer4 users know.

Every table is built from one function, :func:`summarize`, which summarizes an array of draws with
shape (chain, draw, m) into m rows: posterior mean (``Estimate``), posterior SD (``SE``), a credible
interval (equal-tailed by default, HDI on request), probability of direction ``pd``, R-hat and ESS.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.engines.diagnostics import ess_bulk, ess_tail, rhat
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.errors import DataError
from bayeslmm.spec.design import Design
from bayeslmm.spec.random_effects import RandomBlock

__all__ = [
    "summarize",
    "interval_columns",
    "coefs_table",
    "ranef_long",
    "wide_by_factor",
    "ranef_var_table",
    "ranef_corr_table",
    "family_params_table",
    "stack_draws",
    "coef_columns",
    "boundary_notes",
    "group_tables",
    "by_factor",
    "observed_response",
    "pearson_residuals",
    "fitted_data",
]


def interval_columns(prob: float) -> tuple[str, str]:
    """Column names of a central interval, e.g. ``("2.5_ci", "97.5_ci")`` for ``prob=0.95``."""
    if not 0 < prob < 1:
        raise ValueError(f"interval probability must be between 0 and 1, got {prob!r}")
    tail = 100 * (1 - prob) / 2
    return f"{tail:g}_ci", f"{100 - tail:g}_ci"


def summarize(
    draws: np.ndarray, index: pd.Index, prob: float = 0.95, hdi: bool = False, diagnostics: bool = True
) -> pd.DataFrame:
    """Posterior summary of ``m`` quantities.

    Parameters
    ----------
    draws : ndarray, shape (chain, draw, m)
    index : pandas.Index, length m
    prob : float
        Probability of the credible interval.
    hdi : bool
        Highest-density instead of equal-tailed interval.
    diagnostics : bool
        Add ``R_hat``, ``ESS_bulk`` and ``ESS_tail`` (ArviZ).

    Returns
    -------
    pandas.DataFrame
        Columns ``Estimate``, ``<lo>_ci``, ``<hi>_ci``, ``SE``, ``pd`` and, with ``diagnostics``,
        ``R_hat``, ``ESS_bulk``, ``ESS_tail``.
    """
    flat = draws.reshape(draws.shape[0] * draws.shape[1], draws.shape[-1])
    low, high = interval_columns(prob)
    if hdi:
        import arviz as az  # only for HDIs: ArviZ takes a second to import

        bounds = az.hdi(xr.DataArray(draws, dims=("chain", "draw", "q")), prob=prob).values
        lower, upper = bounds[:, 0], bounds[:, 1]
    else:
        lower, upper = np.quantile(flat, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    table = pd.DataFrame(
        {
            "Estimate": flat.mean(axis=0),
            low: lower,
            high: upper,
            "SE": flat.std(axis=0, ddof=1),
            "pd": np.maximum((flat > 0).mean(axis=0), (flat < 0).mean(axis=0)),
        },
        index=index,
    )
    if diagnostics:
        table["R_hat"] = rhat(draws) if draws.shape[0] > 1 else np.nan
        table["ESS_bulk"] = ess_bulk(draws)
        table["ESS_tail"] = ess_tail(draws)
    return table


def stack_draws(posterior: xr.Dataset, name: str) -> np.ndarray:
    """Draws of a variable as an array of shape (chain, draw, ...)."""
    return np.asarray(posterior[name].transpose("chain", "draw", ...).values)


def coefs_table(design: Design, posterior: xr.Dataset, prob: float = 0.95, hdi: bool = False) -> pd.DataFrame:
    """Fixed effects, one row per term (pymer4's ``coefs``)."""
    return summarize(stack_draws(posterior, "beta"), pd.Index(design.fixed_terms, name="term"), prob, hdi)


def _group_coefficient_draws(design: Design, posterior: xr.Dataset, block: RandomBlock, total: bool) -> np.ndarray:
    """Draws of the block's group effects, shape (chain, draw, G, k); plus fixed part when ``total``."""
    draws = stack_draws(posterior, var_names(block)["ranef"]).copy()  # never write into the posterior
    if total:
        beta = stack_draws(posterior, "beta")
        for j, term in enumerate(block.terms):
            if term in design.fixed_terms:
                draws[..., j] += beta[..., None, design.fixed_terms.index(term)]
    return draws


def ranef_long(
    design: Design, posterior: xr.Dataset, total: bool = False, prob: float = 0.95, hdi: bool = False
) -> pd.DataFrame:
    """Tidy posterior summary of every group effect.

    Parameters
    ----------
    total : bool
        False: deviations from the fixed effects (lme4's ``ranef``); True: group coefficients, fixed
        plus random (lme4's ``coef``), for the terms that have a group effect.

    Returns
    -------
    pandas.DataFrame
        One row per (factor, level, term), columns ``factor``, ``level``, ``term`` and those of
        :func:`summarize` (without R-hat and ESS, which matter for the hyperparameters).
    """
    _require_blocks(design)
    frames = []
    for block in design.blocks:
        draws = _group_coefficient_draws(design, posterior, block, total)
        chains, n_draws, G, k = draws.shape
        index = pd.MultiIndex.from_product([list(block.levels), list(block.terms)], names=["level", "term"])
        table = summarize(draws.reshape(chains, n_draws, G * k), index, prob, hdi, diagnostics=False)
        frames.append(table.reset_index().assign(factor=block.factor))
    long = pd.concat(frames, ignore_index=True)
    return long[["factor", "level", "term"] + [c for c in long.columns if c not in ("factor", "level", "term")]]


def wide_by_factor(design: Design, posterior: xr.Dataset, total: bool) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Posterior means per level, one column per term (pymer4's ``ranef`` / ``fixef``).

    With ``total`` every fixed term is a column (fixed terms without a group effect repeat the
    fixed estimate), as lme4's ``coef()``. Blocks on one factor are merged. A dict keyed by factor when
    the model has several grouping factors.
    """
    _require_blocks(design)
    beta_mean = stack_draws(posterior, "beta").mean(axis=(0, 1))
    effects = [stack_draws(posterior, var_names(block)["ranef"]).mean(axis=(0, 1)) for block in design.blocks]
    return by_factor(design, group_tables(design, beta_mean if total else None, effects))


def coef_columns(design: Design, factor: str) -> list[str]:
    """Columns of lme4's ``coef()`` for ``factor``: terms with only a group effect first, then the fixed terms."""
    fixed = set(design.fixed_terms)
    random_only = [t for block in design.blocks_of(factor) for t in block.terms if t not in fixed]
    return list(dict.fromkeys(random_only)) + list(design.fixed_terms)


def group_tables(design: Design, beta: np.ndarray | None, effects: list[np.ndarray]) -> dict[str, pd.DataFrame]:
    """Per-factor tables of group effects, the one layout both engines use.

    Parameters
    ----------
    beta : ndarray, shape (p,), optional
        Fixed effects: given, the tables are lme4's ``coef()`` (fixed plus group effects, every fixed
        term a column, :func:`coef_columns` order); None gives ``ranef()`` (the blocks' terms).
    effects : list of ndarray
        Group effects of each block, shape (G, k), in formula order.
    """
    tables = {}
    for factor, levels in design.factors.items():
        pairs = [(block, values) for block, values in zip(design.blocks, effects) if block.factor == factor]
        if beta is None:
            columns = list(dict.fromkeys(t for block, _ in pairs for t in block.terms))
            base = dict.fromkeys(columns, 0.0)
        else:
            columns = coef_columns(design, factor)
            base = {term: 0.0 for term in columns} | dict(zip(design.fixed_terms, beta))
        values = np.tile([base[c] for c in columns], (len(levels), 1)).astype(float)
        for block, block_values in pairs:
            for j, term in enumerate(block.terms):
                values[:, columns.index(term)] += block_values[:, j]
        tables[factor] = pd.DataFrame(values, index=pd.Index(levels, name=factor), columns=columns)
    return tables


def by_factor(design: Design, tables: dict[str, pd.DataFrame]) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The single table when the model has one grouping factor, else the dict in formula order."""
    return tables if len(tables) > 1 else next(iter(tables.values()))


def _require_blocks(design: Design) -> None:
    if not design.blocks:
        raise DataError(
            f"formula {design.formula.text!r} has no random-effects terms, so there are no group "
            "coefficients; use .coefs (bayeslmm.Lm is the complete-pooling model)"
        )


def ranef_var_table(design: Design, posterior: xr.Dataset, prob: float = 0.95) -> pd.DataFrame:
    """Variance components: one row per group term, ``Residual`` last (pymer4's ``ranef_var``).

    ``Std`` is the posterior median of the standard deviation and ``Var`` its square (the median of the
    variance): medians, because the posteriors of variance components are skewed.
    """
    rows, names, draws = [], [], []
    for block in design.blocks:
        sd = stack_draws(posterior, var_names(block)["sd"])
        for j, term in enumerate(block.terms):
            rows.append(block.factor)
            names.append(term)
            draws.append(sd[..., j])
    if "sigma" in posterior:
        rows.append("Residual")
        names.append("")
        draws.append(stack_draws(posterior, "sigma"))
    return _median_table(np.stack(draws, axis=-1), pd.Index(rows, name="group"), prob, Name=names, value="Std")


def ranef_corr_table(design: Design, posterior: xr.Dataset, prob: float = 0.95) -> pd.DataFrame | None:
    """Correlations within blocks, one row per pair (pymer4's ``ranef_corr``); None when there are none."""
    rows, first, second, draws = [], [], [], []
    for block in design.blocks:
        if block.n_terms < 2:
            continue
        corr = stack_draws(posterior, var_names(block)["corr"])
        for i in range(block.n_terms):
            for j in range(i):
                rows.append(block.factor)
                first.append(block.terms[j])
                second.append(block.terms[i])
                draws.append(corr[..., i, j])
    if not rows:
        return None
    return _median_table(
        np.stack(draws, axis=-1), pd.Index(rows, name="group"), prob, IV1=first, IV2=second, value="Corr"
    )


def family_params_table(posterior: xr.Dataset, family, prob: float = 0.95) -> pd.DataFrame | None:
    """The family's parameters other than ``sigma`` (the negative binomial's ``dispersion``), or None.

    Posterior median (``Estimate``) and equal-tailed interval, one row per parameter; ``sigma`` is the
    ``Residual`` row of :func:`ranef_var_table`.
    """
    names = [name for name in family.aux if name != "sigma"]
    if not names:
        return None
    draws = np.stack([stack_draws(posterior, name) for name in names], axis=-1)
    return _median_table(draws, pd.Index(names, name="parameter"), prob, value="Estimate")


def _median_table(draws: np.ndarray, index: pd.Index, prob: float, value: str, **labels) -> pd.DataFrame:
    flat = draws.reshape(draws.shape[0] * draws.shape[1], draws.shape[-1])
    low, high = interval_columns(prob)
    lower, median, upper = np.quantile(flat, [(1 - prob) / 2, 0.5, (1 + prob) / 2], axis=0)
    table = pd.DataFrame(labels, index=index)
    if value == "Std":
        table["Var"] = median**2
    table[value] = median
    table[low] = lower
    table[high] = upper
    return table




#: A standard deviation whose posterior 5% quantile is below this fraction of its median piles up at 0
#: (a half-normal posterior, the shape of "the data do not exclude 0", has a ratio of 0.09).
BOUNDARY_SD_RATIO = 0.1
#: A correlation whose posterior median exceeds this in absolute value is near +-1.
BOUNDARY_CORR = 0.9


def boundary_notes(design: Design, posterior: xr.Dataset) -> list[str]:
    """The Bayesian counterpart of lme4's singular fit: variances piling up at 0, correlations near +-1.

    Returns
    -------
    list of str
        One note per such parameter, saying what it means and what to do; empty when there is none.
    """
    notes = []
    for block in design.blocks:
        names = var_names(block)
        sd = stack_draws(posterior, names["sd"]).reshape(-1, block.n_terms)
        q05, q50 = np.quantile(sd, [0.05, 0.5], axis=0)
        for j, term in enumerate(block.terms):
            if q05[j] < BOUNDARY_SD_RATIO * q50[j]:
                notes.append(
                    f"the posterior of sd({term}|{block.factor}) piles up at 0 (5% quantile {q05[j]:.3g}, median "
                    f"{q50[j]:.3g}): the data do not rule out no variation (lme4 would likely report a singular "
                    "fit). Its estimate leans on the prior; consider dropping the term, or a prior that says "
                    "what is plausible"
                )
        if block.n_terms > 1:
            corr = stack_draws(posterior, names["corr"]).reshape(-1, block.n_terms, block.n_terms)
            for i in range(block.n_terms):
                for j in range(i):
                    median = float(np.median(corr[:, i, j]))
                    if abs(median) > BOUNDARY_CORR:
                        notes.append(
                            f"the correlation of {block.terms[j]} and {block.terms[i]} in {block.factor} is near "
                            f"{'+' if median > 0 else '-'}1 (posterior median {median:.2f}): the two group effects "
                            "move together (lme4 would report a singular fit); consider '||' (no correlation) "
                            "or dropping the slope"
                        )
    return notes


# ----------------------------------------------------------------------------------------- fits
def observed_response(design: Design) -> np.ndarray:
    """The response on the scale of the fitted means, shape (n,): the proportion of successes for binomial."""
    return design.y if design.trials is None else design.y / design.trials


def pearson_residuals(design: Design, family, mu: np.ndarray, aux: dict) -> np.ndarray:
    """``(y - E y) / sd(y)`` at means ``mu``, shape ``mu.shape`` ((n,) or (draws, n)).

    ``mu`` is on the family's scale (a probability for binomial: ``E y`` is trials x ``mu``); ``aux``
    holds the family's parameters (floats, or per-draw arrays of shape (draws,)).
    """
    trials = 1.0 if design.trials is None else design.trials
    return (design.y - trials * mu) / np.sqrt(family.variance(mu, aux, design.trials))


def fitted_data(design: Design, fits: np.ndarray, pearson: np.ndarray) -> pd.DataFrame:
    """A copy of the rows used with ``fits``, ``residuals`` and ``pearson_residuals`` (pymer4's ``data``).

    ``fits`` are expected responses (probabilities for binomial models, mean counts for counts);
    ``residuals`` the observed response (a proportion for binomial models) minus ``fits``. A column of
    the user's data with one of these names is kept; the model's gets a ``_model`` suffix, with a warning.
    """
    frame = design.data.copy()
    names = _free_names(frame, ("fits", "residuals", "pearson_residuals"))
    for name, values in zip(names, (fits, observed_response(design) - fits, pearson)):
        frame[name] = values
    return frame


def _free_names(frame: pd.DataFrame, names: tuple[str, ...]) -> list[str]:
    """``names`` for new columns of ``frame``; a name the user's data already has gets a ``_model`` suffix
    (with a warning), so that the user's own column is never overwritten."""
    import warnings

    out = []
    for name in names:
        if name in frame.columns:
            free = f"{name}_model"
            while free in frame.columns:
                free += "_"
            warnings.warn(
                f"the data has its own column {name!r}; the model's {name} are in {free!r}", UserWarning, stacklevel=4
            )
            name = free
        out.append(name)
    return out
