"""Model comparison: elpd (LOO) with standard errors for several models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bayeslmm.plots.style import COLORS, OKABE_ITO, finish_figure, single_axes


def plot_compare(table: Any, *, ax: Axes | None = None) -> Figure:
    """Expected log predictive density (LOO) of several models, with standard errors.

    Each model is a row: its ``elpd_loo`` with +- 1 SE (black), and for every model but the best the
    difference to the best with the SE of that difference (grey, drawn as an offset from the best
    model's elpd), as in McElreath's and ArviZ's comparison plots. Higher is better.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`bayeslmm.comparison.compare` or :func:`bayeslmm.comparison.lrt`: one row per model
        (the index or a ``model`` column names it) with ``elpd_loo`` and its standard error
        (``se``, ``elpd_se`` or ``elpd_loo_se``); optional ``elpd_diff`` and ``dse``.
    ax : Axes, optional
        Draw into this Axes.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        ``table`` is not a DataFrame or has no elpd or SE column.
    """
    frame = _comparison_frame(table)
    criterion = frame.attrs["criterion"]
    fig, ax, owned = single_axes(ax, (6.4, 1.4 + 0.55 * len(frame)))
    frame = frame.sort_values("elpd", ascending=False)
    y = np.arange(len(frame))[::-1].astype(float)
    best = frame["elpd"].iloc[0]
    ax.axvline(best, color=COLORS["reference"], linestyle="--", linewidth=1)
    ax.errorbar(
        frame["elpd"],
        y,
        xerr=frame["se"],
        fmt="o",
        color=OKABE_ITO["black"],
        capsize=3,
        markersize=6,
        label=f"{criterion} \u00b1 SE",
    )
    if "diff" in frame and "dse" in frame:
        rest = frame.iloc[1:]
        ax.errorbar(
            best - rest["diff"].abs(),
            y[1:] - 0.22,
            xerr=rest["dse"],
            fmt="^",
            color=COLORS["reference"],
            capsize=3,
            markersize=5,
            label="difference to best \u00b1 SE",
        )
    ax.set_yticks(y, [str(name) for name in frame.index], fontsize=9)
    ax.set_ylim(y.min() - 0.6, y.max() + 0.6)
    ax.set_xlabel(f"{criterion} (expected log predictive density), higher is better")
    ax.grid(axis="x", alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    finish_figure(fig, owned, title="Model comparison", ax=ax)
    return fig


_ELPD_COLUMNS = ("elpd_loo", "elpd_kfold", "elpd")
_SE_COLUMNS = ("SE", "se", "elpd_se", "elpd_loo_se")
_DIFF_COLUMNS = ("elpd_diff", "d_elpd")
_DSE_COLUMNS = ("SE_diff", "dse", "elpd_diff_se")


def _comparison_frame(table: Any) -> pd.DataFrame:
    """Normalise a comparison table to columns ``elpd``, ``se``, and ``diff``, ``dse`` when present."""
    if not isinstance(table, pd.DataFrame):
        raise ValueError(
            f"plot_compare needs the table returned by bayeslmm.comparison.compare or lrt, got {type(table).__name__}"
        )
    frame = pd.DataFrame(table)
    if "model" in frame.columns:
        frame = frame.set_index("model")
    elpd = next((c for c in _ELPD_COLUMNS if c in frame.columns), None)
    se = next((c for c in _SE_COLUMNS if c in frame.columns), None)
    if elpd is None or se is None:
        raise ValueError(
            f"the comparison table needs an elpd column (one of {list(_ELPD_COLUMNS)}) and its standard "
            f"error (one of {list(_SE_COLUMNS)}); its columns are {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise ValueError("the comparison table has no rows")
    out = pd.DataFrame({"elpd": frame[elpd].astype(float), "se": frame[se].astype(float)}, index=frame.index)
    out.attrs["criterion"] = elpd
    diff = next((c for c in _DIFF_COLUMNS if c in frame.columns), None)
    dse = next((c for c in _DSE_COLUMNS if c in frame.columns), None)
    if diff is not None and dse is not None:
        out["diff"], out["dse"] = frame[diff].astype(float), frame[dse].astype(float)
    return out
