"""Arithmetic on data columns, as R evaluates the arguments of ``cbind()`` and ``offset()``.

formulae evaluates model terms, but the arguments of lme4's ``cbind(successes, size - successes)`` and
``offset(log(exposure))`` are plain arithmetic on columns, which formulae reads as term operators
(``size - successes`` would drop a term). :func:`evaluate` computes such an expression on the rows of a
data frame. Only arithmetic (``+ - * / ** //``, unary minus, numbers), column names and the functions
in :data:`FUNCTIONS` (R's names: ``log``, ``exp``, ``sqrt``, ``abs``, ``log1p``, ``log2``, ``log10``, and
``np.<same>``) are allowed; anything else is refused with a message, never executed.
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, FormulaError

__all__ = ["FUNCTIONS", "evaluate", "columns"]

#: Functions allowed in cbind() and offset() arguments.
FUNCTIONS = {
    "log": np.log,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "log1p": np.log1p,
    "log2": np.log2,
    "log10": np.log10,
}
_OPERATORS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Pow: np.power,
    ast.FloorDiv: np.floor_divide,
}


def columns(expression: str) -> set[str]:
    """The column names an expression reads (raising FormulaError for what :func:`evaluate` refuses)."""
    names: set[str] = set()
    _walk(_parse(expression), expression, names)
    return names


def evaluate(expression: str, frame: pd.DataFrame) -> np.ndarray:
    """The value of ``expression`` on every row of ``frame``, shape (n,).

    Raises
    ------
    FormulaError
        Syntax that is not arithmetic on columns.
    DataError
        A column that is not in the data or not numeric.
    """
    tree = _parse(expression)
    names: set[str] = set()
    _walk(tree, expression, names)
    missing = sorted(name for name in names if name not in frame.columns)
    if missing:
        raise DataError(f"column(s) {missing} in {expression!r} are not in the data")
    for name in names:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            raise DataError(f"column {name!r} in {expression!r} is not numeric (dtype {frame[name].dtype})")
    with np.errstate(all="ignore"):
        value = _value(tree.body, frame)
    return np.broadcast_to(np.asarray(value, dtype=float), (len(frame),)).copy()


def _parse(expression: str) -> ast.Expression:
    try:
        return ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise FormulaError(f"cannot read {expression!r}: write arithmetic on columns, e.g. 'size - incidence'") from None


def _walk(node: ast.AST, expression: str, names: set[str]) -> None:
    if isinstance(node, ast.Expression):
        _walk(node.body, expression, names)
    elif isinstance(node, ast.Name):
        names.add(node.id)
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        pass
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        _walk(node.left, expression, names)
        _walk(node.right, expression, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _walk(node.operand, expression, names)
    elif isinstance(node, ast.Call) and _function_name(node) in FUNCTIONS and len(node.args) == 1 and not node.keywords:
        _walk(node.args[0], expression, names)
    else:
        raise FormulaError(
            f"{expression!r}: only arithmetic on columns and the functions {', '.join(FUNCTIONS)} are allowed "
            "inside cbind() and offset(); compute anything else as a column first"
        )


def _function_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"):
        return node.func.attr
    return None


def _value(node: ast.AST, frame: pd.DataFrame):
    if isinstance(node, ast.Name):
        return frame[node.id].to_numpy(dtype=float)
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.BinOp):
        return _OPERATORS[type(node.op)](_value(node.left, frame), _value(node.right, frame))
    if isinstance(node, ast.UnaryOp):
        value = _value(node.operand, frame)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call):
        return FUNCTIONS[_function_name(node)](_value(node.args[0], frame))
    raise AssertionError("unreachable: _walk checked the tree")  # pragma: no cover
