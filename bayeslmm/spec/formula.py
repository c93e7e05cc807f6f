"""lme4 formula syntax: split a formula into its fixed part and its random-effects blocks.

formulae (Bambi's formula engine) parses the fixed part and every term's expression, but it knows
neither ``||`` nor the lme4 rule that one parenthesised term is one correlated block. This module does
only that part: it finds the top-level ``( expr | factor )`` terms, expands ``||`` and nesting ``/``
the way lme4 does, and leaves every expression to formulae.

Examples
--------
>>> parse_formula("Reaction ~ Days + (Days || Subject)").random
(RandomTerm(expr='1', factor='Subject'), RandomTerm(expr='0 + Days', factor='Subject'))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bayeslmm.errors import FormulaError, UnsupportedSyntaxError

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula"]

# a column name: Python-identifier-like with dots (unicode letters included), or anything in backticks
_NAME = r"(?:`[^`:/]+`|[^\W\d][\w.]*|\.[\w.]*)"
_FACTOR_INTERACTION = re.compile(rf"^{_NAME}(?::{_NAME})*$")
_FACTOR_NESTED = re.compile(rf"^{_NAME}(?:/{_NAME})+$")
_NO_INTERCEPT = {"0", "-1", "- 1"}


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects block: ``(expr | factor)``.

    The columns of ``expr`` get a full covariance matrix across the levels of ``factor``, as in lme4;
    ``||`` is expanded into one block per column, so it needs no flag of its own.

    Attributes
    ----------
    expr : str
        The expression whose columns vary by group, e.g. ``"1"``, ``"1 + Days"``, ``"0 + Days"``.
    factor : str
        The grouping factor: a column name, or an interaction of columns such as ``"g1:g2"``.
    """

    expr: str
    factor: str


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part and random-effects blocks.

    Attributes
    ----------
    text : str
        The formula as the user wrote it.
    response : str
        The left-hand side, e.g. ``"Reaction"`` or ``"np.log(Reaction)"``.
    fixed : str
        The fixed-effects part of the right-hand side, in formulae syntax (``"1"`` when only random
        terms were given, as in lme4 the intercept is implicit).
    random : tuple of RandomTerm
        The random-effects blocks after expanding ``||`` and nesting.
    offsets : tuple of str
        The expressions inside ``offset(...)`` terms, e.g. ``("log(exposure)",)``: known terms added to
        the linear predictor with coefficient 1.
    binomial : tuple of (str, str) or None
        ``(successes, failures)`` of a ``cbind(successes, failures)`` response.
    """

    text: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...] = ()
    binomial: tuple[str, str] | None = None

    @property
    def factors(self) -> tuple[str, ...]:
        """Grouping factors in order of first appearance, without duplicates."""
        return tuple(dict.fromkeys(term.factor for term in self.random))


def parse_formula(formula: str) -> ParsedFormula:
    """Parse an lme4 formula.

    Parameters
    ----------
    formula : str
        For example ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    FormulaError
        Malformed syntax: not a string, unbalanced parentheses, no or several ``~``, empty sides,
        an empty term, a bar outside parentheses.
    UnsupportedSyntaxError
        lme4 syntax that bayeslmm does not support, such as ``y ~ .`` or a grouping factor that is an
        expression rather than column names.
    """
    if not isinstance(formula, str):
        raise FormulaError(
            f"formula must be a string such as 'Reaction ~ Days + (Days | Subject)', "
            f"got {type(formula).__name__}"
        )
    text = " ".join(formula.split())
    _check_parentheses(text)
    if text.count("~") != 1:
        raise FormulaError(
            f"formula {formula!r} must contain exactly one '~' between the response and the "
            "predictors, as in 'Reaction ~ Days + (Days | Subject)'"
        )
    response, rhs = (side.strip() for side in text.split("~"))
    if not response:
        raise FormulaError(
            f"formula {formula!r} has no response on the left of '~'; "
            "one-sided formulas are not models: write 'y ~ ...'"
        )
    if not rhs:
        raise FormulaError(
            f"formula {formula!r} has nothing on the right of '~'; "
            "write at least '1' for an intercept-only model"
        )
    binomial = _cbind(response) if is_cbind(response) else None
    if re.search(r"(^|[\s+])\.($|[\s+])", rhs):
        raise UnsupportedSyntaxError(
            "'.' (all other columns) is not supported; name the predictors explicitly"
        )

    fixed_terms: list[str] = []
    random_terms: list[RandomTerm] = []
    offsets: list[str] = []
    for chunk in _split_top_level(rhs, "+"):
        if not chunk:
            raise FormulaError(f"formula {formula!r} has an empty term (two '+' in a row, or a trailing '+')")
        inner = _strip_outer_parentheses(chunk)
        while inner is not None and _find_top_level_bar(inner) is None and _strip_outer_parentheses(inner) is not None:
            inner = _strip_outer_parentheses(inner)  # ((1 | g)): redundant parentheses
        offset = re.fullmatch(r"offset\s*\((.*)\)", chunk)
        if offset is not None and _strip_outer_parentheses(chunk[chunk.index("("):]) is not None:
            if not offset.group(1).strip():
                raise FormulaError(f"term {chunk!r} has nothing inside offset(); write e.g. offset(log(exposure))")
            offsets.append(offset.group(1).strip())
        elif re.search(r"(^|[^A-Za-z0-9_.])offset\s*\(", chunk):
            raise UnsupportedSyntaxError(
                f"term {chunk!r}: offset(...) must be a term of its own, as in 'y ~ x + offset(log(exposure))'"
            )
        elif inner is not None and _find_top_level_bar(inner) is not None:
            random_terms.extend(_parse_random_term(inner, chunk))
        elif "|" in chunk:
            raise FormulaError(
                f"term {chunk!r}: a random-effects term must be in parentheses, as in '(1 | g)'"
            )
        else:
            fixed_terms.append(chunk)

    fixed = " + ".join(fixed_terms) if fixed_terms else "1"
    return ParsedFormula(
        text=text, response=response, fixed=fixed, random=tuple(random_terms), offsets=tuple(offsets), binomial=binomial
    )


def is_cbind(response: str) -> bool:
    """Whether a response is lme4's ``cbind(successes, failures)``."""
    return response.replace(" ", "").startswith("cbind(")


