"""What the plots share besides style: argument checks, draws of model parameters, densities."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.engines import least_squares
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.errors import DataError, NotFittedError
from bayeslmm.results.fitted import FittedModel
from bayeslmm.spec.design import Design
from bayeslmm.spec.random_effects import INTERCEPT, RandomBlock


def check_fitted(model: Any, what: str) -> None:
    """Raise unless ``model`` is a fitted bayeslmm model of one response (Lmer or Lm)."""
    if not isinstance(model, FittedModel) or model.per_group:
        raise TypeError(f"{what} needs a bayeslmm Lmer (or Lm) model, got {type(model).__name__}")
    if model.idata is None:
        raise NotFittedError(f"{what} needs a fitted model: call model.fit() first")


def reml_fit(model: Any):
    """The model's REML fit (computed once per model, by ``model.fit_frequentist``)."""
    if not hasattr(model, "fit_frequentist"):
        raise DataError(f"{type(model).__name__} has no REML fit: only mixed models (Lmer) have one")
    return model.fit_frequentist(REML=True)


def response_scale(model: Any) -> tuple[np.ndarray, str]:
    """The observed response on the scale of the expected response, and its axis label.

    A binomial response becomes the proportion of successes (successes / trials); counts with an offset
    on the log scale become rates per unit of exposure (``y / exp(offset)``), the scale on which group
    fits evaluate the expected response (offset 0); everything else is the response itself.
    """
    design = model.design
    name = design.formula.response
    if design.formula.binomial is not None:
        name = design.formula.binomial[0]
    if design.trials is not None and getattr(model.family, "name", "") == "binomial":
        if np.all(design.trials == 1):
            return design.y, f"{name} (proportion)"
        return design.y / design.trials, f"{name} (proportion)"
    if design.offset is not None and model.family.link.name == "log":
        return design.y / np.exp(design.offset), f"{name} / exp(offset)"
    return design.y, name


def group_terms(design: Design, factor: str) -> list[str]:
    return list(dict.fromkeys(term for block in design.blocks_of(factor) for term in block.terms))


_INTERCEPT_ALIASES = {"1", "Intercept", "intercept", INTERCEPT}


def resolve_terms(terms: str | Sequence[str], available: Sequence[str], what: str) -> list[str]:
    requested = [terms] if isinstance(terms, str) else list(terms)
    if not requested:
        raise ValueError(f"no terms given; {what} are {list(available)}")
    chosen = []
    for term in requested:
        name = INTERCEPT if term in _INTERCEPT_ALIASES and INTERCEPT in available else term
        if name not in available:
            raise DataError(f"unknown term {term!r}; {what} are {list(available)}")
        chosen.append(name)
    return list(dict.fromkeys(chosen))


def group_draws(design: Design, posterior, factor: str, terms: Sequence[str], total: bool) -> np.ndarray:
    """Flattened draws of the group effects of ``terms``, shape (S, G, len(terms)); plus beta if total."""
    beta = flat_draws(posterior, "beta") if total else None
    columns = []
    for term in terms:
        block, j = find_term(design, factor, term)
        draws = flat_draws(posterior, var_names(block)["ranef"])[:, :, j]
        if total and term in design.fixed_terms:
            draws = draws + beta[:, [design.fixed_terms.index(term)]]
        columns.append(draws)
    return np.stack(columns, axis=-1)


def find_term(design: Design, factor: str, term: str) -> tuple[RandomBlock, int]:
    for block in design.blocks_of(factor):
        if term in block.terms:
            return block, block.terms.index(term)
    raise DataError(f"term {term!r} has no group effect on {factor!r}")


def fixed_means(design: Design, posterior, terms: Sequence[str]) -> np.ndarray:
    """Posterior means of the fixed effects of ``terms`` (0 for a term without a fixed effect)."""
    beta = flat_draws(posterior, "beta").mean(axis=0)
    return np.array([beta[design.fixed_terms.index(t)] if t in design.fixed_terms else 0.0 for t in terms])


def flat_draws(posterior, name: str) -> np.ndarray:
    """Draws of a posterior variable with chains and draws flattened: shape (chain * draw, ...)."""
    values = np.asarray(posterior[name].transpose("chain", "draw", ...).values)
    return values.reshape(-1, *values.shape[2:])


