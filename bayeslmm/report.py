"""Report: the printed forms of a fitted model (an lme4-like summary and a one-line repr)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from bayeslmm.lmer import Lmer

__all__ = ["summary_text", "short_repr"]


def short_repr(model: "Lmer") -> str:
    """``Lmer('Reaction ~ Days + (Days | Subject)', n=180, Subject: 18 groups, fitted: 4x1000 draws)``."""
    groups = ", ".join(f"{factor}: {count}" for factor, count in model.grps.items())
    state = (
        f"fitted: {model.sampler.chains}x{model.sampler.draws} draws"
        + (f", {len(model.warnings)} warning(s)" if model.warnings else "")
        if model.fitted
        else "not fitted"
    )
    return f"Lmer({model.formula!r}, family={model.family.name!r}, n={model.design.n_obs}, groups: {groups}; {state})"


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    frame = frame.copy()
    for column in ("ESS_bulk", "ESS_tail"):
        if column in frame:
            frame[column] = frame[column].round().astype(int)
    return frame.to_string(float_format=lambda value: f"{value:.{digits}f}")


def summary_text(model: "Lmer") -> str:
    """The summary :meth:`Lmer.summary` prints."""
    design = model.design
    diagnostics = "no problems (0 divergences, R-hat <= 1.01, ESS_bulk >= 400)"
    if model.warnings:
        diagnostics = f"{len(model.warnings)} warning(s):\n" + "\n".join(f"  - {w}" for w in model.warnings)
    groups = ", ".join(f"{factor}, {count}" for factor, count in model.grps.items())
    lines = [
        f"Bayesian linear mixed model (bayeslmm) fit by {model.sampler}",
        f"Formula: {model.formula}",
        f"Family: {model.family.name} ({model.family.link} link)",
        f"Number of obs: {design.n_obs}; groups: {groups}"
        + (f"; {design.n_dropped} rows dropped for missing values" if design.n_dropped else ""),
        "",
        "Random effects (posterior median of Var and Std, 95% interval of Std):",
        _table(model.ranef_var),
    ]
    if model.ranef_corr is not None:
        lines += ["", "Correlations of random effects (posterior median, 95% interval):", _table(model.ranef_corr)]
    lines += [
        "",
        "Fixed effects (posterior mean, 95% equal-tailed interval, posterior SD, probability of direction):",
        _table(model.coefs.drop(columns=["ESS_tail"])),
        "",
        f"Diagnostics: {diagnostics}",
    ]
    return "\n".join(lines)
