"""Hostile input, one table: every unusual input with the handling it must get.

Each case builds (and where needed fits) a model from one unusual input, and states what must happen:
an error of a given type whose message names the problem, or a result that is checked to be right.
Nothing may crash inside bayeslmm, surface a raw error of a dependency, or give a silently wrong answer;
the user's data is never modified. Add a case for every new way in which input can go wrong.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from bayeslmm import (
    DataError,
    FormulaError,
    Lm,
    Lm2,
    Lmer,
    Prior,
    PriorError,
    PriorSensitivityWarning,
    UnsupportedSyntaxError,
    load_dataset,
)

SLEEP = load_dataset("sleepstudy")
CAKE = load_dataset("cake")
SMALL = {"draws": 60, "tune": 60, "chains": 1, "random_seed": 1, "progressbar": False}


@dataclass(frozen=True)
class Case:
    """``make()`` must raise ``error`` matching ``match``; or, with ``error=None``, return something ``check`` accepts."""

    make: Callable[[], Any]
    error: type[BaseException] | None = None
    match: str = ""
    check: Callable[[Any], bool] | None = None
    warns: type[Warning] | None = None


def _fit(model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(**(SMALL | options))
    return model


def _fitted_with_int_column():
    return _fit(Lmer("Reaction ~ Days + (1|Subject)", SLEEP.assign(extra=1).rename(columns={"extra": 7})))


def _round_trip(model):
    import tempfile
    from pathlib import Path

    from bayeslmm import load

    with tempfile.TemporaryDirectory() as folder:
        return load(model.save(Path(folder) / "model.zarr"))


def _three_groups() -> pd.DataFrame:
    """sleepstudy with a 3-level factor ``g`` of 6 subjects each."""
    return SLEEP.assign(g=(pd.factorize(SLEEP["Subject"])[0] % 3).astype(str))


def _interaction_data() -> pd.DataFrame:
    """36 distinct (a, b) pairs whose ':'-joined labels collide pairwise, and an int 1 next to a str '1'."""
    rng = np.random.default_rng(0)
    a = ["s:t", "s"] * 9 + [1, "1"] * 9
    b = ["0", "t:0"] * 9 + ["x", "x"] * 9
    rows = [(ai, bi + str(i // 2)) for i, (ai, bi) in enumerate(zip(a, b))]
    frame = pd.DataFrame(rows * 3, columns=["a", "b"])
    frame["y"] = rng.normal(size=len(frame))
    return frame


CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- silently wrong before
    "column named Intercept": Case(
        lambda: Lmer("Reaction ~ Intercept + (1|Subject)", SLEEP.rename(columns={"Days": "Intercept"})),
        DataError, "named 'Intercept'",
    ),
    "column named sigma vs the sigma prior": Case(
        lambda: Lmer("Reaction ~ sigma + (1|Subject)", SLEEP.assign(sigma=-SLEEP.Days), priors={"sigma": Prior("HalfNormal", sigma=30)}),
        PriorError, "ambiguous.*'coef:sigma'.*'aux:sigma'",
    ),
    "coef: and aux: keys resolve the ambiguity": Case(
        lambda: Lmer("Reaction ~ sigma + (1|Subject)", SLEEP.assign(sigma=-SLEEP.Days),
                     priors={"aux:sigma": Prior("HalfNormal", sigma=30), "coef:sigma": Prior("Normal", mu=0, sigma=50)}),
        check=lambda m: m.model_priors.aux["sigma"].distribution == "HalfNormal"
        and m.model_priors.fixed["sigma"].params == {"mu": 0.0, "sigma": 50.0},
    ),
    "unknown prior parameter": Case(lambda: Prior("Normal", mu=0, sd=0.01), PriorError, "unknown parameter.*sd"),
    "negative prior scale": Case(lambda: Prior("Normal", sigma=-0.01), PriorError, "sigma must be positive"),
    "negative half-normal scale": Case(lambda: Prior("HalfNormal", sigma=-1), PriorError, "sigma must be positive"),
    "negative exponential rate": Case(lambda: Prior("Exponential", lam=-1), PriorError, "lam must be positive"),
    "zero prior scale": Case(lambda: Prior("Normal", sigma=0), PriorError, "sigma must be positive"),
    "NaN prior mean": Case(lambda: Prior("Normal", mu=np.nan), PriorError, "must be finite"),
    "not a distribution": Case(lambda: Prior("sample"), PriorError, "'sample' is not a PyMC distribution"),
    "text prior parameter": Case(lambda: Prior("Normal", mu="a"), PriorError, "mu='a' must be a number"),
    "sigma and tau both": Case(lambda: Prior("Normal", sigma=1, tau=1), PriorError, "give one of sigma or tau"),
    "interaction groups stay distinct": Case(
        lambda: Lmer("y ~ 1 + (1 | a:b)", _interaction_data()),
        check=lambda m: m.grps == {"a:b": 36},
    ),
    "rank-deficient fixed effects dropped with lme4's message": Case(
        lambda: Lmer("Reaction ~ Days + D2 + (1|Subject)", SLEEP.assign(D2=2 * SLEEP.Days)),
        check=lambda m: m.design.fixed_terms == ("(Intercept)", "Days"),
        warns=UserWarning, match="rank deficient so dropping 1 column / coefficient: D2",
    ),
    "constant predictor next to the intercept": Case(
        lambda: Lmer("Reaction ~ Days + c + (1|Subject)", SLEEP.assign(c=3.0)),
        check=lambda m: m.design.fixed_terms == ("(Intercept)", "Days"),
        warns=UserWarning, match="dropping 1 column / coefficient: c",
    ),
    "single-level factor predictor": Case(
        lambda: Lmer("Reaction ~ Days + f + (1|Subject)", SLEEP.assign(f="a")), DataError, "single level",
    ),
    "user's own fits column kept": Case(
        lambda: _fit(Lmer("Reaction ~ Days + (1|Subject)", SLEEP.assign(fits=-1.0))),
        check=lambda m: (m.data["fits"] == -1.0).all() and "fits_model" in m.data,
    ),
    # ---------------------------------------------------------------- crashes before
    "no fixed effects at all": Case(
        lambda: _fit(Lmer("Reaction ~ 0 + (1|Subject)", SLEEP)),
        check=lambda m: m.coefs.shape[0] == 0 and m.ranef.shape == (18, 1),
    ),
    "column that looks like a generated block name": Case(
        lambda: _fit(Lmer("Reaction ~ Days + (1|Subject) + (0 + Days|Subject) + (1|Subject.1)",
                          SLEEP.assign(**{"Subject.1": SLEEP.Subject % 3}))),
        check=lambda m: [b.name for b in m.design.blocks] == ["Subject", "Subject.2", "Subject.1"] and m.fitted,
    ),
    "text seed": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(random_seed="abc"), ValueError, "random_seed"),
    "negative seed": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(random_seed=-1), ValueError, "random_seed"),
    "huge seed": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(random_seed=2**70), ValueError, "random_seed"),
    "Generator as seed": Case(
        lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(random_seed=np.random.default_rng(1)), ValueError, "random_seed",
    ),
    "unknown fit keyword": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(REML=False), TypeError, "'REML'"),
    "typo in a fit keyword": Case(
        lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(target_acept=0.9), TypeError, "'target_acept'.*target_accept",
    ),
    "target_accept above 1": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(target_accept=2), ValueError, "target_accept"),
    "draws=True": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP).fit(draws=True), ValueError, "draws"),
    "save where nothing can be written": Case(
        lambda: _fitted_with_int_column().save("/proc/x.zarr"), OSError, "cannot write '/proc/x.zarr'",
    ),
    "integer column name survives save and load": Case(
        lambda: _round_trip(_fitted_with_int_column()), check=lambda m: 7 in m.data.columns and "7" not in m.data.columns,
    ),
    # ---------------------------------------------------------------- unclear before
    "R's log in the response": Case(
        lambda: Lmer("log(Reaction) ~ Days + (1|Subject)", SLEEP),
        check=lambda m: np.allclose(m.design.y, np.log(SLEEP.Reaction)),
    ),
    "unknown function": Case(
        lambda: Lmer("logit(Reaction) ~ Days + (1|Subject)", SLEEP), FormulaError, "'logit' is neither a column nor a function",
    ),
    "unicode grouping factor": Case(
        lambda: Lmer("Reaction ~ Days + (1|Sujet_é)", SLEEP.rename(columns={"Subject": "Sujet_é"})),
        check=lambda m: m.grps == {"Sujet_é": 18},
    ),
    "backticked grouping factor": Case(
        lambda: Lmer("Reaction ~ Days + (1|`my subject`)", SLEEP.rename(columns={"Subject": "my subject"})),
        check=lambda m: m.grps == {"my subject": 18},
    ),
    "doubled parentheses": Case(lambda: Lmer("Reaction ~ Days + ((1|Subject))", SLEEP), check=lambda m: m.grps == {"Subject": 18}),
    "duplicate column names": Case(
        lambda: Lmer("Reaction ~ Days + (1|Subject)", pd.concat([SLEEP, SLEEP[["Days"]]], axis=1)), DataError, "'Days' appear more than once",
    ),
    "datetime predictor": Case(
        lambda: Lmer("Reaction ~ when + (1|Subject)", SLEEP.assign(when=pd.Timestamp("2020-01-01") + pd.to_timedelta(SLEEP.Days, "D"))),
        DataError, "'when' holds dates",
    ),
    "constant response": Case(lambda: Lmer("c ~ Days + (1|Subject)", SLEEP.assign(c=1.0)), DataError, "constant"),
    "huge formula": Case(
        lambda: Lmer("Reaction ~ " + " + ".join(f"x{i}" for i in range(20_000)) + " + (1|Subject)", SLEEP),
        FormulaError, r"cannot parse .*\(\d+ characters\).*too many terms",
    ),
    # ---------------------------------------------------------------- statistical messages
    "few levels of a grouping factor": Case(
        lambda: Lmer("angle ~ temp + (1 | recipe)", CAKE), check=lambda m: m.grps == {"recipe": 3},
        warns=PriorSensitivityWarning, match="only 3 levels.*follows its prior",
    ),
    # ---------------------------------------------------------------- the other models
    "Lm with random effects": Case(lambda: Lm("Reaction ~ Days + (1|Subject)", SLEEP), FormulaError, "use Lmer"),
    "Lm2 with an unknown group": Case(lambda: Lm2("Reaction ~ Days", SLEEP, group="subject"), DataError, "did you mean 'Subject'"),
    "unsupported family": Case(lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP, family="weibull"), UnsupportedSyntaxError, "weibull"),
    # issue 12 #19: near the boundary the full PyMC model diverged; exact samplers take these models now
    "Student-t prior, 3-level grouping factor": Case(
        lambda: _fit(Lmer("Reaction ~ Days + g + (1|g)", _three_groups(),
                          priors={"Days": Prior("StudentT", nu=3, mu=0, sigma=10)}), draws=300, tune=300, chains=2),
        check=lambda m: m.sampler.sampler.endswith("Laplace-informed parametrization")
        and int(m.idata["sample_stats"]["diverging"].sum()) == 0,
    ),
    "marginalize=True with a prior no exact sampler knows": Case(
        lambda: Lmer("Reaction ~ Days + (1|Subject)", SLEEP, priors={"Days": Prior("Laplace", mu=0, b=10)}).fit(marginalize=True),
        ValueError, "no exact sampler takes this model",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hostile_input(case: Case):
    before = {"sleep": SLEEP.copy(deep=True), "cake": CAKE.copy(deep=True)}
    if case.error is not None:
        with pytest.raises(case.error, match=case.match) as info:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                case.make()
        assert len(str(info.value)) < 2000, "an error message should be read in one go"
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = case.make()
        if case.warns is not None:
            assert any(issubclass(w.category, case.warns) and re.search(case.match, str(w.message)) for w in caught), [
                str(w.message) for w in caught
            ]
        assert case.check(result)
    pd.testing.assert_frame_equal(SLEEP, before["sleep"])  # the user's data is never modified
    pd.testing.assert_frame_equal(CAKE, before["cake"])


def test_the_table_keeps_growing():
    assert len(CASES) >= 40
