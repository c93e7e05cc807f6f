"""Posterior predictive checks for discrete responses: a rootogram for counts, groups for proportions.

A density or histogram of a count or binomial response hides what matters for these models: whether
the zeros and the tail are right (overdispersion, zero inflation), and whether each group's rate is
reproduced. Both figures compare the observed data with data sets replicated from the posterior
predictive distribution (``model.posterior_predictive``), so they include the posterior uncertainty.

- :func:`plot_rootogram`: Tukey's hanging rootogram (Kleiber and Zeileis 2016). For every count, the
  square root of its expected frequency under the posterior predictive is a curve; the observed
  frequency hangs from it as a bar, so a bar that ends above zero (too few observed) or below it (too
  many) shows a misfit on a scale where small frequencies stay visible.
- :func:`plot_ppc_groups`: per level of a grouping factor, the observed proportion of successes
  (binomial) or mean count (counts) against the interval of the same statistic in the replicated data
  sets. Points outside their interval are marked and counted in a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bayeslmm.errors import DataError
from bayeslmm.plots.common import check_fitted, check_positive_int, check_probability
from bayeslmm.plots.style import COLORS, OKABE_ITO, finish_figure, percent, shorten, single_axes

__all__ = ["plot_rootogram", "plot_ppc_groups"]

_DISCRETE = ("binomial", "poisson", "negbinomial")


def _check_discrete(model: Any, what: str) -> None:
    name = getattr(model.family, "name", "")
    if name not in _DISCRETE:
        raise DataError(
            f"{what} is for discrete responses (binomial, poisson, negbinomial); this model's family is "
            f"{name!r}: use plot_ppc"
        )


def plot_rootogram(
    model: Any,
    *,
    n_draws: int = 500,
    max_count: int | None = None,
    prob: float = 0.9,
    seed: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Hanging rootogram: observed count frequencies hanging from the posterior predictive ones.

    Parameters
    ----------
    model : Lmer
        A fitted model with a count response (poisson, negbinomial; binomial successes work too).
    n_draws : int
        Replicated data sets drawn (evenly spaced posterior draws).
    max_count : int, optional
        Largest count shown; larger counts are pooled into the last bar (labelled ``">= max_count"``).
        By default the largest observed count or the 99.5% quantile of the replicated counts, whichever
        is larger, at most 60.
    prob : float
        Probability of the band of replicated frequencies around the expected curve.
    seed : int
        Seed of the replicated draws.
    ax : Axes, optional
        Draw into this Axes.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError
        The model has not been fitted.
    DataError
        The response is not discrete.
    """
    check_fitted(model, "plot_rootogram")
    _check_discrete(model, "plot_rootogram")
    check_positive_int(n_draws=n_draws)
    check_probability(prob=prob)
    y = np.asarray(model.design.y, dtype=float)
    replicated = model.posterior_predictive(n_draws=n_draws, random_seed=seed)
    if max_count is None:
        max_count = int(min(max(y.max(), np.quantile(replicated, 0.995)), 60))
    else:
        check_positive_int(max_count=max_count)
    counts = np.arange(max_count + 1)
    top = max_count  # the last bin pools every count >= max_count
    observed = np.bincount(np.minimum(y, top).astype(np.int64), minlength=top + 1)[: top + 1]
    rep = np.minimum(replicated, top).astype(np.int64)
    frequencies = np.stack([np.bincount(r, minlength=top + 1)[: top + 1] for r in rep])
    expected = frequencies.mean(axis=0)
    low, high = np.quantile(np.sqrt(frequencies), [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    root_expected, root_observed = np.sqrt(expected), np.sqrt(observed)

    fig, ax, owned = single_axes(ax, (6.4, 4.0))
    ax.bar(counts, root_observed, bottom=root_expected - root_observed, width=0.8, color="#bdbdbd",
           edgecolor=OKABE_ITO["black"], linewidth=0.6, zorder=2)
    ax.fill_between(counts, low, high, step="mid", color=COLORS["replicated"], alpha=0.35, linewidth=0, zorder=1)
    ax.plot(counts, root_expected, color=COLORS["posterior"], linewidth=1.8, marker="o", markersize=3, zorder=3)
    ax.axhline(0.0, color=OKABE_ITO["black"], linewidth=0.8)
    ax.set_xlabel(_count_label(model))
    ax.set_ylabel("sqrt(frequency)")
    if top == max_count and (y.max() > max_count or replicated.max() > max_count):
        ticks = ax.get_xticks()
        ax.set_xticks(ticks[(ticks >= 0) & (ticks < top)].tolist() + [top])
        ax.set_xticklabels([f"{int(t)}" for t in ticks[(ticks >= 0) & (ticks < top)]] + [f">={top}"])
    ax.set_xlim(-0.7, top + 0.7)
    ax.grid(alpha=0.25, axis="y")
    legend = [
        Patch(facecolor="#bdbdbd", edgecolor=OKABE_ITO["black"], label="observed frequency (hanging)"),
        Line2D([], [], color=COLORS["posterior"], marker="o", markersize=3, label="expected (posterior predictive)"),
        Patch(facecolor=COLORS["replicated"], alpha=0.35, label=f"replicated, {percent(prob)} range"),
    ]
    note = (
        f"Bars ending above zero: fewer observations of that count than the model expects; below zero: more. "
        f"{len(replicated)} replicated data sets."
    )
    finish_figure(fig, owned, title=f"Rootogram: {model.design.formula.text}", legend=legend, note=note, ax=ax)
    return fig


def _count_label(model: Any) -> str:
    formula = model.design.formula
    return formula.binomial[0] if formula.binomial is not None else formula.response


def plot_ppc_groups(
    model: Any,
    group: str | None = None,
    *,
    n_draws: int = 500,
    prob: float = 0.9,
    max_groups: int = 40,
    seed: int = 0,
    ax: Axes | None = None,
) -> Figure:
    """Observed against replicated proportion (binomial) or mean count (counts) in every group.

    Parameters
    ----------
    model : Lmer
        A fitted model with a discrete response.
    group : str, optional
        The grouping factor; the model's first by default. Any data column may also be given, e.g. a
        categorical predictor, to check the fit across its levels.
    n_draws : int
        Replicated data sets drawn (evenly spaced posterior draws).
    prob : float
        Probability of the replicated intervals.
    max_groups : int
        Most groups drawn; beyond that an evenly spaced subset along the ranking of the observed
        statistic, with a note.
    seed : int
        Seed of the replicated draws.
    ax : Axes, optional
        Draw into this Axes.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    NotFittedError
        The model has not been fitted.
    DataError
        The response is not discrete, or ``group`` is neither a grouping factor nor a data column.
    """
    check_fitted(model, "plot_ppc_groups")
    _check_discrete(model, "plot_ppc_groups")
    check_positive_int(n_draws=n_draws, max_groups=max_groups)
    check_probability(prob=prob)
    design = model.design
    codes, levels, factor = _group_codes(design, group)
    binomial = model.family.name == "binomial"
    weights = design.trials if binomial else np.ones(design.n_obs)
    totals = np.bincount(codes, weights=weights, minlength=len(levels))
    observed = np.bincount(codes, weights=design.y, minlength=len(levels)) / totals
    replicated = model.posterior_predictive(n_draws=n_draws, random_seed=seed)
    per_group = np.stack([np.bincount(codes, weights=r, minlength=len(levels)) for r in replicated]) / totals
    low, mid, high = np.quantile(per_group, [(1 - prob) / 2, 0.5, (1 + prob) / 2], axis=0)
    outside = (observed < low) | (observed > high)

    order = np.argsort(observed, kind="stable")
    note_parts = []
    if len(levels) > max_groups:
        order = order[np.unique(np.round(np.linspace(0, len(levels) - 1, max_groups)).astype(int))]
        note_parts.append(
            f"Showing {len(order)} of {len(levels)} levels of {factor}, evenly spaced along the observed "
            f"{'proportion' if binomial else 'mean'}."
        )
    positions = np.arange(len(order))
    height = max(3.0, min(0.22 * len(order) + 1.2, 12.0))
    fig, ax, owned = single_axes(ax, (6.4, height))
    ax.hlines(positions, low[order], high[order], color=COLORS["replicated"], linewidth=3.0, alpha=0.8, zorder=1)
    ax.scatter(mid[order], positions, marker="|", s=60, color=COLORS["posterior"], zorder=2)
    colors = np.where(outside[order], OKABE_ITO["vermillion"], OKABE_ITO["black"])
    ax.scatter(observed[order], positions, s=22, color=colors, zorder=3)
    ax.set_yticks(positions)
    ax.set_yticklabels([shorten(levels[i]) for i in order], fontsize=7 if len(order) > 25 else 8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    statistic = "proportion of successes" if binomial else f"mean {_count_label(model)}"
    ax.set_xlabel(statistic)
    ax.set_ylabel(factor)
    ax.grid(alpha=0.25, axis="x")
    note_parts.append(
        f"{int(outside.sum())} of {len(levels)} groups observed outside their {percent(prob)} replicated "
        f"interval (about {percent(1 - prob)} expected by chance)."
    )
    legend = [
        Line2D([], [], color=OKABE_ITO["black"], marker="o", linestyle="", markersize=5, label="observed"),
        Line2D([], [], color=OKABE_ITO["vermillion"], marker="o", linestyle="", markersize=5, label="observed, outside"),
        Line2D([], [], color=COLORS["replicated"], linewidth=3, label=f"replicated, {percent(prob)} interval"),
        Line2D([], [], color=COLORS["posterior"], marker="|", linestyle="", markersize=9, label="replicated median"),
    ]
    finish_figure(fig, owned, title=f"Observed and replicated {statistic} per {factor}", legend=legend,
                  note=" ".join(note_parts), ax=ax)
    return fig


def _group_codes(design, group: str | None) -> tuple[np.ndarray, Sequence, str]:
    """Row codes, level labels and name of ``group``: a grouping factor, or any data column."""
    factors = design.factors
    if group is None or group in factors:
        factor = design.random.resolve_factor(group)
        block = design.blocks_of(factor)[0]
        return block.group_index, list(block.levels), factor
    if group not in design.data.columns:
        raise DataError(
            f"group={group!r} is neither a grouping factor ({list(factors)}) nor a column of the data"
        )
    codes, uniques = pd.factorize(design.data[group], sort=True)
    return codes.astype(np.int64), list(uniques), group
