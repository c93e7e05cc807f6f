"""Lmer: the user-facing linear mixed model, pymer4's API on a Bayesian engine."""

from __future__ import annotations

import dataclasses
import warnings
from functools import cached_property
from typing import Any, ClassVar

import pandas as pd
import xarray as xr

from bayeslmm.analysis import pooling
from bayeslmm.engines import collapsed, glmm
from bayeslmm.engines.posterior_names import var_names
from bayeslmm.engines.sampling import SamplerSettings, check_fit_arguments
from bayeslmm.errors import FormulaError, PriorSensitivityWarning
from bayeslmm.models.base import Model
from bayeslmm.results import summaries
from bayeslmm.results.frequentist import FrequentistResult, fit_frequentist
from bayeslmm.results.report import ReportTable, SummaryParts, display_table
from bayeslmm.spec.contrasts import build_coded_design
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.priors import default_priors, few_levels_warnings

__all__ = ["Lmer"]


class Lmer(Model):
    """Bayesian linear mixed model from an lme4 formula.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``. Supported random terms: ``(1|g)``,
        ``(x|g)``, ``(0+x|g)``, ``(x||g)``, ``(1|g1/g2)``, ``(1|g1:g2)``, crossed and several blocks.
    data : pandas.DataFrame or polars.DataFrame
        Never modified. Rows with missing values in the columns used are dropped with a warning.
    family : str
        ``"gaussian"`` (default), ``"binomial"``, ``"poisson"`` or ``"negbinomial"``; R's spelling
        ``"binomial(link='probit')"`` also works.
    priors : dict, optional
        Overrides of the default priors; see :mod:`bayeslmm.spec.priors`.
    link : str, optional
        The link function, if not the family's default: ``"probit"`` or ``"cloglog"`` for binomial.
    weights : array-like or str, optional
        Binomial trials of a proportion response, as glmer's ``weights`` (one per row, or a column name).
    offset : array-like or str, optional
        A known term added to the linear predictor, as glmer's ``offset`` (with the formula's
        ``offset(log(exposure))`` terms, if any).
    factors : dict, optional
        Codings of categorical predictors, as pymer4's: ``{"x": ["b", "a", "c"]}`` treatment-codes ``x``
        against ``"b"`` in that order, ``{"x": {"a": 1, "b": -1, "c": 0}}`` gives one custom contrast
        (and orthogonal ones for the remaining df); see :mod:`bayeslmm.spec.contrasts`. Also accepted by
        :meth:`fit`. ``C(x, levels=[...])`` in the formula sets the order too.
    ordered : bool
        Polynomial contrasts (R's ``contr.poly``) for the factors given as lists in ``factors``.

    Raises
    ------
    FormulaError, UnsupportedSyntaxError, DataError, PriorError
        On bad input, before anything is sampled.

    Examples
    --------
    >>> from bayeslmm import Lmer, load_dataset
    >>> model = Lmer("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    >>> model.fit(random_seed=1)  # doctest: +SKIP
    >>> model.coefs  # doctest: +SKIP
    """

    _cached: ClassVar[tuple[str, ...]] = ("coefs", "fixef", "ranef", "ranef_var", "ranef_corr", "family_params", "data")

    def __init__(
        self,
        formula: str,
        data: Any,
        family: str | Family = "gaussian",
        priors: dict | None = None,
        link: str | None = None,
        weights: Any = None,
        offset: Any = None,
        factors: dict | None = None,
        ordered: bool = False,
    ) -> None:
        family = get_family(family, link)
        parsed = parse_formula(formula)
        if not parsed.random:
            raise FormulaError(
                f"formula {formula!r} has no random-effects term such as '(1 | group)' (lme4 refuses it "
                "too); use bayeslmm.Lm for a regression without groups"
            )
        design = build_coded_design(parsed, data, family, factors, ordered, weights=weights, offset=offset)
        resolved = default_priors(design, priors, family)
        for message in few_levels_warnings(design, resolved):
            warnings.warn(message, PriorSensitivityWarning, stacklevel=2)
        super().__init__(formula, design, family, resolved, priors)
        self._factors, self._ordered = _plain(factors), bool(ordered)

    @property
    def factors(self) -> dict | None:
        """The ``factors=`` codings in use (pymer4's ``factors``), or None."""
        return None if self._factors is None else dict(self._factors)

    @property
    def init_arguments(self) -> dict:
        """``link``, ``weights`` and ``offset`` (on the rows used), and ``factors`` and ``ordered`` when
        given: what rebuilds this model with the formula, data, family and priors."""
        design = self.design
        arguments = {
            "link": self.family.link.name,
            "weights": None if design.weights is None else design.weights,
            "offset": None if design.offset_argument is None else design.offset_argument,
        }
        if self._factors is not None:
            arguments |= {"factors": self._factors, "ordered": self._ordered}
        return arguments

    def _recode(self, factors: dict | None, ordered: bool) -> None:
        """Rebuild the design with new factor codings (``fit(factors=...)``); priors are resolved again."""
        parsed = parse_formula(self.formula)
        old = self.design
        design = build_coded_design(
            parsed, old.data, self.family, factors, ordered, weights=old.weights, offset=old.offset_argument
        )
        design = dataclasses.replace(design, n_dropped=old.n_dropped)
        priors = default_priors(design, self._overrides, self.family)
        self._design, self._priors = design, priors
        self._factors, self._ordered = _plain(factors), bool(ordered)
        self._resources = {}
        self._clear_cache()
        self.idata, self.sampler, self.warnings = None, None, []

    # ----------------------------------------------------------------------------------- fitting
    def fit(
        self,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        random_seed: int | None = None,
        summarize: bool = False,
        progressbar: bool | None = None,
        marginalize: bool | None = None,
        factors: dict | None = None,
        ordered: bool = False,
        **sampler_options: Any,
    ) -> pd.DataFrame | None:
        """Sample the posterior.

        Parameters
        ----------
        draws, tune, chains : int
            Kept draws per chain, tuning steps per chain, number of chains.
        random_seed : int, optional
            The same seed gives the same draws.
        summarize : bool
            Print :meth:`summary` afterwards (and return None, so a notebook cell shows it once).
        progressbar : bool, optional
            Show a progress bar. ``None`` (default) decides: on in a Jupyter kernel or when standard
            error is a terminal, off when the ``CI`` environment variable is set or output goes to a file
            (see :func:`bayeslmm.engines.sampling.auto_progressbar`).
        marginalize : bool, optional
            How to sample. ``None`` (default) chooses: gaussian models the collapsed sampler of
            :mod:`bayeslmm.engines.collapsed` supports (Normal fixed-effect priors, no offset, moderate
            numbers of group effects) integrate the fixed and group effects out exactly, sample only
            the variance parameters, and draw the effects from their exact conditional (no compilation,
            about 10x faster); binomial, Poisson and negative binomial models, and gaussian models the
            collapsed sampler cannot take, go to the exact GLMM sampler of :mod:`bayeslmm.engines.glmm`
            (NUTS on the joint posterior in a parametrization informed by the Laplace approximation,
            compiled once for every model) when their fixed-effect priors are Normal, Student-t or
            Cauchy; every other model samples the full PyMC model. ``False`` forces the full PyMC
            model; ``True`` requires one of the exact samplers and raises if none applies. All sample
            the same posterior.
        factors, ordered
            New codings of categorical predictors, as in :class:`Lmer` (pymer4 sets them here): the
            design is rebuilt before sampling, and the coefficient names follow.
        **sampler_options
            ``target_accept`` (e.g. 0.95), ``maxdepth``, ``cores``; ``nuts_sampler="pymc"`` uses PyMC's
            own NUTS on the full model; ``method="imh"`` or ``"nuts"`` chooses the collapsed sampler's
            algorithm. Any other keyword is a TypeError before sampling.

        Returns
        -------
        pandas.DataFrame or None
            :attr:`coefs`, as pymer4's ``fit`` returns; None with ``summarize=True``.
        """
        if factors is not None or ordered:
            check_fit_arguments(draws, tune, chains, random_seed, sampler_options)
            self._recode(factors, ordered)
        return self._fit_loop(
            draws, tune, chains, random_seed, summarize, progressbar, {"marginalize": marginalize}, sampler_options
        )

    def _sample(self, *, marginalize: bool | None = None, **settings: Any) -> tuple[xr.DataTree, SamplerSettings]:
        keep = self._kept_variables()
        options = {k: v for k, v in settings.items() if k not in ("draws", "tune", "chains", "random_seed", "progressbar")}
        base = {k: settings[k] for k in ("draws", "tune", "chains", "random_seed")}
        engine = self._engine(marginalize, options)
        if engine is collapsed:
            return collapsed.sample_marginal(
                self.design, self.model_priors, keep=keep, progressbar=settings["progressbar"], **base, **options
            )
        if engine is glmm:
            return glmm.sample_glmm(
                self.design, self.model_priors, self.family, keep=keep, progressbar=settings["progressbar"],
                **base, **options,
            )
        from bayeslmm.engines.pymc_model import (  # PyMC loads only for this path
            build_model,
            sample_pymc,
        )

        options.pop("method", None)
        model = build_model(self.design, self.model_priors, self.family)
        return sample_pymc(model, keep=keep, progressbar=settings["progressbar"], **base, **options)

    def _engine(self, marginalize: bool | None, options: dict):
        """The sampler for this fit (see :meth:`fit`): the collapsed or GLMM module, or None for PyMC.

        Gaussian models take the collapsed sampler when it applies, else the GLMM engine (which has
        the exact joint posterior too, and none of the full model's divergences near the boundary);
        the other families take the GLMM engine. Everything else is the full PyMC model.
        """
        if marginalize is False or options.get("nuts_sampler", "nutpie") != "nutpie":
            if marginalize:
                raise ValueError("marginalize=True needs nutpie: drop nuts_sampler= or use marginalize=None")
            return None
        candidates = (collapsed, glmm) if self.family.name == "gaussian" else (glmm,)
        for engine in candidates:
            if engine.supports(self.design, self.model_priors, self.family):
                return engine
        if marginalize:
            raise ValueError(
                "marginalize=True: no exact sampler takes this model. The collapsed sampler needs a gaussian "
                "family, Normal priors on the fixed effects and no offset; the GLMM sampler needs a "
                "gaussian, binomial, poisson or negbinomial family and Normal, StudentT or Cauchy priors "
                "on the fixed effects; both need at least one random-effects term and SD priors other "
                "than InverseGamma(mu, sigma). Use marginalize=None to fall back to the full PyMC model "
                "automatically"
            )
        return None

    def _kept_variables(self) -> list[str]:
        names = ["beta"] + list(self.family.aux)
        for block in self.design.blocks:
            v = var_names(block)
            names += [v["sd"], v["ranef"]] + ([v["corr"]] if block.n_terms > 1 else [])
        return names

    def _diagnosed_variables(self) -> list[str]:
        """Fixed effects, SDs, correlations and family parameters (not the group effects)."""
        return [name for name in self._kept_variables() if not name.startswith("ranef_")]

    # ----------------------------------------------------------------------------------- frequentist
    def fit_frequentist(self, REML: bool | None = None, nAGQ: int = 1) -> FrequentistResult:
        """Fit the same model as lme4 does, computed once per criterion.

        Gaussian models: REML (default) or ML, as ``lmer``, with Satterthwaite df. Binomial, Poisson and
        negative binomial models: maximum likelihood with the Laplace approximation, as ``glmer`` (the
        negative binomial as glmmTMB's ``nbinom2``), or adaptive Gauss-Hermite quadrature.

        Parameters
        ----------
        REML : bool, optional
            None (default): REML for gaussian models, maximum likelihood otherwise. ``True`` with
            another family is an error (GLMMs have no REML criterion).
        nAGQ : int, default 1
            GLMMs: quadrature nodes per group; 1 is the Laplace approximation, more needs a single
            scalar random effect ``(1 | g)`` (as lme4); 0 is lme4's fast fit, the fixed effects
            estimated inside PIRLS (binomial and Poisson).

        Returns
        -------
        FrequentistResult
            With ``coefs`` (Estimate, SE, 2.5_ci, 97.5_ci, DF, T-stat, P-val for gaussian models; Wald
            Z-stat and P-val otherwise), ``ranef_var``, ``ranef_corr``, ``ranef`` (conditional modes),
            ``fixef``, ``logLike``, ``AIC``, ``BIC``, ``data``.

        Raises
        ------
        UnsupportedSyntaxError
            ``REML=True`` for a GLMM, ``nAGQ`` other than 1 for a gaussian model, or ``nAGQ > 1`` with
            random effects other than a single ``(1 | g)``.
        """
        REML = self.family.name == "gaussian" if REML is None else bool(REML)
        result = self.resource(
            f"frequentist REML={REML} nAGQ={nAGQ}",
            lambda: fit_frequentist(self.design, REML=REML, family=self.family, nAGQ=nAGQ),
        )
        self._last_frequentist = result
        return result

    @property
    def frequentist(self) -> FrequentistResult | None:
        """The frequentist fit last asked for with :meth:`fit_frequentist`, or None."""
        return getattr(self, "_last_frequentist", None)

    def compare_group_estimates(self, factor: str | None = None, prob: float = 0.95, REML: bool | None = None) -> pd.DataFrame:
        """Per-group coefficients under no, partial (frequentist and Bayesian) and complete pooling.

        One tidy row per (level, term); see :func:`bayeslmm.analysis.pooling.compare_group_estimates`.
        """
        return pooling.compare_group_estimates(self, factor=factor, prob=prob, REML=REML)

    def compare_fixed_effects(self, prob: float = 0.95, REML: bool | None = None) -> pd.DataFrame:
        """Fixed effects of the frequentist fit next to their posterior summaries; see :mod:`bayeslmm.analysis.pooling`."""
        return pooling.compare_fixed_effects(self, prob=prob, REML=REML)

    def compare_variance_components(
        self, prob: float = 0.95, REML: bool | None = None, n_boot: int = 0, random_seed: int | None = None, *,
        client: Any = None, workers: int | None = None,
    ) -> pd.DataFrame:
        """Random-effect SDs and correlations: frequentist estimate next to the posterior median and interval.

        ``n_boot > 0`` adds a parametric-bootstrap interval for the frequentist estimates, its refits run where
        ``client=``/``workers=`` say; see :func:`bayeslmm.analysis.pooling.compare_variance_components`.
        """
        return pooling.compare_variance_components(
            self, prob=prob, REML=REML, n_boot=n_boot, random_seed=random_seed, client=client, workers=workers
        )

    # ----------------------------------------------------------------------------------- tests
    def anova(self, force_orthogonal: bool = False, elpd: bool = True, random_seed: int | None = None) -> ReportTable:
        """Type III ANOVA: lmerTest's F tests next to the elpd gained by each term and its joint pd.

        One row per fixed term (a factor with ``k`` levels is one term). See
        :func:`bayeslmm.analysis.anova.anova`; ``elpd=False`` skips the refits without each term.
        """
        self._require_fit("anova")
        from bayeslmm.analysis import anova  # ArviZ (for LOO) only when asked for

        return anova.anova(self, force_orthogonal=force_orthogonal, elpd=elpd, random_seed=random_seed)

    def post_hoc(
        self,
        marginal_vars: str | list[str],
        grouping_vars: str | list[str] | None = None,
        p_adjust: str = "tukey",
        prob: float = 0.95,
    ) -> tuple[ReportTable, ReportTable]:
        """Estimated marginal means and pairwise contrasts (pymer4's ``post_hoc``, emmeans').

        Returns ``(means, contrasts)``: posterior mean, credible interval and pd of each, next to
        emmeans' frequentist answer (Satterthwaite df, ``p_adjust``-adjusted p-values). See
        :func:`bayeslmm.analysis.posthoc.post_hoc`.
        """
        self._require_fit("post_hoc")
        from bayeslmm.analysis import posthoc

        return posthoc.post_hoc(self, marginal_vars, grouping_vars, p_adjust=p_adjust, prob=prob)

    emmeans = post_hoc  # pymer4 0.9's name

    # ----------------------------------------------------------------------------------- results
    @cached_property
    def fixef(self) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Per-group coefficients, fixed plus random (lme4's ``coef()``): posterior means, levels x terms."""
        self._require_fit("fixef")
        return summaries.wide_by_factor(self.design, self.posterior, total=True)

    @cached_property
    def ranef(self) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Per-group deviations from the fixed effects (lme4's ``ranef()``): posterior means, levels x terms."""
        self._require_fit("ranef")
        return summaries.wide_by_factor(self.design, self.posterior, total=False)

    def ranef_summary(self, total: bool = False, prob: float = 0.95, hdi: bool = False) -> pd.DataFrame:
        """Tidy table of every group effect with posterior mean, SD, interval and pd.

        Parameters
        ----------
        total : bool
            False for deviations (``ranef``), True for group coefficients (``fixef``).
        """
        self._require_fit("ranef_summary")
        return summaries.ranef_long(self.design, self.posterior, total=total, prob=prob, hdi=hdi)

    @cached_property
    def ranef_var(self) -> pd.DataFrame:
        """Variance components: ``Name``, ``Var``, ``Std`` (posterior medians) and a 95% interval of ``Std``."""
        self._require_fit("ranef_var")
        return summaries.ranef_var_table(self.design, self.posterior)

    @cached_property
    def ranef_corr(self) -> pd.DataFrame | None:
        """Correlations of group effects: ``IV1``, ``IV2``, ``Corr`` (posterior median), interval; None if none."""
        self._require_fit("ranef_corr")
        return summaries.ranef_corr_table(self.design, self.posterior)

    @cached_property
    def family_params(self) -> pd.DataFrame | None:
        """The family's parameters besides the mean (the negative binomial's ``dispersion``): posterior
        median (``Estimate``) and 95% interval; None for families without any (gaussian ``sigma`` is the
        ``Residual`` row of :attr:`ranef_var`)."""
        self._require_fit("family_params")
        return summaries.family_params_table(self.posterior, self.family)

    # ----------------------------------------------------------------------------------- plots
    def plot_group_fits(self, x: str | None = None, group: str | None = None, **options: Any):
        """One facet per group: data, posterior mean and credible bands; see :func:`bayeslmm.plots.plot_group_fits`."""
        from bayeslmm import plots  # matplotlib is imported only when a plot is drawn

        return plots.plot_group_fits(self, x, group, **options)

    def plot_shrinkage(self, terms: str | list[str] | None = None, group: str | None = None, **options: Any):
        """No-pooling -> partial-pooling arrows per group; see :func:`bayeslmm.plots.plot_shrinkage`."""
        from bayeslmm import plots

        return plots.plot_shrinkage(self, terms, group, **options)

    def plot_caterpillar(self, group: str | None = None, terms: str | list[str] | None = None, **options: Any):
        """Sorted group effects with intervals, one panel per term; see :func:`bayeslmm.plots.plot_caterpillar`."""
        from bayeslmm import plots

        return plots.plot_caterpillar(self, group, terms, **options)

    def plot_rootogram(self, **options: Any):
        """Hanging rootogram of a count response; see :func:`bayeslmm.plots.plot_rootogram`."""
        from bayeslmm import plots

        return plots.plot_rootogram(self, **options)

    def plot_ppc_groups(self, group: str | None = None, **options: Any):
        """Observed against replicated proportion or mean count per group; see :func:`bayeslmm.plots.plot_ppc_groups`."""
        from bayeslmm import plots

        return plots.plot_ppc_groups(self, group, **options)

    def plot(self, param: str | None = None, group: str | None = None, **options: Any):
        """pymer4's ``plot(param)``: every group's fitted line along predictor ``param``; see :meth:`plot_group_fits`."""
        return self.plot_group_fits(param, group, **options)

    def to_bambi(self):
        """The same model as a ``bambi.Model`` (unfitted, with this model's priors), for Bambi's tools.

        See :func:`bayeslmm.models.bambi_export.to_bambi`; correlated random-effects blocks such as
        ``(Days | Subject)`` cannot be expressed in Bambi and raise an error that says so.
        """
        from bayeslmm.models.bambi_export import to_bambi

        return to_bambi(self)

    def plot_variance_components(self, **options: Any):
        """Posterior densities of SDs and correlations; see :func:`bayeslmm.plots.plot_variance_components`."""
        from bayeslmm import plots

        return plots.plot_variance_components(self, **options)

    # ----------------------------------------------------------------------------------- printing
    def _header(self) -> list[str]:
        design = self.design
        groups = ", ".join(f"{factor}, {count}" for factor, count in self.grps.items())
        kind = "linear" if self.family.name == "gaussian" else "generalized linear"
        title = (
            f"Bayesian {kind} mixed model (bayeslmm) fit by {self.sampler}"
            if self.fitted
            else f"Bayesian {kind} mixed model (bayeslmm), not fitted yet: call .fit()"
        )
        return [
            title,
            f"Formula: {self.formula}",
            f"Family: {self.family.name} ({self.family.link.name} link)",
            *([f"Response: {design.response_note}"] if design.response_note else []),
            f"Number of obs: {design.n_obs}; groups: {groups}"
            + (f"; {design.n_dropped} rows dropped for missing values" if design.n_dropped else ""),
        ]

    def _summary_parts(self) -> SummaryParts:
        """What the summary says; an unfitted model lists its priors instead."""
        if not self.fitted:
            return SummaryParts(self._header(), [("Priors:", self.priors)])
        tables = [("Random effects (posterior median of Var and Std, 95% interval of Std):", self.ranef_var)]
        if self.ranef_corr is not None:
            tables.append(("Correlations of random effects (posterior median, 95% interval):", self.ranef_corr))
        if self.family_params is not None:
            tables.append(("Family parameters (posterior median, 95% interval):", self.family_params))
        coefficient_scale = "" if self.family.name == "gaussian" else f", {self.family.link.name} scale"
        tables.append(
            (
                f"Fixed effects (posterior mean, 95% equal-tailed interval, posterior SD, probability of direction{coefficient_scale}):",
                display_table(self.coefs.drop(columns=["ESS_tail"])),
            )
        )
        notes = [f"Note: {note}" for note in summaries.boundary_notes(self.design, self.posterior)]
        return SummaryParts(self._header(), tables, diagnostics=list(self.warnings), footer=notes)

    def __repr__(self) -> str:
        groups = ", ".join(f"{factor}: {count}" for factor, count in self.grps.items())
        return (
            f"Lmer({self.formula!r}, family={self.family.name!r}, n={self.design.n_obs}, groups: {groups}; "
            f"{self._fit_state()})"
        )


def _plain(factors: Any) -> Any:
    """``factors`` with numpy scalars as Python values (it is saved as JSON with a fitted model)."""
    if factors is None or not isinstance(factors, dict):
        return factors

    def value(v):
        return v.item() if hasattr(v, "item") else v

    out = {}
    for column, spec in factors.items():
        if isinstance(spec, dict):
            out[column] = {value(level): value(weight) for level, weight in spec.items()}
        elif isinstance(spec, list | tuple):
            out[column] = [value(level) for level in spec]
        else:
            out[column] = spec
    return out
