"""Bad input for binomial, Poisson and negative binomial models: refused when the model is built, before
anything is fitted or sampled, with the column and the offending rows named; the user's data never
modified. Also the response encodings that are valid (0/1, booleans, two levels, cbind, proportions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeslmm import Lmer, load_dataset
from bayeslmm.errors import DataError, UnsupportedSyntaxError

CBIND = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    data = load_dataset("cbpp")
    data.index = [f"r{i}" for i in range(len(data))]  # row labels, to see them named in messages
    return data


def _changed(data: pd.DataFrame, column: str, rows: list[str], value) -> pd.DataFrame:
    out = data.copy()
    out[column] = out[column].astype(float)
    out.loc[rows, column] = value
    return out


def test_binary_response_outside_zero_one(cbpp):
    with pytest.raises(DataError, match=r"'incidence' must be 0/1.*rows 'r0', 'r1', 'r2'.*cbind\(successes, failures\)"):
        Lmer("incidence ~ period + (1 | herd)", cbpp, family="binomial")


def test_more_successes_than_trials(cbpp):
    data = _changed(cbpp, "incidence", ["r3", "r9"], 40)
    with pytest.raises(DataError, match=r"more successes than trials in rows 'r3', 'r9'"):
        Lmer(CBIND, data, family="binomial")


@pytest.mark.parametrize("family", ["poisson", "negbinomial"])
@pytest.mark.parametrize("value, shown", [(-1, "-1.0"), (1.5, "1.5")])
def test_negative_or_fractional_counts(cbpp, family, value, shown):
    data = _changed(cbpp, "incidence", ["r5"], value)
    with pytest.raises(DataError, match=rf"counts of 'incidence' must be whole numbers >= 0; rows 'r5' hold {shown}"):
        Lmer("incidence ~ period + (1 | herd)", data, family=family)


def test_negative_successes_in_cbind(cbpp):
    data = _changed(cbpp, "incidence", ["r7"], -2)
    with pytest.raises(DataError, match=r"successes of 'cbind\(incidence, size - incidence\)'.*rows 'r7'"):
        Lmer(CBIND, data, family="binomial")


@pytest.mark.parametrize("exposure", [0, -3])
def test_non_positive_exposure_in_log_offset(cbpp, exposure):
    data = _changed(cbpp, "size", ["r2", "r11"], exposure)
    with np.errstate(all="ignore"), pytest.raises(DataError, match=r"offset\(log\(size\)\).*rows 'r2', 'r11'.*exposure must be positive"):
        Lmer("incidence ~ period + offset(log(size)) + (1 | herd)", data, family="poisson")


@pytest.mark.parametrize("value, which", [(0, "failure"), (1, "success")])
def test_binary_response_all_one_outcome(cbpp, value, which):
    with pytest.raises(DataError, match=rf"every trial is a {which}"):
        Lmer("y ~ period + (1 | herd)", cbpp.assign(y=value), family="binomial")


def test_all_zero_counts(cbpp):
    for family in ("poisson", "negbinomial"):
        with pytest.raises(DataError, match="0 on every row"):
            Lmer("y ~ period + (1 | herd)", cbpp.assign(y=0), family=family)


def test_every_trial_a_success_in_cbind(cbpp):
    with pytest.raises(DataError, match="every trial is a success"):
        Lmer("cbind(size, 0 * size) ~ period + (1 | herd)", cbpp, family="binomial")


def test_proportions_need_weights_in_zero_one(cbpp):
    data = cbpp.assign(p=cbpp["incidence"] / cbpp["size"])
    with pytest.raises(DataError, match="pass the trials as weights="):
        Lmer("p ~ period + (1 | herd)", data, family="binomial")
    with pytest.raises(DataError, match=r"proportion of successes and must lie in \[0, 1\]; rows 'r0'"):
        Lmer("incidence ~ period + (1 | herd)", cbpp, family="binomial", weights="size")
    with pytest.raises(DataError, match=r"trials \(weights=\) of 'p'.*whole numbers"):
        Lmer("p ~ period + (1 | herd)", data, family="binomial", weights=-data["size"])
    with pytest.raises(DataError, match=r"successes \(proportion x weights=\)"):
        Lmer("p ~ period + (1 | herd)", data.assign(p=0.97 * data["p"]), family="binomial", weights="size")


def test_zero_one_proportion_with_weights_counts_every_trial(cbpp):
    """With weights=, a proportion of 1 is every trial a success (glmer), not one success."""
    data = cbpp.assign(all_or_none=(cbpp["incidence"] > 0).astype(float))
    model = Lmer("all_or_none ~ period + (1 | herd)", data, family="binomial", weights="size")
    np.testing.assert_array_equal(model.design.y, data["all_or_none"] * data["size"])
    np.testing.assert_array_equal(model.design.trials, data["size"])
    assert "proportion of successes" in model.design.response_note


def test_trials_for_families_without_them(cbpp):
    with pytest.raises(DataError, match="a poisson model has none"):
        Lmer("incidence ~ period + (1 | herd)", cbpp, family="poisson", weights="size")
    with pytest.raises(DataError, match="gaussian model has no trials"):
        Lmer(CBIND, cbpp)


def test_links_and_families_checked(cbpp):
    with pytest.raises(UnsupportedSyntaxError, match="family 'poisson' has links log"):
        Lmer("incidence ~ period + (1 | herd)", cbpp, family="poisson", link="logit")
    with pytest.raises(UnsupportedSyntaxError, match="not supported"):
        Lmer("incidence ~ period + (1 | herd)", cbpp, family="gamma")


def test_binary_encodings_agree(cbpp):
    """0/1 numbers, booleans and a two-level column give the same response; the note names the success."""
    positive = cbpp["incidence"] > 0
    numbers = Lmer("y ~ period + (1 | herd)", cbpp.assign(y=positive.astype(int)), family="binomial").design
    booleans = Lmer("y ~ period + (1 | herd)", cbpp.assign(y=positive), family="binomial").design
    labels = Lmer("y ~ period + (1 | herd)", cbpp.assign(y=np.where(positive, "yes", "no")), family="binomial").design
    np.testing.assert_array_equal(numbers.y, booleans.y)
    np.testing.assert_array_equal(numbers.y, labels.y)
    assert labels.response_note == "y == 'yes' is a success ('no' a failure)"
    with pytest.raises(DataError, match="has 4 distinct values"):
        Lmer("period ~ size + (1 | herd)", cbpp, family="binomial")


def test_data_never_modified(cbpp):
    original = cbpp.copy()
    data = cbpp.assign(p=cbpp["incidence"] / cbpp["size"])
    before = data.copy()
    Lmer("p ~ period + (1 | herd)", data, family="binomial", weights="size").fit_frequentist()
    Lmer("incidence ~ period + offset(log(size)) + (1 | herd)", cbpp, family="poisson")
    pd.testing.assert_frame_equal(data, before)
    pd.testing.assert_frame_equal(cbpp, original)
