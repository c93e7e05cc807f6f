"""From formula and data to model matrices: shapes, names, and every bad input's message."""

import numpy as np
import pandas as pd
import pytest

from bayeslmm import DataError, FormulaError, Lmer, load_dataset
from bayeslmm.spec.design import build_design
from bayeslmm.spec.formula import parse_formula


def design(formula, data):
    return build_design(parse_formula(formula), data)


def test_correlated_block(sleep):
    d = design("Reaction ~ Days + (Days | Subject)", sleep)
    assert d.fixed_terms == ("(Intercept)", "Days")
    (block,) = d.blocks
    assert (block.name, block.factor, block.terms) == ("Subject", "Subject", ("(Intercept)", "Days"))
    assert block.Z.shape == (180, 2) and block.n_levels == 18
    assert list(block.levels[:3]) == [308, 309, 310]
    np.testing.assert_array_equal(block.levels[block.group_index], sleep["Subject"].to_numpy())


def test_blocks_on_one_factor_are_named_like_lme4(sleep):
    d = design("Reaction ~ Days + (Days || Subject)", sleep)
    assert [(b.name, b.terms) for b in d.blocks] == [("Subject", ("(Intercept)",)), ("Subject.1", ("Days",))]
    assert list(d.factors) == ["Subject"]


def test_no_intercept_block_and_fixed(sleep):
    d = design("Reaction ~ 0 + Days + (-1 + Days | Subject)", sleep)
    assert d.fixed_terms == ("Days",)
    assert d.blocks[0].terms == ("Days",)


def test_categorical_interaction_and_transformations():
    data = load_dataset("sleepstudy").assign(late=lambda f: np.where(f.Days > 4, "late", "early"))
    d = design("np.log(Reaction) ~ center(Days) * late + C(Subject) + (1 | Subject)", data)
    assert d.fixed_terms[0] == "(Intercept)"
    assert {"center(Days)", "late[late]", "C(Subject)[309]", "center(Days):late[late]"} <= set(d.fixed_terms)
    assert len(d.fixed_terms) == 1 + 1 + 1 + 17 + 1
    np.testing.assert_allclose(d.y, np.log(data.Reaction))
    centered = d.X[:, d.fixed_terms.index("center(Days)")]
    np.testing.assert_allclose(centered, data.Days - data.Days.mean())


def test_nested_and_interaction_factors():
    pen = load_dataset("Penicillin")
    pen["batch"] = np.repeat(np.arange(12), 12) % 4
    d = design("diameter ~ 1 + (1 | batch/plate)", pen)
    assert [b.factor for b in d.blocks] == ["batch", "batch:plate"]
    assert d.blocks[0].n_levels == 4 and d.blocks[1].n_levels == 24
    d2 = design("diameter ~ 1 + (1 | batch:plate)", pen)
    assert d2.blocks[0].n_levels == 24 and d2.blocks[0].levels[0] == "0:a"


def test_crossed(sleep):
    pen = load_dataset("Penicillin")
    d = design("diameter ~ 1 + (1|plate) + (1|sample)", pen)
    assert {b.factor: b.n_levels for b in d.blocks} == {"plate": 24, "sample": 6}


def test_missing_rows_dropped_with_count(sleep):
    data = sleep.copy()
    data.loc[[0, 5, 7], "Days"] = np.nan
    data.loc[9, "Reaction"] = np.nan
    with pytest.warns(UserWarning, match="4 of 180 rows dropped because of missing values"):
        d = design("Reaction ~ Days + (Days | Subject)", data)
    assert d.n_obs == 176 and d.n_dropped == 4
    assert 0 not in d.data.index and 9 not in d.data.index


def test_missing_values_in_unused_columns_are_ignored(sleep):
    data = sleep.assign(unused=np.nan)
    assert design("Reaction ~ Days + (1 | Subject)", data).n_obs == 180


def test_polars_input(sleep):
    pl = pytest.importorskip("polars")
    d = design("Reaction ~ Days + (Days | Subject)", pl.from_pandas(sleep))
    np.testing.assert_allclose(d.y, sleep.Reaction)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("Reaction ~ Dayz + (1 | Subject)", "'Dayz' \\(did you mean 'Days'\\?\\)"),
        ("Reaction ~ Days + (1 | Subjekt)", "'Subjekt' \\(did you mean 'Subject'\\?\\)"),
        ("Reaktion ~ Days + (1 | Subject)", "'Reaktion'"),
        ("Reaction ~ Days + (Dayz | Subject)", "'Dayz'"),
    ],
)
def test_unknown_column(sleep, formula, message):
    with pytest.raises(DataError, match=message):
        Lmer(formula, sleep)


