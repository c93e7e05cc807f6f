"""pymer4's remaining names: plot_summary(), plot(param), and to_bambi() for Bambi's users."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bayeslmm import Lmer, Prior, UnsupportedSyntaxError  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_summary_and_plot_are_the_coefficient_and_group_fit_plots(sleep_corr):
    summary = sleep_corr.plot_summary(intercept=False)
    coefs = sleep_corr.plot_coefs(intercept=False)
    assert len(summary.axes) == len(coefs.axes) == 1
    assert summary.axes[0].get_ylabel() == coefs.axes[0].get_ylabel()
    fits = sleep_corr.plot("Days", groups=[308, 309])
    reference = sleep_corr.plot_group_fits("Days", groups=[308, 309])
    assert [ax.get_title() for ax in fits.axes] == [ax.get_title() for ax in reference.axes]
    assert [ax.get_title() for ax in fits.axes] == ["Subject 308", "Subject 309"]


@pytest.fixture(scope="module")
def bambi_model(sleep):
    pytest.importorskip("bambi")
    model = Lmer("Reaction ~ Days + (Days || Subject)", sleep, priors={"Days": Prior("Normal", mu=0, sigma=20)})
    return model, model.to_bambi()


def test_to_bambi_has_the_same_terms_data_and_priors(bambi_model):
    model, bmb_model = bambi_model
    assert bmb_model.formula.main == "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"
    component = bmb_model.parameters["mu"]
    assert list(component.common_terms) == ["Days"]
    assert sorted(component.group_specific_terms) == ["1|Subject", "Days|Subject"]
    np.testing.assert_allclose(np.asarray(component.design.common.design_matrix), model.design.X)
    # every prior is this model's, the user's override included
    priors = model.model_priors
    days = component.common_terms["Days"].prior
    assert (days.name, days.args["mu"], days.args["sigma"]) == ("Normal", 0.0, 20.0)
    intercept = component.intercept_term.prior
    assert intercept.args["mu"] == pytest.approx(priors.fixed["(Intercept)"].params["mu"])
    assert intercept.args["sigma"] == pytest.approx(priors.fixed["(Intercept)"].params["sigma"])
    slope_sd = component.group_specific_terms["Days|Subject"].prior.args["sigma"]
    assert slope_sd.name == "HalfNormal"
    assert slope_sd.args["sigma"] == pytest.approx(priors.group_sd["Subject.1"]["Days"].params["sigma"])
    sigma = bmb_model.marginal_parameters["sigma"].prior
    assert (sigma.name, sigma.args["nu"]) == ("HalfStudentT", 4.0)


def test_to_bambi_refuses_what_bambi_cannot_express(sleep, cake):
    pytest.importorskip("bambi")
    with pytest.raises(UnsupportedSyntaxError, match=r"\(1 \+ Days \| Subject\) correlate.*'\|\|'"):
        Lmer("Reaction ~ Days + (1 + Days | Subject)", sleep).to_bambi()
    # a factor with custom coding goes through with its coding
    coded = Lmer("angle ~ recipe + (1 | replicate)", cake, factors={"recipe": ["C", "A", "B"]}).to_bambi()
    assert np.asarray(coded.parameters["mu"].design.common.design_matrix).shape == (270, 3)
