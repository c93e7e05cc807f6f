"""Tests of bayeslmm.plots: figure structure, PNG output, argument errors and large-data speed.

No pixel comparisons: every test checks what a figure is made of (panels, arrows, rows, labels).
One sleepstudy model is fitted for the module; categorical and InstEval-sized cases use a model with
a fake posterior of the right names and shapes, which is all the plots read.
"""

from __future__ import annotations

import time
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

from bayeslmm import DataError, Lmer, NotFittedError, load_dataset, plots  # noqa: E402
from bayeslmm.engines.posterior_names import var_names  # noqa: E402

N_SUBJECTS = 18


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def model(sleep) -> Lmer:
    fitted = Lmer("Reaction ~ Days + (Days | Subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted.fit(draws=300, tune=300, chains=2, random_seed=1)
    return fitted


@pytest.fixture(scope="module")
def unfitted(sleep) -> Lmer:
    return Lmer("Reaction ~ Days + (Days | Subject)", sleep)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_fit(model: Lmer, chains: int = 2, draws: int = 100, seed: int = 0) -> Lmer:
    """Give an unfitted model a posterior of random draws with the names and shapes of a real fit."""
    rng = np.random.default_rng(seed)
    design = model.design
    y_sd = float(np.std(design.y))
    coef = np.linalg.lstsq(design.X, design.y, rcond=None)[0]
    shape = (chains, draws)
    coords = {"chain": np.arange(chains), "draw": np.arange(draws), "fixed_term": list(design.fixed_terms)}
    data = {
        "beta": (("chain", "draw", "fixed_term"), coef + 0.02 * y_sd * rng.standard_normal(shape + (len(coef),))),
        "sigma": (("chain", "draw"), 0.8 * y_sd * np.exp(0.05 * rng.standard_normal(shape))),
    }
    for block in design.blocks:
        names = var_names(block)
        k, G = block.n_terms, block.n_levels
        sd = 0.3 * y_sd * np.exp(0.1 * rng.standard_normal(shape + (k,)))
        centre = rng.standard_normal((G, k)) * sd.mean(axis=(0, 1))
        coords[names["level"]] = list(block.levels)
        coords[names["term"]] = list(block.terms)
        data[names["sd"]] = (("chain", "draw", names["term"]), sd)
        data[names["ranef"]] = (
            ("chain", "draw", names["level"], names["term"]),
            centre + 0.3 * sd[:, :, None, :] * rng.standard_normal(shape + (G, k)),
        )
        if k > 1:
            coords[names["term_"]] = list(block.terms)
            corr = np.broadcast_to(np.eye(k), shape + (k, k)).copy()
            corr[..., 0, 1] = corr[..., 1, 0] = np.tanh(0.3 * rng.standard_normal(shape))
            data[names["corr"]] = (("chain", "draw", names["term"], names["term_"]), corr)
    model.idata = xr.DataTree.from_dict({"posterior": xr.Dataset(data, coords=coords)})
    return model


def assert_png(fig, tmp_path, name: str = "figure") -> None:
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    content = path.read_bytes()
    assert content[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(content) > 2000


def note_of(fig) -> str:
    return " ".join(legend.get_title().get_text() for legend in fig.legends if legend.get_gid() == "bayeslmm-note")


def quivers(ax) -> list[Quiver]:
    return [artist for artist in ax.collections if isinstance(artist, Quiver)]


# ------------------------------------------------------------------------------------------ group fits
def test_group_fit_lines_are_the_group_coefficients(model, sleep):
    """Each facet's posterior-mean line is coef(group) intercept + slope * x; its no-pooling line is the OLS line."""
    fig = plots.plot_group_fits(model, "Days", "Subject", no_pooling=True, complete_pooling=True)
    for ax, subject in zip(fig.axes, model.fixef.index):
        mean_line, no_pooling, complete = ax.lines[:3]
        x = np.asarray(mean_line.get_xdata())
        coef = model.fixef.loc[subject]
        np.testing.assert_allclose(mean_line.get_ydata(), coef["(Intercept)"] + coef["Days"] * x, rtol=1e-10)
        rows = sleep[sleep["Subject"] == subject]
        slope, intercept = np.polyfit(rows["Days"], rows["Reaction"], 1)
        np.testing.assert_allclose(no_pooling.get_ydata(), intercept + slope * x, rtol=1e-10)
    slope, intercept = np.polyfit(sleep["Days"], sleep["Reaction"], 1)
    np.testing.assert_allclose(complete.get_ydata(), intercept + slope * x, rtol=1e-10)


def test_group_fits_has_one_facet_per_subject(model, tmp_path):
    fig = plots.plot_group_fits(model, "Days", "Subject", no_pooling=True, complete_pooling=True)
    assert len(fig.axes) == N_SUBJECTS
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "Subject 308" and len(set(titles)) == N_SUBJECTS
    first = fig.axes[0]
    assert len(first.collections) >= 3  # two nested bands and the data points
    assert len(first.lines) == 3  # posterior mean, no pooling, complete pooling
    assert first.get_xlabel() == "" and fig.axes[-1].get_xlabel() == "Days"
    assert fig.axes[0].get_ylabel() == "Reaction"
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "50% credible band" in labels and "95% credible band" in labels
    assert_png(fig, tmp_path)


def test_group_fits_bands_are_nested_and_contain_the_mean(model):
    fig = plots.plot_group_fits(model, probs=(0.5, 0.8, 0.95), groups=[308, 309])
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    bands = [np.asarray(c.get_paths()[0].vertices[:, 1]) for c in ax.collections[:3]]
    widths = [np.ptp(b) for b in bands]
    assert widths[0] >= widths[1] >= widths[2]  # drawn widest first
    mean = ax.lines[0].get_ydata()
    assert np.all(mean > 150) and np.all(mean < 500)


def test_group_fits_categorical_predictor(sleep, tmp_path):
    data = sleep.assign(phase=np.where(sleep["Days"] < 2, "adaptation", "deprivation"))
    categorical = fake_fit(Lmer("Reaction ~ phase + (phase | Subject)", data))
    fig = plots.plot_group_fits(categorical, "phase", no_pooling=True)
    assert len(fig.axes) == N_SUBJECTS
    ticks = [label.get_text() for label in fig.axes[-1].get_xticklabels()]
    assert ticks == ["adaptation", "deprivation"]
    assert_png(fig, tmp_path)


def test_group_fits_draws_into_given_axes(model):
    fig, axes = plt.subplots(1, 3)
    returned = plots.plot_group_fits(model, groups=["308", "309", "310"], axes=axes)
    assert returned is fig and len(fig.axes) == 3
    with pytest.raises(ValueError, match="at least 4"):
        plots.plot_group_fits(model, groups=[308, 309, 310, 330], axes=axes)


def test_group_fits_rejects_bad_arguments(model, unfitted):
    with pytest.raises(NotFittedError, match="fit"):
        plots.plot_group_fits(unfitted)
    with pytest.raises(DataError, match="not a grouping factor"):
        plots.plot_group_fits(model, group="Patient")
    with pytest.raises(DataError, match="not a predictor"):
        plots.plot_group_fits(model, x="Nights")
    with pytest.raises(DataError, match="not levels"):
        plots.plot_group_fits(model, groups=[999])
    with pytest.raises(ValueError, match="between 0 and 1"):
        plots.plot_group_fits(model, probs=(0.5, 1.5))
    with pytest.raises(TypeError, match="Lmer"):
        plots.plot_group_fits("model")


# ------------------------------------------------------------------------------------------ shrinkage
def test_shrinkage_2d_has_one_arrow_per_subject(model, tmp_path):
    fig = plots.plot_shrinkage(model, ellipses=True)
    (ax,) = fig.axes
    (arrows,) = quivers(ax)
    assert arrows.N == N_SUBJECTS
    assert ax.get_xlabel().startswith("(Intercept)") and ax.get_ylabel().startswith("Days")
    labels = ax.get_legend_handles_labels()[1]
    assert "population mean (fixed effects)" in labels
    # arrows end at the partial-pooling estimates (posterior means of the group coefficients)
    ends = np.column_stack([arrows.X + arrows.U, arrows.Y + arrows.V])
    np.testing.assert_allclose(np.sort(ends[:, 1]), np.sort(model.fixef["Days"].to_numpy()), rtol=1e-6)
    assert any(isinstance(c, LineCollection) for c in ax.collections)  # the posterior ellipses
    assert_png(fig, tmp_path)


def test_shrinkage_1d_has_one_row_per_subject(model, tmp_path):
    fig = plots.plot_shrinkage(model, "Days")
    (ax,) = fig.axes
    assert quivers(ax)[0].N == N_SUBJECTS
    assert len(ax.get_yticks()) == N_SUBJECTS
    assert_png(fig, tmp_path)


def test_shrinkage_rejects_bad_arguments(model, unfitted):
    with pytest.raises(NotFittedError):
        plots.plot_shrinkage(unfitted)
    with pytest.raises(DataError, match="unknown term 'Dayz'"):
        plots.plot_shrinkage(model, "Dayz")
    with pytest.raises(DataError, match="not a grouping factor"):
        plots.plot_shrinkage(model, group="Patient")
    with pytest.raises(ValueError, match="no terms"):
        plots.plot_shrinkage(model, [])
    with pytest.raises(ValueError, match="ellipse_prob"):
        plots.plot_shrinkage(model, ellipse_prob=1.0)


# ------------------------------------------------------------------------------------------ caterpillar
def test_caterpillar_one_panel_per_term_one_row_per_level(model, tmp_path):
    fig = plots.plot_caterpillar(model)
    assert [ax.get_title() for ax in fig.axes] == ["(Intercept)", "Days"]
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert len(labels) == N_SUBJECTS
    # sorted by the intercept: the top row has the largest intercept deviation
    ranef = model.ranef["(Intercept)"]
    assert labels[-1] == str(ranef.idxmax()) and labels[0] == str(ranef.idxmin())
    assert_png(fig, tmp_path)


def test_caterpillar_fixef_and_single_term(model):
    fig = plots.plot_caterpillar(model, terms="Days", which="fixef")
    (ax,) = fig.axes
    reference = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    assert reference == pytest.approx([model.coefs.loc["Days", "Estimate"]])


def test_caterpillar_rejects_bad_arguments(model, unfitted):
    with pytest.raises(NotFittedError):
        plots.plot_caterpillar(unfitted)
    with pytest.raises(DataError, match="unknown term"):
        plots.plot_caterpillar(model, terms="Nights")
    with pytest.raises(DataError, match="not a grouping factor"):
        plots.plot_caterpillar(model, "Patient")
    with pytest.raises(ValueError, match="which"):
        plots.plot_caterpillar(model, which="coef")


# ------------------------------------------------------------------------------------------ coefficients
def test_coefs_one_row_per_fixed_effect_with_reml(model, tmp_path):
    fig = plots.plot_coefs(model, frequentist=True)
    assert [ax.get_ylabel() for ax in fig.axes] == ["(Intercept)", "Days"]
    days = fig.axes[1]
    markers = [c for c in days.collections if isinstance(c, PathCollection)]
    posterior_mean, reml_estimate = (m.get_offsets()[0][0] for m in markers)
    assert posterior_mean == pytest.approx(model.coefs.loc["Days", "Estimate"])
    assert reml_estimate == pytest.approx(10.467, abs=0.01)  # lme4's REML estimate
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "REML estimate, 95% CI" in labels
    assert_png(fig, tmp_path)


def test_coefs_intervals_and_term_selection(model):
    fig = plots.plot_coefs(model, "Days", kind="interval")
    assert len(fig.axes) == 1
    fig = plots.plot_coefs(model, intercept=False)
    assert [ax.get_ylabel() for ax in fig.axes] == ["Days"]


def test_coefs_rejects_bad_arguments(model, unfitted):
    with pytest.raises(NotFittedError):
        plots.plot_coefs(unfitted)
    with pytest.raises(DataError, match="unknown term 'Nights'"):
        plots.plot_coefs(model, "Nights")
    with pytest.raises(ValueError, match="kind"):
        plots.plot_coefs(model, kind="violin")
    with pytest.raises(ValueError, match="frequentist"):
        plots.plot_coefs(model, frequentist="yes")


# ------------------------------------------------------------------------------------------ variance components
def test_variance_components_panels_and_reml_lines(model, tmp_path):
    fig = plots.plot_variance_components(model)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "SD of (Intercept) | Subject",
        "SD of Days | Subject",
        "corr((Intercept), Days) | Subject",
        "SD of residual (sigma)",
    ]
    reml = [line.get_xdata()[0] for ax in fig.axes for line in ax.lines if line.get_linestyle() == "--"]
    assert reml == pytest.approx([24.74, 5.92, 0.066, 25.59], abs=0.02)  # lme4's REML estimates
    assert_png(fig, tmp_path)


def test_variance_components_without_reml_or_correlations(model):
    fig = plots.plot_variance_components(model, reml=False, correlations=False, residual=False)
    assert len(fig.axes) == 2
    assert not any(line.get_linestyle() == "--" for ax in fig.axes for line in ax.lines)
    with pytest.raises(ValueError, match="reml"):
        plots.plot_variance_components(model, reml="yes")
    with pytest.raises(NotFittedError):
        plots.plot_variance_components(Lmer("Reaction ~ Days + (1 | Subject)", model.design.data))


# ------------------------------------------------------------------------------------------ posterior predictive
@pytest.mark.parametrize("kind", ["kde", "hist", "ecdf"])
def test_ppc_kinds(model, tmp_path, kind):
    fig = plots.plot_ppc(model, n_draws=20, kind=kind)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "Reaction"
    assert any("observed" == label for label in ax.get_legend_handles_labels()[1])
    if kind in ("kde", "ecdf"):
        (replicated,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(replicated.get_segments()) == 20
    assert_png(fig, tmp_path, kind)


def test_ppc_rejects_bad_arguments(model, unfitted):
    with pytest.raises(NotFittedError):
        plots.plot_ppc(unfitted)
    with pytest.raises(ValueError, match="kind"):
        plots.plot_ppc(model, kind="violin")
    with pytest.raises(ValueError, match="n_draws"):
        plots.plot_ppc(model, n_draws=0)


def test_ppc_draws_into_given_axes(model):
    fig, ax = plt.subplots()
    assert plots.plot_ppc(model, n_draws=5, ax=ax) is fig


# ------------------------------------------------------------------------------------------ comparison
def test_compare_plots_every_model_of_an_lrt(model, sleep, tmp_path):
    from bayeslmm.analysis.comparison import lrt

    simpler = Lmer("Reaction ~ Days + (1 | Subject)", sleep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simpler.fit(draws=200, tune=200, chains=2, random_seed=2)
        table = lrt(model, simpler, names=["slopes", "intercepts"])
    fig = plots.plot_compare(table)
    (ax,) = fig.axes
    assert sorted(label.get_text() for label in ax.get_yticklabels()) == ["intercepts", "slopes"]
    assert "elpd_loo" in ax.get_xlabel()
    assert_png(fig, tmp_path)


def test_compare_accepts_a_plain_table_and_rejects_others():
    table = pd.DataFrame(
        {
            "elpd_loo": [-880.0, -900.0, -950.0],
            "SE": [14.0, 12.0, 10.0],
            "elpd_diff": [0.0, -20.0, -70.0],
            "SE_diff": [0, 6.0, 9.0],
        },
        index=pd.Index(["a", "b", "c"], name="model"),
    )
    fig = plots.plot_compare(table)
    labels = [label.get_text() for label in fig.axes[0].get_yticklabels()]
    assert labels == ["a", "b", "c"]  # best on top
    with pytest.raises(ValueError, match="elpd"):
        plots.plot_compare(table.drop(columns="elpd_loo"))
    with pytest.raises(ValueError, match="DataFrame|table"):
        plots.plot_compare([1, 2])


# ------------------------------------------------------------------------------------------ prior vs posterior
def test_prior_posterior_every_hyperparameter(model, tmp_path):
    fig = plots.plot_prior_posterior(model)
    assert len(fig.axes) == 6  # 2 fixed effects, 2 SDs, 1 correlation, sigma
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "contraction" in texts and "HalfStudentT" in texts and "LKJ(eta=1)" in texts
    assert_png(fig, tmp_path)


def test_prior_posterior_selected_parameters_by_name_or_prior_key(model):
    fig = plots.plot_prior_posterior(model, ["Days", "Days|Subject", "corr(Subject)", "sigma"])
    assert [ax.get_title() for ax in fig.axes] == [
        "fixed effect: Days",
        "SD of Days | Subject",
        "corr((Intercept), Days) | Subject",
        "SD of residual (sigma)",
    ]


def test_prior_of_the_intercept_is_on_the_reported_scale(model):
    from bayeslmm.plots.common import hyperparameters as _hyperparameters
    from bayeslmm.plots.priors import _prior_draws

    params = [p for p in _hyperparameters(model) if p.kind == "fixed"]
    draws = _prior_draws(model, params, 20000, seed=1)
    prior = model._priors.fixed
    mean_days = model.design.X[:, 1].mean()
    expected_sd = np.hypot(prior["(Intercept)"].params["sigma"], mean_days * prior["Days"].params["sigma"])
    assert np.std(draws["(Intercept)"]) == pytest.approx(expected_sd, rel=0.03)


def test_prior_posterior_rejects_bad_arguments(model, unfitted):
    with pytest.raises(NotFittedError):
        plots.plot_prior_posterior(unfitted)
    with pytest.raises(DataError, match="not a parameter"):
        plots.plot_prior_posterior(model, "sd(Days|Patient)")


# ------------------------------------------------------------------------------------------ Lmer methods
@pytest.mark.skipif(not hasattr(Lmer, "plot_group_fits"), reason="Lmer has no plot methods yet")
def test_lmer_plot_methods_match_the_functions(model):
    assert len(model.plot_group_fits(groups=[308, 309]).axes) == 2
    assert quivers(model.plot_shrinkage().axes[0])[0].N == N_SUBJECTS
    assert len(model.plot_caterpillar().axes) == 2
    assert len(model.plot_coefs().axes) == 2
    assert len(model.plot_variance_components(reml=False).axes) == 4
    assert len(model.plot_ppc(n_draws=5).axes) == 1
    assert len(model.plot_prior_posterior("sigma").axes) == 1


# ------------------------------------------------------------------------------------------ large data
@pytest.fixture(scope="module")
def insteval() -> Lmer:
    return fake_fit(Lmer("y ~ service + (1|s) + (1|d) + (1|dept)", load_dataset("InstEval")), draws=100)


def test_insteval_plots_are_subsampled_with_a_note_and_fast(insteval, tmp_path):
    timings = {}

    def timed(name, make):
        started = time.perf_counter()
        fig = make()
        fig.savefig(tmp_path / f"{name}.png", dpi=50)
        timings[name] = time.perf_counter() - started
        return fig

    fig = timed("group_fits", lambda: plots.plot_group_fits(insteval, group="s", no_pooling=True))
    assert len(fig.axes) == 24 and "Showing 24 of 2972 levels of s" in note_of(fig)
    fig = timed("caterpillar", lambda: plots.plot_caterpillar(insteval, "s"))
    assert len(fig.axes[0].get_yticks()) == 0 and "2972 levels" in note_of(fig)
    fig = timed("shrinkage", lambda: plots.plot_shrinkage(insteval, group="d"))
    assert quivers(fig.axes[0])[0].N == 60 and "random 60 of 1128 groups of d" in note_of(fig)
    timed("ppc", lambda: plots.plot_ppc(insteval))
    timed("coefs", lambda: plots.plot_coefs(insteval))
    timed("variance", lambda: plots.plot_variance_components(insteval, reml=False))
    timed("prior", lambda: plots.plot_prior_posterior(insteval))
    assert max(timings.values()) < 20, timings
