"""Notebook display (``_repr_html_``) and the automatic progress bar."""

from __future__ import annotations

import re
import warnings

import pytest

from bayeslmm import Lm, Lm2, Lmer, lrt, load_dataset
from bayeslmm.engines import sampling as inference
from bayeslmm.results import report

SMALL = {"draws": 200, "tune": 200, "chains": 2, "random_seed": 7}


def _fit(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**SMALL)
    return model


@pytest.fixture(scope="module")
def sleep():
    return load_dataset("sleepstudy")


@pytest.fixture(scope="module")
def slopes(sleep) -> Lmer:
    return _fit(Lmer("Reaction ~ Days + (Days | Subject)", sleep))


@pytest.fixture(scope="module")
def intercepts(sleep) -> Lmer:
    return _fit(Lmer("Reaction ~ Days + (1 | Subject)", sleep))


# ------------------------------------------------------------------------------------------ HTML
def test_fitted_html_has_the_summary_tables(slopes):
    page = slopes._repr_html_()
    assert page.count("<table") == 3  # random effects, correlations, fixed effects
    for title in ("Random effects", "Correlations of random effects", "Fixed effects", "Diagnostics"):
        assert title in page
    assert "Reaction ~ Days + (Days | Subject)" in page and "Number of obs: 180" in page
    assert f"{slopes.coefs.loc['Days', 'Estimate']:.3f}" in page
    assert f"{slopes.ranef_var.loc['Residual', 'Std']:.3f}" in page
    assert f"{slopes.ranef_corr['Corr'].iloc[0]:.3f}" in page
    assert "ESS_tail" not in page and re.search(r"<td>\d+</td>", page)  # ESS as whole numbers, as printed


def test_text_and_html_come_from_the_same_parts(slopes):
    parts = slopes.summary().parts
    text, page = slopes.summary(), slopes._repr_html_()
    assert text.startswith("\n".join(parts.header))
    for title, frame in parts.tables:
        assert title in text and title in page
        assert frame.to_string(float_format=lambda v: f"{v:.3f}") in text
        assert frame.to_html(float_format=lambda v: f"{v:.3f}") in page
    for message in parts.diagnostics:
        assert f"  - {message}" in text


def test_model_without_correlations_has_two_tables(intercepts):
    assert intercepts._repr_html_().count("<table") == 2


def test_diagnostics_are_escaped_and_listed(slopes):
    model = Lmer(slopes.formula, load_dataset("sleepstudy"))
    model.idata, model.sampler = slopes.idata, slopes.sampler
    model.warnings = ["R-hat of x is 1.02 (> 1.01): <b>bad</b>"]
    page = model._repr_html_()
    assert "<li>R-hat of x is 1.02 (&gt; 1.01): &lt;b&gt;bad&lt;/b&gt;</li>" in page
    assert "1 warning(s)" in page


def test_unfitted_html_shows_priors(sleep):
    page = Lmer("Reaction ~ Days + (Days | Subject)", sleep)._repr_html_()
    assert "not fitted" in page and "Priors" in page and page.count("<table") == 1
    assert "sd(Days|Subject)" in page and "LKJ(eta=1)" in page


def test_other_results_have_html(sleep, slopes, intercepts):
    lm = Lm("Reaction ~ Days", sleep)
    assert "not fitted" in lm._repr_html_()
    _fit(lm)
    html = lm._repr_html_()
    assert html.count("<table") == 1 and "complete pooling" in html and "Residual SD" in html
    assert "not fitted" in Lm2("Reaction ~ Days", sleep, group="Subject")._repr_html_()
    assert "REML" in slopes.fit_frequentist()._repr_html_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "&lt;- best" in lrt(slopes, intercepts)._repr_html_()


# ------------------------------------------------------------------------------------------ progress bar
@pytest.mark.parametrize(
    ("env", "tty", "jupyter", "expected"),
    [
        ({}, True, False, True),  # a terminal
        ({}, False, True, True),  # a notebook
        ({}, False, False, False),  # redirected to a file or a pipe
        ({"CI": "true"}, True, False, False),  # CI wins, even with a terminal
        ({"CI": "1"}, False, True, False),
        ({"CI": ""}, True, False, True),  # set but empty is not CI
        ({"CI": "false"}, True, False, True),
        ({"CI": "0"}, False, True, True),
    ],
)
def test_auto_progressbar_rule(env, tty, jupyter, expected):
    assert inference.auto_progressbar(env, stderr_is_tty=tty, in_jupyter=jupyter) is expected


def test_explicit_progressbar_wins(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert inference.resolve_progressbar(True) is True
    assert inference.resolve_progressbar(None) is False
    monkeypatch.delenv("CI")
    monkeypatch.setattr(inference, "stderr_is_tty", lambda: True)
    assert inference.resolve_progressbar(None) is True
    assert inference.resolve_progressbar(False) is False


def test_fit_passes_the_resolved_setting(sleep, monkeypatch):
    from bayeslmm.engines import collapsed as marginal

    seen = []
    original = marginal.sample_marginal

    def spy(*args, **kwargs):
        seen.append(kwargs["progressbar"])
        return original(*args, **(kwargs | {"progressbar": False}))  # keep the test log clean

    monkeypatch.setattr(marginal, "sample_marginal", spy)
    monkeypatch.setattr(inference, "stderr_is_tty", lambda: True)
    model = Lmer("Reaction ~ Days + (1 | Subject)", sleep)
    small = {"draws": 50, "tune": 50, "chains": 1, "random_seed": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.delenv("CI", raising=False)
        model.fit(**small)  # a terminal, not CI: on
        monkeypatch.setenv("CI", "true")
        model.fit(**small)  # CI: off
        model.fit(**small, progressbar=True)  # asked for: on
    assert seen == [True, False, True]
