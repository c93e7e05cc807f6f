"""Numerical derivatives by central differences with Richardson extrapolation (numDeriv's scheme).

Used where lme4 and lmerTest differentiate numerically: the REML engine's convergence check and
Satterthwaite degrees of freedom, and the Hessians of the Laplace engine.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["central_gradient", "richardson", "derivative_steps", "hessian", "gradient_and_hessian", "jacobian", "scaled_gradient"]


def central_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Central-difference gradient of a scalar function, shape (len(x),)."""
    out = np.empty(len(x))
    for i, step in enumerate(steps):
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        out[i] = (f(up) - f(down)) / (2.0 * step)
    return out


def richardson(estimate: Callable[[float], np.ndarray], levels: int = 2) -> np.ndarray:
    """Richardson extrapolation of an O(h^2) central-difference estimate (numDeriv's scheme).

    ``estimate(scale)`` returns the difference quotient with steps multiplied by ``scale``; steps are
    halved at each level and the error terms in h^2, h^4, ... eliminated.
    """
    table = [estimate(1.0)]
    for level in range(1, levels):
        row = [estimate(0.5**level)]
        for order in range(1, level + 1):
            factor = 4.0**order
            row.append((factor * row[order - 1] - table[order - 1]) / (factor - 1.0))
        table = row
    return table[-1]


def derivative_steps(x: np.ndarray) -> np.ndarray:
    """Base steps for Richardson differences: 1% of |x|, at least 1e-3 (numDeriv uses 10%)."""
    return 1e-2 * np.maximum(np.abs(x), 0.1)


def hessian(
    f: Callable[[np.ndarray], float], x: np.ndarray, levels: int = 2, steps: np.ndarray | None = None
) -> np.ndarray:
    """Hessian of a scalar function by central differences, Richardson-extrapolated over ``levels``.

    ``steps`` are the base steps per coordinate (default :func:`derivative_steps`).
    """
    return gradient_and_hessian(f, x, levels, steps)[1]


def gradient_and_hessian(
    f: Callable[[np.ndarray], float], x: np.ndarray, levels: int = 2, steps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (m,) and Hessian (m, m) of a scalar function from the same central differences.

    The gradient reuses the evaluations at ``x +- h e_i`` of the Hessian's diagonal, so it costs
    nothing extra; both are Richardson-extrapolated over ``levels``.
    """
    base = derivative_steps(x) if steps is None else np.asarray(steps, dtype=float)
    f0 = f(x)
    m = len(x)

    def estimate(scale: float) -> np.ndarray:
        h = base * scale
        out = np.empty((m, m + 1))  # the Hessian, then the gradient as the last column
        for i in range(m):
            e_i = np.zeros(m)
            e_i[i] = h[i]
            up, down = f(x + e_i), f(x - e_i)
            out[i, i] = (up - 2.0 * f0 + down) / h[i] ** 2
            out[i, m] = (up - down) / (2.0 * h[i])
            for j in range(i):
                e_j = np.zeros(m)
                e_j[j] = h[j]
                value = (f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) / (
                    4.0 * h[i] * h[j]
                )
                out[i, j] = out[j, i] = value
        return out

    table = richardson(estimate, levels)
    return table[:, m], table[:, :m]


def jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Jacobian of an array-valued function, shape f(x).shape + (len(x),), Richardson-extrapolated."""
    base = derivative_steps(x)

    def estimate(scale: float) -> np.ndarray:
        columns = []
        for i in range(len(x)):
            e_i = np.zeros(len(x))
            e_i[i] = base[i] * scale
            columns.append((f(x + e_i) - f(x - e_i)) / (2.0 * e_i[i]))
        return np.stack(columns, axis=-1)

    return richardson(estimate)


def scaled_gradient(gradient: np.ndarray, hess: np.ndarray) -> float:
    """lme4's convergence criterion: the largest element of ``R^-T g`` with ``R'R`` the Hessian.

    ``|R^-T g|^2 / 2`` is the decrease a Newton step would still promise. Falls back to ``max |g|`` where
    the Hessian is not positive definite; 0 when there are no parameters.
    """
    if len(gradient) == 0:
        return 0.0
    from scipy import linalg

    try:
        return float(np.max(np.abs(linalg.solve_triangular(np.linalg.cholesky(hess), gradient, lower=True))))
    except np.linalg.LinAlgError:
        return float(np.max(np.abs(gradient)))
