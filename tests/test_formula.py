"""lme4 syntax: what parses into which blocks, and every malformed formula's message."""

import pytest

from bayeslmm.errors import FormulaError, UnsupportedSyntaxError
from bayeslmm.spec.formula import RandomTerm, parse_formula


@pytest.mark.parametrize(
    ("formula", "fixed", "random"),
    [
        ("y ~ x + (1|g)", "x", [("1", "g")]),
        ("y ~ x + (x|g)", "x", [("x", "g")]),
        ("y ~ x + (1 + x | g)", "x", [("1 + x", "g")]),
        ("y ~ x + (0 + x | g)", "x", [("0 + x", "g")]),
        ("y ~ x + (-1 + x | g)", "x", [("-1 + x", "g")]),
        ("y ~ x + (x || g)", "x", [("1", "g"), ("0 + x", "g")]),
        ("y ~ x + (x + z || g)", "x", [("1", "g"), ("0 + x", "g"), ("0 + z", "g")]),
        ("y ~ x + (0 + x + z || g)", "x", [("0 + x", "g"), ("0 + z", "g")]),
        ("y ~ (1|g) + (0+x|g)", "1", [("1", "g"), ("0+x", "g")]),
        ("y ~ 1 + (1|a/b)", "1", [("1", "a"), ("1", "a:b")]),
        ("y ~ 1 + (1|a/b/c)", "1", [("1", "a"), ("1", "a:b"), ("1", "a:b:c")]),
        ("y ~ 1 + (1|a:b)", "1", [("1", "a:b")]),
        ("y ~ 1 + (1|a) + (1|b)", "1", [("1", "a"), ("1", "b")]),
        ("y ~ x*f + (1 + x + z | g)", "x*f", [("1 + x + z", "g")]),
        ("np.log(y) ~ center(x) + C(f) + (1|g)", "center(x) + C(f)", [("1", "g")]),
        ("y ~ 0 + x", "0 + x", []),
    ],
)
def test_parse(formula, fixed, random):
    parsed = parse_formula(formula)
    assert parsed.fixed == fixed
    assert parsed.random == tuple(RandomTerm(expr, factor) for expr, factor in random)


def test_factors_in_order_without_duplicates():
    assert parse_formula("y ~ (1|b) + (0+x|b) + (1|a)").factors == ("b", "a")


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y ~ x + (1|g", "unbalanced parentheses"),
        ("y ~ x + 1|g)", "unbalanced parentheses"),
        ("y x + (1|g)", "exactly one '~'"),
        ("y ~ x ~ z", "exactly one '~'"),
        ("~ x + (1|g)", "no response"),
        ("y ~ ", "nothing on the right"),
        ("y ~ x + + (1|g)", "empty term"),
        ("y ~ x + 1|g", "must be in parentheses"),
        ("y ~ x + ( | g)", "nothing left of '|'"),
        ("y ~ x + (1 | )", "no grouping factor"),
        ("y ~ x + (1 | g | h)", "more than one '|'"),
    ],
)
def test_malformed(formula, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(formula)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("y ~ .", "'.' \\(all other columns\\) is not supported"),
        ("y ~ x + (1 | g1*g2)", "grouping factor 'g1\\*g2'"),
        ("y ~ x + (1 | factor(g))", "grouping factor 'factor\\(g\\)'"),
    ],
)
def test_unsupported(formula, message):
    with pytest.raises(UnsupportedSyntaxError, match=message):
        parse_formula(formula)


def test_not_a_string():
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(None)


def test_offset_is_a_known_term_not_a_predictor():
    parsed = parse_formula("y ~ x + offset(log(n)) + (1|g)")
    assert parsed.fixed == "x" and parsed.offsets == ("log(n)",)
    with pytest.raises(UnsupportedSyntaxError, match="must be a term of its own"):
        parse_formula("y ~ x + I(offset(n)) + (1|g)")
    with pytest.raises(FormulaError, match="nothing inside offset"):
        parse_formula("y ~ x + offset() + (1|g)")


def test_cbind_response_gives_successes_and_failures():
    parsed = parse_formula("cbind(incidence, size - incidence) ~ period + (1 | herd)")
    assert parsed.binomial == ("incidence", "size-incidence") and parsed.fixed == "period"
    with pytest.raises(FormulaError, match="cbind takes two expressions"):
        parse_formula("cbind(incidence) ~ period + (1 | herd)")
