"""One model, many responses: mass-univariate mixed models (electrodes, voxels, genes, items).

:func:`fit_many` fits ``response ~ <right-hand side>`` for every response column of one data set, as
many separate :class:`~bayeslmm.Lmer` models over one shared design: the formula's right-hand side is
evaluated once (model matrices, grouping factors), and each response only brings its own ``y``. A
response with missing values on some rows gets its own design on its complete rows, exactly what
``Lmer`` would build. The fits run through :func:`bayeslmm.engines.executor.run_tasks` (every local
core by default, or a Dask cluster); response ``i`` is fitted with the seed
``seed_integer(SeedSequence(random_seed).spawn(n)[i])``, recorded in the result, so a fit can be
repeated anywhere: ``Lmer(f"{response} ~ {rhs}", data).fit(random_seed=seed)`` gives the same draws.

The result, :class:`ManyFits`, holds a tidy table of every response's fixed effects (``coefs``), one
row per fit (``fits``), the diagnostics and the failures; ``result[response]`` gives that response's
fitted :class:`~bayeslmm.Lmer` (refitted in this process from its seed, with identical draws, so that
thousands of posteriors need not be kept in memory).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.engines.executor import TaskFailure, check_executor_arguments, run_tasks, seed_integer, spawn_seeds, task_threads
from bayeslmm.engines.sampling import check_fit_arguments
from bayeslmm.errors import DataError, FormulaError
from bayeslmm.models.lmer import Lmer
from bayeslmm.results.report import SummaryParts, layout_html, layout_text
from bayeslmm.spec.contrasts import build_coded_design
from bayeslmm.spec.design import Design, listing, to_pandas
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.priors import default_priors

__all__ = ["fit_many", "ManyFits"]

#: Name of the placeholder response of the shared design (never a column of the user's data).
_PLACEHOLDER = "bayeslmm_row_position"


def fit_many(
    formula: str,
    data: Any,
    responses: list[str],
    *,
    family: str | Family = "gaussian",
    priors: dict | None = None,
    factors: dict | None = None,
    ordered: bool = False,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int | None = None,
    client: Any = None,
    workers: int | None = None,
    progressbar: bool | None = None,
    **sampler_options: Any,
) -> "ManyFits":
    """Fit one mixed model to each of many response columns.

    Parameters
    ----------
    formula : str
        The right-hand side, e.g. ``"~ condition + (1 | subject)"``; each response is put on the left.
    data : pandas.DataFrame or polars.DataFrame
        Holds the predictors, the grouping factors and every response column. Not modified.
    responses : list of str
        Response columns, each fitted on its own (rows with a missing value in it are left out of its fit).
    family : str or Family
        As for :class:`~bayeslmm.Lmer`, the same for every response.
    priors : dict, optional
        ``priors=`` overrides, the same for every response (defaults are scaled to each response).
    factors : dict, optional
        Codings of categorical predictors, and ``ordered``, as for :class:`~bayeslmm.Lmer`.
    ordered : bool
    draws, tune, chains : int
        Sampler settings of every fit.
    random_seed : int, optional
        Seeds every fit (response ``i``: the ``i``-th child of ``numpy.random.SeedSequence(random_seed)``).
    client, workers
        Where the fits run: see :func:`bayeslmm.engines.executor.run_tasks` (default every local core).
    progressbar : bool, optional
        A bar over the fits.
    **sampler_options
        As for :meth:`Lmer.fit <bayeslmm.Lmer.fit>` (``target_accept``, ``method``, ...).

    Returns
    -------
    ManyFits

    Raises
    ------
    FormulaError
        ``formula`` has a left-hand side, or no random-effects term.
    DataError
        No responses, duplicated ones, a response that is not a column or is used on the right-hand side,
        or data the formula cannot use (checked on the shared design before any fit).
    ValueError, TypeError
        Bad sampler settings or executor arguments, as ``fit`` and :func:`~bayeslmm.engines.executor.run_tasks`.

    Examples
    --------
    >>> many = fit_many("~ Days + (Days | Subject)", data, ["Reaction", "Reaction_log"], random_seed=1)  # doctest: +SKIP
    >>> many.coefs.query("term == 'Days'")  # doctest: +SKIP
    >>> many["Reaction"].summary()  # doctest: +SKIP
    """
    seed = check_fit_arguments(draws, tune, chains, random_seed, sampler_options)
    check_executor_arguments(client, workers)
    plan = _Plan.make(formula, to_pandas(data), responses, get_family(family), priors, factors, bool(ordered),
                      {"draws": draws, "tune": tune, "chains": chains, **sampler_options})
    for response in plan.responses:
        plan.design(response)  # every response's data checked here, before any fit
    children, entropy = spawn_seeds(seed, len(plan.responses))
    seeds = [seed_integer(child) for child in children]
    run = run_tasks(
        _fit_response, plan.responses, seeds, shared=plan, client=client, workers=workers, progressbar=progressbar,
        description=f"Fitting {len(plan.responses)} responses", unit="fits",
    )
    if run.failures:
        warnings.warn(run.failure_message("fits"), UserWarning, stacklevel=2)
    return ManyFits(plan, seeds, run.results, run.failures, {"random_seed": entropy, "executor": run.executor,
                                                               "seconds": run.seconds})


@dataclass(eq=False)
class _Plan:
    """What every fit needs: the right-hand side, the data, family, priors and sampler settings."""

    rhs: str
    data: pd.DataFrame
    responses: list[str]
    family: Family
    priors: dict | None
    factors: dict | None
    ordered: bool
    settings: dict[str, Any]

    @classmethod
    def make(cls, formula: Any, data: pd.DataFrame, responses: Any, family: Family, priors: dict | None,
             factors: dict | None, ordered: bool, settings: dict) -> "_Plan":
        if not isinstance(formula, str) or not formula.strip().startswith("~"):
            raise FormulaError(
                f"fit_many takes the right-hand side of the formula, e.g. '~ Days + (Days | Subject)', got {formula!r}; "
                "the left-hand side is each of responses="
            )
        if isinstance(responses, str) or not isinstance(responses, list | tuple | pd.Index) or len(responses) == 0:
            raise DataError(f"responses must be a non-empty list of column names, got {responses!r}")
        responses = list(responses)
        duplicated = sorted({str(r) for r in responses if responses.count(r) > 1})
        if duplicated:
            raise DataError(f"responses lists {listing(map(repr, duplicated))} more than once")
        missing = [r for r in responses if r not in data.columns]
        if missing:
            raise DataError(f"responses {listing(map(repr, missing))} are not columns of the data")
        if _PLACEHOLDER in data.columns:
            raise DataError(f"the data has a column named {_PLACEHOLDER!r}, which fit_many uses itself; rename it")
        plan = cls(formula.strip()[1:].strip(), data, responses, family, priors, factors, ordered, dict(settings))
        template = plan.template()
        if not template.blocks:
            raise FormulaError(
                f"formula {formula!r} has no random-effects term such as '(1 | group)'; fit_many fits mixed models"
            )
        used = set(template.predictor_columns()) | {p for f in template.factors for p in f.split(":")}
        clash = [r for r in responses if r in used]
        if clash:
            raise DataError(f"responses {listing(map(repr, clash))} are also used on the right-hand side {plan.rhs!r}")
        return plan

    def formula(self, response: str) -> str:
        name = response if isinstance(response, str) and response.isidentifier() else f"`{response}`"
        return f"{name} ~ {self.rhs}"

    def template(self) -> Design:
        """The shared design: the right-hand side on the rows complete in its columns (built once)."""
        if getattr(self, "_template", None) is None:
            frame = self.data.assign(**{_PLACEHOLDER: np.arange(len(self.data), dtype=float)})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._template = build_coded_design(
                    parse_formula(f"{_PLACEHOLDER} ~ {self.rhs}"), frame, None, self.factors, self.ordered
                )
        return self._template

    def design(self, response: str) -> Design:
        """The design of one response: the shared one with its ``y``, or its own where it has missing values."""
        template = self.template()
        rows = template.y.astype(np.int64)  # positions of the rows the shared design uses
        values = self.data[response].iloc[rows]
        parsed = parse_formula(self.formula(response))
        if values.isna().any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build_coded_design(parsed, self.data, self.family, self.factors, self.ordered)
        frame = self.data.iloc[rows].copy()
        y, trials, note = self.family.encode_response(values.to_numpy(), frame, parsed.response, None)
        formula = dataclasses.replace(template.formula, text=parsed.text, response=parsed.response)  # codings kept
        return dataclasses.replace(template, formula=formula, y=y, data=frame, trials=trials, response_note=note)

    def model(self, response: str) -> Lmer:
        """The unfitted Lmer of one response: a variant of the first response's model on its own design."""
        if getattr(self, "_base", None) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._base = Lmer(self.formula(self.responses[0]), self.data, self.family, self.priors,
                                  factors=self.factors, ordered=self.ordered)
        design = self.design(response)
        return self._base.variant(design, default_priors(design, self.priors, self.family), self.formula(response))

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name not in ("_template", "_base")}


