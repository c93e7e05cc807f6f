"""Power curve: frequentist power and Bayesian assurance by number of groups, and the interval width."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bayeslmm.plots.style import COLORS, finish_figure, make_facets

_MC_COLUMNS = ("2.5_ci", "97.5_ci")


def plot_power(curve: Any, *, target: float | None = 0.8, axes: Sequence[Axes] | None = None) -> Figure:
    """Power and assurance against the number of groups, with Monte Carlo intervals; mean interval width.

    Left panel: the share of simulated studies whose REML test rejects (power, frequentist colour)
    and whose Bayesian interval excludes 0 (assurance, posterior colour), each with its Monte Carlo
    95% interval, and a dashed line at ``target``. Right panel: the mean width of the Bayesian
    interval (precision) with its Monte Carlo interval (empty for a term with several columns).

    Parameters
    ----------
    curve : PowerCurve
        From :func:`bayeslmm.power` (its ``table`` and ``settings`` are read).
    target : float, optional
        Power to mark, e.g. 0.8; None marks nothing.
    axes : sequence of two Axes, optional
        Draw into these.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        ``curve`` is not a power curve, or ``axes`` holds fewer than two Axes.
    """
    table = getattr(curve, "table", None)
    settings = getattr(curve, "settings", None)
    if not isinstance(table, pd.DataFrame) or not isinstance(settings, dict) or "power" not in table:
        raise ValueError(f"plot_power needs the result of bayeslmm.power, got {type(curve).__name__}")
    fig, (left, right), owned = make_facets(2, 2, (3.8, 3.0), sharey=False, axes=axes, sharex=True)
    sizes = table.index.to_numpy(dtype=float)
    low, high = _MC_COLUMNS
    region = "interval" if settings.get("test", "t") == "t" else "ellipsoid"
    for offset, (name, color, label) in enumerate(
        (
            ("power", COLORS["frequentist"], f"power (REML {settings['test']} test, p < {settings['alpha']:g})"),
            ("assurance", COLORS["posterior"], f"assurance ({100 * settings['prob']:g}% {region} excludes 0)"),
        )
    ):
        values = table[name].to_numpy(dtype=float)
        error = np.vstack([values - table[f"{name}_{low}"], table[f"{name}_{high}"] - values])
        shift = (offset - 0.5) * 0.012 * (sizes.max() - sizes.min() or 1.0)
        left.errorbar(sizes + shift, values, yerr=error, fmt="o-", color=color, capsize=3, markersize=4,
                      linewidth=1.2, label=label)
    if target is not None:
        left.axhline(target, color=COLORS["reference"], linestyle="--", linewidth=1)
    left.set_ylim(-0.02, 1.02)
    left.set_ylabel("share of simulated studies")
    left.legend(fontsize=7, loc="lower right", framealpha=0.9)
    width = table["width"].to_numpy(dtype=float)
    right.errorbar(sizes, width, yerr=np.vstack([width - table[f"width_{low}"], table[f"width_{high}"] - width]),
                   fmt="o-", color=COLORS["posterior"], capsize=3, markersize=4, linewidth=1.2)
    right.set_ylabel(f"mean width of the {100 * settings['prob']:g}% interval")
    for ax in (left, right):
        ax.set_xlabel(settings.get("size_label", f"number of {settings['factor']} levels"))
        ax.grid(alpha=0.25)
        ax.set_xticks(sizes)
    values = ", ".join(f"{name} = {value:g}" for name, value in settings["effect"].items())
    note = f"{values}; {settings['n_sims']} simulations per size; bars: Monte Carlo 95% intervals"
    finish_figure(fig, owned, title=f"Power curve: {settings['formula']}", note=note, ax=left)
    return fig