def _cbind(response: str) -> tuple[str, str]:
    """``cbind(successes, failures)`` -> the two expressions."""
    inner = _strip_outer_parentheses(response.replace(" ", "")[len("cbind"):])
    parts = _split_top_level(inner, ",") if inner is not None else []
    if len(parts) != 2 or not all(parts):
        raise FormulaError(
            f"response {response!r}: cbind takes two expressions, the successes and the failures, as in "
            "'cbind(incidence, size - incidence) ~ period + (1 | herd)'"
        )
    return parts[0], parts[1]


def _check_parentheses(text: str) -> None:
    depth = 0
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(
                    f"unbalanced parentheses in {text!r}: ')' at position {position} closes nothing"
                )
    if depth:
        raise FormulaError(f"unbalanced parentheses in {text!r}: {depth} '(' never closed")


def _split_top_level(text: str, separator: str) -> list[str]:
    """Split ``text`` at ``separator`` characters that are not inside parentheses or brackets."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:position].strip())
            start = position + 1
    parts.append(text[start:].strip())
    return parts


def _strip_outer_parentheses(chunk: str) -> str | None:
    """Return what is inside ``chunk`` if one pair of parentheses encloses all of it, else None."""
    if not (chunk.startswith("(") and chunk.endswith(")")):
        return None
    depth = 0
    for position, char in enumerate(chunk):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and position < len(chunk) - 1:
            return None
    return chunk[1:-1].strip()


def _find_top_level_bar(inner: str) -> int | None:
    depth = 0
    for position, char in enumerate(inner):
        depth += char in "(["
        depth -= char in ")]"
        if char == "|" and depth == 0:
            return position
    return None


def _parse_random_term(inner: str, chunk: str) -> list[RandomTerm]:
    bar = _find_top_level_bar(inner)
    double = inner[bar : bar + 2] == "||"
    expr = inner[:bar].strip()
    factor = inner[bar + (2 if double else 1) :].strip()
    if "|" in factor:
        raise FormulaError(f"term {chunk!r} has more than one '|'; write one '(expr | factor)' per term")
    if not expr:
        raise FormulaError(f"term {chunk!r} has nothing left of '|'; write '(1 | g)' for a random intercept")
    if not factor:
        raise FormulaError(f"term {chunk!r} has no grouping factor right of '|'")
    factor = _without_spaces_outside_backticks(factor)
    if _FACTOR_NESTED.match(factor):
        names = factor.split("/")
        factors = [":".join(names[: depth + 1]) for depth in range(len(names))]
    elif _FACTOR_INTERACTION.match(factor):
        factors = [factor]
    else:
        raise UnsupportedSyntaxError(
            f"grouping factor {factor!r} in {chunk!r} is not supported: use a column name (in backticks if "
            "it has spaces or symbols), an interaction 'g1:g2' or nesting 'g1/g2'; compute other groupings "
            "as a new column first"
        )
    expressions = _expand_uncorrelated(expr) if double else [expr]
    return [RandomTerm(expr=e, factor=f.replace("`", "")) for f in factors for e in expressions]


def _without_spaces_outside_backticks(text: str) -> str:
    """``` `my group` : b ``` -> ``` `my group`:b ```: spaces dropped except inside backticks."""
    parts = text.split("`")
    return "`".join(part.replace(" ", "") if i % 2 == 0 else part for i, part in enumerate(parts))


def _expand_uncorrelated(expr: str) -> list[str]:
    """``x + z`` under ``||`` becomes ``1``, ``0 + x``, ``0 + z``: one independent block each (lme4)."""
    pieces = [piece for piece in _split_top_level(expr, "+") if piece]
    intercept = True
    slopes = []
    for piece in pieces:
        if piece in _NO_INTERCEPT:
            intercept = False
        elif piece == "1":
            intercept = True
        elif re.fullmatch(r".*-\s*1", piece):
            intercept = False
            slopes.append(re.sub(r"-\s*1$", "", piece).strip())
        else:
            slopes.append(piece)
    return (["1"] if intercept else []) + [f"0 + {slope}" for slope in slopes]