def kde_density(
    samples: np.ndarray, grid: np.ndarray, lower: float | None = None, upper: float | None = None
) -> np.ndarray:
    """Gaussian kernel density on an even grid, by binning and convolution (linear in the sample size).

    Bounded supports are handled by reflecting the samples at ``lower`` and ``upper``.
    """
    x = np.asarray(samples, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        return np.zeros_like(grid)
    dx = grid[1] - grid[0]
    spread = x.std(ddof=1)
    iqr = np.subtract(*np.percentile(x, [75, 25])) / 1.349
    bandwidth = 0.9 * (min(spread, iqr) if iqr > 0 else spread) * x.size**-0.2
    bandwidth = max(bandwidth, dx / 2)
    edges = np.append(grid - dx / 2, grid[-1] + dx / 2)
    counts = np.histogram(x, bins=edges)[0].astype(float)
    for bound in (lower, upper):
        if bound is not None:
            counts += np.histogram(2 * bound - x, bins=edges)[0]
    half = int(min(np.ceil(4 * bandwidth / dx), len(grid)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / bandwidth) ** 2)
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="full")[half : half + len(grid)]
    density = smooth / (x.size * dx)
    if lower is not None:
        density[grid < lower] = 0.0
    if upper is not None:
        density[grid > upper] = 0.0
    return density


def density_grid(draws: np.ndarray, bounds, extra: float | None = None, n: int = 300) -> np.ndarray:
    lo, hi = np.quantile(draws, [0.001, 0.999])
    if extra is not None and np.isfinite(extra):
        lo, hi = min(lo, extra), max(hi, extra)
    pad = 0.08 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    return np.linspace(lo, hi, n)


def check_probs(probs: Sequence[float]) -> None:
    values = list(probs) if not isinstance(probs, int | float) else [probs]
    if not values or not all(isinstance(p, int | float) and 0 < p < 1 for p in values):
        raise ValueError(f"probabilities must be numbers between 0 and 1, got {probs!r}")


def check_probability(**values: Any) -> None:
    """Each named value lies strictly between 0 and 1 (an interval's or band's probability)."""
    for name, value in values.items():
        if not 0 < value < 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


def check_positive_int(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, eq=False)
class Param:
    """A scalar hyperparameter.

    ``kind`` is ``"fixed"``, ``"sd"``, ``"corr"`` or ``"sigma"``; ``draws`` its flattened posterior
    draws; ``bounds`` its support (None for unbounded); ``key`` where its prior lives
    (``("sd", block, term)``, ``("corr", block)``, ...); ``aliases`` other names users may type.
    """

    name: str
    title: str
    kind: str
    draws: np.ndarray
    bounds: tuple
    key: tuple = ()
    aliases: frozenset = frozenset()


def hyperparameters(model: Any) -> list[Param]:
    """Fixed effects, SDs, correlations and sigma, in summary order (fixed effects first)."""
    design, posterior = model.design, model.posterior
    beta = flat_draws(posterior, "beta")
    params = [
        Param(t, f"fixed effect: {t}", "fixed", beta[:, j], (None, None), ("fixed", t))
        for j, t in enumerate(design.fixed_terms)
    ]
    for block in design.blocks:
        names = var_names(block)
        sd = flat_draws(posterior, names["sd"])
        for j, term in enumerate(block.terms):
            name = f"sd({term}|{block.name})"
            aliases = {f"{term}|{block.factor}", f"sd({term}|{block.factor})"}
            if term == INTERCEPT:
                aliases |= {f"1|{block.factor}", f"sd(1|{block.factor})", f"Intercept|{block.factor}"}
            params.append(
                Param(
                    name,
                    f"SD of {term} | {block.name}",
                    "sd",
                    sd[:, j],
                    (0.0, None),
                    ("sd", block.name, term),
                    frozenset(aliases),
                )
            )
        if block.n_terms > 1:
            corr = flat_draws(posterior, names["corr"])
            for i in range(block.n_terms):
                for j in range(i):
                    a, b = block.terms[j], block.terms[i]
                    name = f"corr({a},{b}|{block.name})"
                    aliases = {f"corr({a}, {b}|{block.name})", f"corr({b},{a}|{block.name})"}
                    if block.n_terms == 2:
                        aliases.add(f"corr({block.name})")
                    params.append(
                        Param(
                            name,
                            f"corr({a}, {b}) | {block.name}",
                            "corr",
                            corr[:, i, j],
                            (-1.0, 1.0),
                            ("corr", block.name),
                            frozenset(aliases),
                        )
                    )
    if "sigma" in posterior:
        params.append(
            Param("sigma", "SD of residual (sigma)", "sigma", flat_draws(posterior, "sigma"), (0.0, None), ("sigma",))
        )
    return params


def no_pooling_fits(model: Any, factor: str) -> pd.DataFrame:
    """No-pooling least-squares coefficients per level (:func:`bayeslmm.engines.least_squares.no_pooling`).

    Its warning about groups that cannot identify their own coefficients is not repeated: the plots
    leave those groups out and say so in a note.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return least_squares.no_pooling(model.design, factor)
