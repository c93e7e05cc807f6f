"""Plots of binomial and count models: group fits on the response scale, the rootogram, and observed
against replicated statistics per group. Structure only (bars, points, labels), no pixels."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from bayeslmm import DataError, Lmer, NotFittedError, load_dataset, plots  # noqa: E402


def _fit(model: Lmer) -> Lmer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(draws=200, tune=200, chains=2, random_seed=1, progressbar=False)
    return model


@pytest.fixture(scope="module")
def binomial() -> Lmer:
    return _fit(Lmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", load_dataset("cbpp"), family="binomial"))


@pytest.fixture(scope="module")
def counts() -> Lmer:
    return _fit(Lmer("TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)", load_dataset("grouseticks"), family="negbinomial"))


@pytest.fixture(scope="module")
def rates() -> Lmer:
    return _fit(Lmer("incidence ~ period + offset(log(size)) + (1 | herd)", load_dataset("cbpp"), family="poisson"))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() < 1.0]


def test_rootogram_hangs_one_bar_per_count(counts, tmp_path):
    fig = plots.plot_rootogram(counts, max_count=30, n_draws=100)
    ax = fig.axes[0]
    bars = _bars(ax)
    assert len(bars) == 31
    y = counts.design.y
    observed = np.bincount(np.minimum(y, 30).astype(int), minlength=31)
    # each bar is sqrt(observed) tall, its top on the expected curve
    np.testing.assert_allclose([b.get_height() for b in bars], np.sqrt(observed))
    curve = [line for line in ax.lines if len(line.get_xdata()) == 31][0]
    tops = [b.get_y() + b.get_height() for b in bars]
    np.testing.assert_allclose(tops, curve.get_ydata())
    assert ax.get_xticklabels()[-1].get_text() == ">=30"
    fig.savefig(tmp_path / "rootogram.png")


def test_ppc_groups_one_point_per_level(binomial, tmp_path):
    fig = plots.plot_ppc_groups(binomial, n_draws=100)
    ax = fig.axes[0]
    observed = [c for c in ax.collections if isinstance(c, PathCollection)][-1].get_offsets()
    assert len(observed) == 15
    herd = binomial.design.blocks[0]
    totals = np.bincount(herd.group_index, weights=binomial.design.trials)
    proportions = np.bincount(herd.group_index, weights=binomial.design.y) / totals
    np.testing.assert_allclose(np.sort(observed[:, 0]), np.sort(proportions))
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == sorted(str(v) for v in herd.levels)
    assert "of 15 groups observed outside" in fig.legends[-1].get_title().get_text()
    fig.savefig(tmp_path / "groups.png")


def test_ppc_groups_by_a_data_column_and_for_counts(binomial, counts):
    fig = plots.plot_ppc_groups(binomial, "period", n_draws=50)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] != []
    assert len([c for c in fig.axes[0].collections if isinstance(c, PathCollection)][-1].get_offsets()) == 4
    fig = plots.plot_ppc_groups(counts, n_draws=50, max_groups=10)
    assert len(fig.axes[0].get_yticks()) == 10
    assert "Showing 10 of 63 levels" in fig.legends[-1].get_title().get_text()


def test_group_fits_show_proportions_and_rates(binomial, rates):
    fig = plots.plot_group_fits(binomial, "period")
    points = np.concatenate([c.get_offsets()[:, 1] for ax in fig.axes for c in ax.collections
                             if isinstance(c, PathCollection) and len(c.get_offsets())])
    assert points.min() >= -0.05 and points.max() <= 1.05  # proportions (jittered), not counts of successes
    assert "proportion" in fig.axes[0].get_ylabel()
    fig = plots.plot_group_fits(rates, "period")
    assert "exp(offset)" in fig.axes[0].get_ylabel()


def test_discrete_plots_refuse_other_models(binomial):
    gaussian = Lmer("Reaction ~ Days + (1 | Subject)", load_dataset("sleepstudy"))
    with pytest.raises(NotFittedError):
        plots.plot_rootogram(gaussian)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gaussian.fit(draws=50, tune=50, chains=2, random_seed=1, progressbar=False)
    with pytest.raises(DataError, match="discrete"):
        plots.plot_rootogram(gaussian)
    with pytest.raises(DataError, match="discrete"):
        plots.plot_ppc_groups(gaussian)
    with pytest.raises(DataError, match="neither a grouping factor"):
        plots.plot_ppc_groups(binomial, "nonexistent")
    with pytest.raises(ValueError, match="prob"):
        plots.plot_rootogram(binomial, prob=1.5)


def test_lmer_methods_draw_the_same_plots(binomial):
    assert len(binomial.plot_ppc_groups(n_draws=20).axes) == 1
    assert len(binomial.plot_rootogram(n_draws=20).axes) == 1