def _fit_response(plan: _Plan, response: str, seed: int) -> dict[str, Any]:
    """A task: fit one response; its fixed-effects table, diagnostics and timing."""
    started = time.perf_counter()
    model = plan.model(response)
    settings = dict(plan.settings)
    if task_threads() is not None:
        settings.setdefault("cores", task_threads())
    coefs = model.fit(random_seed=seed, progressbar=False, **settings)
    return {"coefs": coefs, "warnings": list(model.warnings), "n_obs": model.design.n_obs,
            "seconds": time.perf_counter() - started}


@dataclass(eq=False)
class ManyFits:
    """The result of :func:`fit_many`.

    Attributes
    ----------
    coefs : pandas.DataFrame
        Tidy: one row per (response, fixed term), columns ``response``, ``term`` and those of
        :attr:`Lmer.coefs <bayeslmm.Lmer.coefs>` (``Estimate``, interval, ``SE``, ``pd``, ``R_hat``,
        ``ESS_bulk``, ``ESS_tail``). Failed fits have no rows.
    fits : pandas.DataFrame
        One row per response: ``n_obs``, ``seed``, ``seconds``, ``n_warnings``, ``failed``.
    warnings : dict of str to list of str
        Each response's diagnostic warnings (divergences, R-hat, ESS).
    failures : list of TaskFailure
        Fits that raised, each with its response and seed.
    settings : dict
        ``formula`` (right-hand side), ``random_seed``, ``executor``, ``seconds`` and the sampler settings.
    """

    plan: _Plan = field(repr=False)
    seeds: list[int]
    results: list = field(repr=False)
    failures: list[TaskFailure]
    run: dict = field(repr=False)
    _models: dict = field(default_factory=dict, repr=False)

    @property
    def responses(self) -> list[str]:
        """The response columns, in the order given."""
        return list(self.plan.responses)

    @property
    def coefs(self) -> pd.DataFrame:
        tables = []
        for response, result in zip(self.plan.responses, self.results):
            if result is not None:
                table = result["coefs"].reset_index().rename(columns={"index": "term"})
                table.insert(0, "response", response)
                tables.append(table)
        if not tables:
            return pd.DataFrame(columns=["response", "term"])
        return pd.concat(tables, ignore_index=True)

    @property
    def fits(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "n_obs": [r["n_obs"] if r else np.nan for r in self.results],
                "seed": self.seeds,
                "seconds": [r["seconds"] if r else np.nan for r in self.results],
                "n_warnings": [len(r["warnings"]) if r else np.nan for r in self.results],
                "failed": [r is None for r in self.results],
            },
            index=pd.Index(self.plan.responses, name="response"),
        )

    @property
    def warnings(self) -> dict[str, list[str]]:
        return {resp: r["warnings"] for resp, r in zip(self.plan.responses, self.results) if r and r["warnings"]}

    @property
    def settings(self) -> dict:
        return {"formula": f"~ {self.plan.rhs}", **self.run, **self.plan.settings}

    def __len__(self) -> int:
        return len(self.plan.responses)

    def __getitem__(self, response: str) -> Lmer:
        """The fitted model of ``response``: refitted here from its seed (the same draws), then kept."""
        if response not in self.plan.responses:
            raise KeyError(f"{response!r} is not one of the responses; they are {listing(map(repr, self.plan.responses))}")
        if response not in self._models:
            position = self.plan.responses.index(response)
            model = self.plan.model(response)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its diagnostics are in .warnings already
                model.fit(random_seed=self.seeds[position], progressbar=False, **self.plan.settings)
            self._models[response] = model
        return self._models[response]

    def summary_parts(self, max_rows: int = 10) -> SummaryParts:
        """The printed form: what was fitted, the first ``max_rows`` responses' fixed effects."""
        s = self.settings
        n_failed = len(self.failures)
        header = [
            f"{len(self)} mixed models, one per response (bayeslmm fit_many)",
            f"Formula: <response> ~ {self.plan.rhs}; family: {self.plan.family.name}",
            f"Each: {s['chains']} chains x {s['draws']} draws after {s['tune']} tuning; ran on {s['executor']} in "
            f"{s['seconds']:.1f} s; random_seed={s['random_seed']}",
            f"Fits with diagnostic warnings: {len(self.warnings)}; failed: {n_failed}",
        ]
        coefs = self.coefs
        shown = coefs[coefs["response"].isin(self.plan.responses[:max_rows])].set_index(["response", "term"])
        footer = []
        if len(self) > max_rows:
            footer.append(f"... and {len(self) - max_rows} more responses: see .coefs (tidy) and .fits.")
        footer.append("result[response] gives that response's fitted Lmer (refitted from its seed: the same draws).")
        if self.failures:
            footer.append(f"First failure: {self.failures[0]}")
        drop = [c for c in ("ESS_tail",) if c in shown.columns]
        return SummaryParts(header, [("Fixed effects:", shown.drop(columns=drop))], footer=footer,
                            formats={"ESS_bulk": "{:.0f}".format})

    def __repr__(self) -> str:
        return layout_text(self.summary_parts())

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())
