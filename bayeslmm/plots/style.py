"""Style of every bayeslmm figure: the colour meanings, figure and facet layout, legends and notes.

Colours come from the Okabe-Ito palette (:data:`OKABE_ITO`), which stays distinguishable under the
common forms of colour blindness; the same meaning keeps the same colour in every plot (:data:`COLORS`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

#: The Okabe-Ito palette (Okabe & Ito 2008), safe for the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: What each colour means, the same in every plot.
COLORS = {
    "posterior": OKABE_ITO["blue"],  # partial pooling, Bayesian estimates and bands
    "no_pooling": OKABE_ITO["vermillion"],
    "complete_pooling": OKABE_ITO["bluish_green"],
    "frequentist": OKABE_ITO["vermillion"],  # REML estimates and confidence intervals
    "prior": OKABE_ITO["orange"],
    "replicated": OKABE_ITO["sky_blue"],
    "data": "#3b3b3b",
    "reference": "#8c8c8c",
}

#: Probabilities of the nested credible bands and intervals, unless the caller says otherwise.
DEFAULT_PROBS = (0.5, 0.95)
#: Font size of the notes under a figure.
NOTE_SIZE = 8


def percent(prob: float) -> str:
    return f"{100 * prob:g}%"


def prob_label(probs: Sequence[float]) -> str:
    return "/".join(percent(p) for p in sorted(probs))


def facet_title(factor: str, level: Any) -> str:
    text = f"{factor} {level}"
    return text if len(text) <= 18 else shorten(level)


def shorten(value: Any, width: int = 18) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def single_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes, bool]:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise ValueError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax, True


def make_facets(
    n: int,
    col_wrap: int,
    panel_size: tuple[float, float],
    sharey: bool,
    axes: Sequence[Axes] | None,
    sharex: bool = True,
) -> tuple[Figure, list[Axes], bool]:
    """``n`` panels wrapped in rows of ``col_wrap`` (unused cells removed), or the caller's axes."""
    if axes is not None:
        flat = list(np.ravel(np.asarray(axes, dtype=object)))
        if len(flat) < n or not all(isinstance(a, Axes) for a in flat):
            raise ValueError(f"axes must hold at least {n} matplotlib Axes (one per panel), got {len(flat)}")
        return flat[0].figure, flat[:n], False
    ncols = min(col_wrap, n)
    nrows = int(np.ceil(n / ncols))
    fig, grid = plt.subplots(
        nrows,
        ncols,
        figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.9),
        sharex=sharex,
        sharey=sharey,
        squeeze=False,
        layout="constrained",
    )
    cells = list(grid.ravel())
    for extra in cells[n:]:
        extra.remove()
    panels = cells[:n]
    if sharex:
        # Removed cells leave the panels above them without x tick labels; show them again.
        for index, panel in enumerate(panels):
            if index + ncols >= n:
                panel.xaxis.set_tick_params(labelbottom=True)
    return fig, panels, True


def wrap_title(text: str, fig: Figure) -> str:
    """Wrap a title to the figure's width (about nine 11-point characters per inch)."""
    return "\n".join(textwrap.wrap(text, max(int(fig.get_figwidth() * 9), 30)))


def label_outer(panels: list[Axes], ncols: int, xlabel: str, ylabel: str, owned: bool) -> None:
    """Axis labels on the bottom panel of each column and the first panel of each row (all if not owned)."""
    n = len(panels)
    for index, panel in enumerate(panels):
        if not owned or index + ncols >= n:
            panel.set_xlabel(xlabel, fontsize=9)
        if not owned or index % ncols == 0:
            panel.set_ylabel(ylabel, fontsize=9)


def finish_figure(
    fig: Figure,
    owned: bool,
    title: str = "",
    legend: list | None = None,
    note: str = "",
    ax: Axes | None = None,
) -> None:
    """Title, legend on top and a note underneath.

    On a figure this module created, the legend goes above the panels with the title as its heading
    and the note under everything. On the caller's axes (``owned=False``) the figure is left alone:
    the legend goes into ``ax`` and the note into its lower-left corner.
    """
    if not owned:
        if ax is not None and legend:
            ax.legend(handles=legend, fontsize=7, framealpha=0.9)
        if ax is not None and note:
            ax.text(
                0.01,
                0.01,
                "\n".join(textwrap.wrap(note, 70)),
                transform=ax.transAxes,
                fontsize=NOTE_SIZE - 1,
                color="#444444",
                va="bottom",
                ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0},
            )
        return
    if legend:
        longest = max(len(handle.get_label()) for handle in legend)
        ncols = int(np.clip(fig.get_figwidth() // (0.075 * longest + 0.7), 1, len(legend)))
        fig.legend(
            handles=legend,
            loc="outside upper center",
            ncols=ncols,
            fontsize=8,
            frameon=False,
            title=wrap_title(title, fig) or None,
            title_fontproperties={"size": 11},
        )
    elif title:
        fig.suptitle(wrap_title(title, fig), fontsize=11)
    if note:
        # A handle-less legend holds the note: the layout engine reserves room for it under the panels.
        wrapped = "\n".join(textwrap.wrap(note, int(fig.get_figwidth() * 14)))
        box = fig.legend(
            handles=[],
            loc="outside lower left",
            frameon=False,
            title=wrapped,
            alignment="left",
            title_fontproperties={"size": NOTE_SIZE},
        )
        box.get_title().set_color("#444444")
        box.set_gid("bayeslmm-note")


def band_alphas(n: int) -> list[float]:
    """Opacity of nested bands, widest (drawn first) lightest; overlapping bands add up."""
    return [0.2] * n if n > 1 else [0.3]


def interval_widths(n: int) -> list[float]:
    return list(np.linspace(1.0, 3.2, n)) if n > 1 else [1.6]


def point_alpha(n: int) -> float:
    return float(np.clip(30 / max(n, 1), 0.12, 0.75))


def nested_patches(probs: Sequence[float]) -> list[Patch]:
    """Legend patches of nested bands with the opacity each band shows on the plot."""
    ordered = sorted(probs)  # innermost first
    alpha = band_alphas(len(ordered))[0]
    patches = []
    for depth, prob in enumerate(ordered):
        layers = len(ordered) - depth  # the innermost band sits under every wider band
        visible = 1 - (1 - alpha) ** layers
        patches.append(
            Patch(color=COLORS["posterior"], alpha=visible, linewidth=0, label=f"{percent(prob)} credible band")
        )
    return patches


def interval_handles(probs: Sequence[float], small_dots: bool = False) -> list:
    widths = interval_widths(len(probs))
    if small_dots:
        mean = Line2D([], [], marker="o", linestyle="", color=OKABE_ITO["black"], markersize=3, label="posterior mean")
    else:
        mean = Line2D(
            [], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor=COLORS["posterior"],
            markersize=5, label="posterior mean",
        )  # fmt: skip
    handles = [mean]
    for prob, width in zip(sorted(probs, reverse=True), widths):
        handles.append(
            Line2D([], [], color=COLORS["posterior"], linewidth=width, label=f"{percent(prob)} credible interval")
        )
    return handles