def test_non_numeric_response(sleep):
    data = sleep.assign(label=sleep.Reaction.astype(str))
    with pytest.raises(DataError, match="response 'label' has dtype .* numeric response"):
        Lmer("label ~ Days + (1 | Subject)", data)


def test_infinite_response(sleep):
    data = sleep.copy()
    data.loc[3, "Reaction"] = np.inf
    with pytest.raises(DataError, match="1 infinite or undefined"):
        Lmer("Reaction ~ Days + (1 | Subject)", data)
    with pytest.raises(DataError, match="infinite or undefined"):
        Lmer("np.log(Days) ~ Reaction + (1 | Subject)", sleep)


def test_infinite_predictor(sleep):
    data = sleep.astype({"Days": float})
    data.loc[3, "Days"] = np.inf
    with pytest.raises(DataError, match="predictors contain 1 infinite"):
        Lmer("Reaction ~ Days + (1 | Subject)", data)


def test_single_level_factor(sleep):
    with pytest.raises(DataError, match="'Subject' has a single level \\(308\\)"):
        Lmer("Reaction ~ Days + (1 | Subject)", sleep[sleep.Subject == 308])


def test_empty_data(sleep):
    with pytest.raises(DataError, match="data has no rows"):
        Lmer("Reaction ~ Days + (1 | Subject)", sleep.iloc[:0])


def test_all_rows_missing(sleep):
    with pytest.raises(DataError, match="every row has a missing value"):
        Lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Days=np.nan))


def test_as_many_groups_as_observations():
    data = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "g": list("abcd")})
    with pytest.raises(DataError, match="4 levels for 4 observations"):
        Lmer("y ~ 1 + (1 | g)", data)


def test_not_a_dataframe(sleep):
    with pytest.raises(DataError, match="pandas or polars DataFrame, got dict"):
        Lmer("Reaction ~ Days + (1 | Subject)", sleep.to_dict())


def test_formula_errors_surface_before_data(sleep):
    with pytest.raises(FormulaError, match="unbalanced"):
        Lmer("Reaction ~ Days + (1 | Subject", sleep)


def test_bad_expression_is_a_formula_error_not_a_traceback(sleep):
    with pytest.raises(FormulaError, match="cannot"):
        Lmer("Reaction ~ Days + nosuchfunction(Days) + (1 | Subject)", sleep)


def test_data_never_modified(sleep):
    data = sleep.copy()
    data.loc[0, "Days"] = np.nan
    before = data.copy()
    with pytest.warns(UserWarning):
        Lmer("Reaction ~ Days + (Days | Subject)", data)
    pd.testing.assert_frame_equal(data, before)


def test_literal_expressions(sleep):
    d = design("Reaction ~ Days + I(Days**2) + (1 | Subject)", sleep)
    assert d.X.shape == (180, 3)
    np.testing.assert_allclose(d.X[:, 2], sleep.Days**2)


def test_lmer_without_random_effects_points_to_lm(sleep):
    with pytest.raises(FormulaError, match="no random-effects term .* use bayeslmm.Lm"):
        Lmer("Reaction ~ Days", sleep)


def test_binomial_trials_and_offsets_are_evaluated():
    from bayeslmm import load_dataset
    from bayeslmm.spec.families import get_family

    cbpp = load_dataset("cbpp")
    design = build_design(
        parse_formula("cbind(incidence, size - incidence) ~ period + (1 | herd)"), cbpp, get_family("binomial")
    )
    np.testing.assert_array_equal(design.y, cbpp["incidence"])
    np.testing.assert_array_equal(design.trials, cbpp["size"])
    poisson = build_design(
        parse_formula("incidence ~ period + offset(log(size)) + (1 | herd)"), cbpp, get_family("poisson"), offset="size"
    )
    np.testing.assert_allclose(poisson.offset, np.log(cbpp["size"]) + cbpp["size"])
