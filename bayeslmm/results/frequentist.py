"""Frequentist results: lme4's (RE)ML fit of a model as pymer4-shaped tables.

:func:`fit_frequentist` runs the REML engine (:mod:`bayeslmm.engines.reml`) and returns a
:class:`FrequentistResult`, whose tables have the same layout as the Bayesian ones (same row and
column order; :func:`~bayeslmm.results.summaries.group_tables` builds both) and whose summary goes
through the same :class:`~bayeslmm.results.report.SummaryParts` as the Bayesian summary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayeslmm.engines.reml import RemlFit, contrast_f_test, contrast_t_test, fit_reml
from bayeslmm.errors import ConvergenceWarning, UnsupportedSyntaxError
from bayeslmm.results import prediction
from bayeslmm.results.report import Summary, SummaryParts, layout_html, layout_text, significance_stars
from bayeslmm.results.summaries import by_factor, group_tables
from bayeslmm.spec.design import Design
from bayeslmm.spec.hypotheses import type3_hypotheses

__all__ = ["FrequentistResult", "fit_frequentist", "SINGULAR_MESSAGE"]

#: lme4's message for a fit on the boundary of the parameter space.
SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"
_COEF_COLUMNS = ["Estimate", "SE", "2.5_ci", "97.5_ci", "DF", "T-stat", "P-val"]


@dataclass(repr=False, eq=False)
class FrequentistResult:
    """A fitted linear mixed model, with lme4/pymer4 names.

    Let ``n`` be the number of observations, ``p`` the number of fixed effects and ``m`` the number of
    covariance parameters ``theta``.

    Attributes
    ----------
    coefs : pandas.DataFrame, shape (p, 7)
        Indexed by fixed term, columns ``Estimate``, ``SE``, ``2.5_ci``, ``97.5_ci``, ``DF``, ``T-stat``,
        ``P-val``. ``DF`` is Satterthwaite's approximation (lmerTest); the interval is
        ``Estimate +- t(0.975, DF) SE`` and ``P-val`` is two-sided.
    ranef_var : pandas.DataFrame
        Index ``group``: the factor of each (block, term) pair in block order, then ``"Residual"``.
        Columns ``Name`` (term; ``""`` for the residual), ``Var``, ``Std``.
    ranef_corr : pandas.DataFrame or None
        Index ``group``, columns ``IV1``, ``IV2``, ``Corr``: one row per pair of terms within a block;
        None when every block has a single term.
    ranef : pandas.DataFrame or dict of str to pandas.DataFrame
        Conditional modes of the group deviations (lme4's ``ranef()``), levels x terms; a dict keyed by
        factor when there are several factors.
    fixef : pandas.DataFrame or dict of str to pandas.DataFrame
        Per-group coefficients (lme4's ``coef()``): terms with only a group effect first, then every
        fixed term (the Bayesian ``fixef`` has the same columns).
    logLike, AIC, BIC : float
        Log-likelihood at the optimum (of the REML criterion when ``REML``), ``-2 logLike + 2 k`` and
        ``-2 logLike + log(n) k`` with ``k = p + m + 1``.
    REML : bool
    sigma : float
        Residual standard deviation.
    theta : ndarray, shape (m,)
        Relative covariance factors, lme4's layout.
    beta : ndarray, shape (p,)
    vcov : pandas.DataFrame, shape (p, p)
    fitted, residuals : ndarray, shape (n,)
        ``X beta + Z b`` and ``y - fitted``.
    converged : bool
        The optimiser succeeded and lme4's scaled-gradient check passes (2e-3).
    singular : bool
        A variance is 0 or a correlation is +-1 (lme4's ``isSingular``, tolerance 1e-4).
    deviance : float
        ``-2 logLike`` (lme4's "REML criterion at convergence" when REML).
    n_obs : int
    n_groups : dict of str to int
    formula : str
    df_method : str
    optimizer_message : str
    n_evaluations : int
    fit_seconds : float
    design : Design
    reml : RemlFit
        The engine's arrays, with the derivatives behind every Satterthwaite df.
    """

    coefs: pd.DataFrame
    ranef_var: pd.DataFrame
    ranef_corr: pd.DataFrame | None
    ranef: pd.DataFrame | dict[str, pd.DataFrame]
    fixef: pd.DataFrame | dict[str, pd.DataFrame]
    logLike: float
    AIC: float
    BIC: float
    REML: bool
    sigma: float
    theta: np.ndarray
    beta: np.ndarray
    vcov: pd.DataFrame
    fitted: np.ndarray
    residuals: np.ndarray
    converged: bool
    singular: bool
    deviance: float
    n_obs: int
    n_groups: dict[str, int]
    formula: str
    df_method: str
    optimizer_message: str
    n_evaluations: int
    fit_seconds: float
    design: Design = field(repr=False)
    reml: RemlFit | None = field(default=None, repr=False)

    @property
    def warnings(self) -> list[str]:
        """lme4's messages about this fit: non-convergence and boundary (singular) fits."""
        messages = []
        if not self.converged:
            messages.append(f"optimizer did not converge ({self.optimizer_message})")
        if self.singular:
            messages.append(SINGULAR_MESSAGE)
        return messages

    # -- tests, predictions, simulations --------------------------------------------------------
    def test_contrasts(self, L: np.ndarray, index: pd.Index | None = None) -> pd.DataFrame:
        """A t test with Satterthwaite df of each linear combination ``l' beta`` (a row of ``L``).

        Parameters
        ----------
        L : ndarray, shape (r, p)
        index : pandas.Index, optional
            Row labels.

        Returns
        -------
        pandas.DataFrame, shape (r, 5)
            ``Estimate``, ``SE``, ``DF``, ``T-stat``, ``P-val`` (two-sided), as lmerTest's ``contest1D``.
        """
        L = np.atleast_2d(np.asarray(L, dtype=float))
        rows = [contrast_t_test(self.reml, l) for l in L]
        return pd.DataFrame(rows, columns=["Estimate", "SE", "DF", "T-stat", "P-val"], index=index)

    def anova(self, force_orthogonal: bool = False) -> pd.DataFrame:
        """Type III ANOVA table with Satterthwaite denominator df, as lmerTest's ``anova(model)``.

        One row per fixed term (a factor with ``k`` levels is one term, tested with ``k - 1`` df); the
        hypothesis of each is the Type III one of :func:`bayeslmm.spec.hypotheses.type3_hypotheses`
        (equally weighted marginal means for factors), which does not depend on the model's coding,
        and the F test lmerTest's ``contestMD`` (:func:`bayeslmm.engines.reml.contrast_f_test`).

        Parameters
        ----------
        force_orthogonal : bool
            pymer4 refits with polynomial contrasts to make its Type III sums of squares valid; these
            hypotheses do not depend on the contrasts, so the table is the same either way (accepted
            for compatibility).

        Returns
        -------
        pandas.DataFrame
            Indexed by term: ``SS``, ``MS``, ``NumDF``, ``DenomDF``, ``F-stat``, ``P-val``, ``Sig``
            (pymer4's names for lmerTest's ``Sum Sq``, ``Mean Sq``, ``NumDF``, ``DenDF``, ``F value``,
            ``Pr(>F)``).
        """
        rows = {term: contrast_f_test(self.reml, L) for term, L in type3_hypotheses(self.design).items()}
        table = pd.DataFrame.from_dict(rows, orient="index", columns=["SS", "MS", "NumDF", "DenomDF", "F-stat", "P-val"])
        table.index.name = "term"
        table["Sig"] = [significance_stars(p) for p in table["P-val"]]
        table.attrs.update({"type": "III", "df_method": "Satterthwaite", "REML": self.REML})
        return table

    def predict(
        self, data=None, use_rfx: bool = True, pred_type: str = "response", unseen: str = "population", offset=None
    ) -> np.ndarray:
        """Predictions of the (RE)ML fit, as lme4's ``predict(model, newdata, allow.new.levels=TRUE)``.

        Parameters
        ----------
        data : pandas.DataFrame or polars.DataFrame, optional
            New rows; the fitted rows when None.
        use_rfx : bool
            Add the conditional modes of the group effects (lme4's ``re.form = NULL``); False gives the
            population level (``re.form = NA``).
        pred_type : {"response", "link"}
            The scale (the same for a gaussian model).
        unseen : {"population", "error"}
            New group levels get the population level (lme4's ``allow.new.levels = TRUE``) or raise.
        offset : array-like or str, optional
            The offset of the new rows, for a model fitted with ``offset=``.

        Returns
        -------
        ndarray, shape (rows,)
        """
        if unseen == "sample":
            raise ValueError("unseen='sample' draws group effects from the posterior; the (RE)ML fit has "
                             "'population' (lme4's allow.new.levels=TRUE) and 'error'")
        if pred_type not in ("response", "link"):
            raise ValueError(f"pred_type must be 'response' or 'link', got {pred_type!r}")
        rows = prediction.new_rows(self.design, data, use_rfx, unseen, offset)
        effects = self.reml.ranef if use_rfx and rows.design.blocks else None
        return rows.design.linear_predictor(self.beta, effects)

    def simulate(self, n: int, use_rfx: bool = True, random_seed: int | None = None) -> pd.DataFrame:
        """``n`` simulated responses per fitted row from the (RE)ML fit, as lme4's ``simulate``.

        With ``use_rfx`` the group effects are the conditional modes (``use.u = TRUE``); without,
        each simulation draws new group effects from ``N(0, Sigma_hat)`` (``use.u = FALSE``). The
        residuals are ``N(0, sigma_hat^2)``.

        Returns
        -------
        pandas.DataFrame, shape (rows, n)
            Columns ``sim_1`` ... ``sim_n``.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive number of simulated data sets, got {n!r}")
        rng = np.random.default_rng(random_seed)
        design = self.design
        factors = [
            np.linalg.cholesky(covariance + 1e-12 * np.eye(len(covariance)))
            for covariance in design.random.covariances(self.theta, self.sigma)
        ]
        out = np.empty((design.n_obs, n))
        for i in range(n):
            if use_rfx:
                effects = self.reml.ranef
            else:
                effects = [rng.standard_normal((b.n_levels, b.n_terms)) @ f.T for b, f in zip(design.blocks, factors)]
            out[:, i] = design.linear_predictor(self.beta, effects) + rng.normal(0.0, self.sigma, design.n_obs)
        return pd.DataFrame(out, index=design.data.index, columns=[f"sim_{i}" for i in range(1, n + 1)])

    # -- printed forms ---------------------------------------------------------------------------
    def summary_parts(self) -> SummaryParts:
        """The lme4-style summary as :class:`~bayeslmm.results.report.SummaryParts`."""
        if self.REML:
            criterion = f"REML criterion at convergence: {self.deviance:.4f}"
        else:
            criterion = (
                f"AIC: {self.AIC:.4f}   BIC: {self.BIC:.4f}   logLik: {self.logLike:.4f}   "
                f"deviance: {self.deviance:.4f}   df.resid: {self._df_resid()}"
            )
        header = [self._title(), f"Formula: {self.formula}", criterion, self._counts()]
        tables = [
            ("Random effects:", self._random_table(with_variance=True)),
            (f"Fixed effects ({self.df_method} df):", self._fixed_table()),
        ]
        return SummaryParts(header, tables, footer=[f"Warning: {m}" for m in self.warnings])

    def summary(self) -> Summary:
        """lme4-style summary: criterion, random effects, fixed effects with Satterthwaite tests."""
        return Summary(self.summary_parts())

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())

    def __repr__(self) -> str:
        # the short form of lme4's print(): criterion, random-effect SDs and fixed estimates
        criterion = "REML criterion" if self.REML else "logLik"
        value = self.deviance if self.REML else self.logLike
        fixed = pd.DataFrame({"Estimate": self.beta}, index=list(self.coefs.index))
        parts = SummaryParts(
            [self._title(), f"Formula: {self.formula}", f"{criterion}: {value:.4f}", self._counts()],
            [("Random effects:", self._random_table(with_variance=False)), ("Fixed Effects:", fixed)],
            footer=[f"Warning: {m}" for m in self.warnings],
            formats={"Estimate": "{:.4f}".format},
        )
        return layout_text(parts)

    __str__ = __repr__

    def _title(self) -> str:
        method = "REML" if self.REML else "maximum likelihood"
        return f"Linear mixed model fit by {method} (lme4 algorithm, bayeslmm)"

    def _df_resid(self) -> int:
        return self.n_obs - len(self.beta) - len(self.theta) - 1

    def _counts(self) -> str:
        groups = ", ".join(f"{factor}, {count}" for factor, count in self.n_groups.items())
        return f"Number of obs: {self.n_obs}, groups: {groups}"

    def _random_table(self, with_variance: bool) -> pd.DataFrame:
        """Groups / Name / (Variance) / Std.Dev. / Corr, correlations in the lower triangle (lme4's layout)."""
        rows = []
        covariances = self.design.random.covariances(self.theta, self.sigma)
        for block, covariance in zip(self.design.blocks, covariances):
            sd = np.sqrt(np.diag(covariance))
            for i, name in enumerate(block.terms):
                corr = [covariance[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan for j in range(i)]
                rows.append(
                    [block.factor if i == 0 else "", name]
                    + ([f"{covariance[i, i]:.4f}"] if with_variance else [])
                    + [f"{sd[i]:.4f}", " ".join(f"{c:5.2f}" for c in corr)]
                )
        rows.append(["Residual", ""] + ([f"{self.sigma**2:.4f}"] if with_variance else []) + [f"{self.sigma:.4f}", ""])
        columns = ["Groups", "Name"] + (["Variance"] if with_variance else []) + ["Std.Dev.", "Corr"]
        return pd.DataFrame(rows, columns=columns).set_index("Groups")

    def _fixed_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "Estimate": [f"{v:.4f}" for v in self.coefs["Estimate"]],
                "Std. Error": [f"{v:.4f}" for v in self.coefs["SE"]],
                "df": [f"{v:.4f}" for v in self.coefs["DF"]],
                "t value": [f"{v:.4f}" for v in self.coefs["T-stat"]],
                "Pr(>|t|)": [f"{v:.3g}" for v in self.coefs["P-val"]],
            },
            index=self.coefs.index,
        )


def fit_frequentist(design: Design, REML: bool = True, family=None) -> FrequentistResult:
    """Fit a linear mixed model by REML (default) or ML, as ``lme4::lmer`` with lmerTest's df.

    Parameters
    ----------
    design : Design
        From :func:`bayeslmm.spec.design.build_design`; needs at least one random-effects block.
    REML : bool, default True
        Optimise the REML criterion (lme4's default) instead of the likelihood.
    family : Family, optional
        The model's family; only gaussian has a (RE)ML fit here.

    Returns
    -------
    FrequentistResult

    Raises
    ------
    UnsupportedSyntaxError
        A family other than gaussian.
    DataError
        No random effects, a rank-deficient fixed-effects matrix, too few observations, or a response
        the fixed effects reproduce exactly.

    Warns
    -----
    ConvergenceWarning
        The optimiser did not converge, or the fit is singular (lme4's "boundary (singular) fit").
    """
    if family is not None and family.name != "gaussian":
        raise UnsupportedSyntaxError(
            f"fit_frequentist: the (RE)ML fit is for gaussian models; family {family.name!r} has none yet"
        )
    fit = fit_reml(design, REML=REML)
    result = _result(design, fit)
    if fit.singular:
        warnings.warn(SINGULAR_MESSAGE, ConvergenceWarning, stacklevel=2)
    return result


def _result(design: Design, fit: RemlFit) -> FrequentistResult:
    """The tables of a :class:`~bayeslmm.engines.reml.RemlFit`."""
    from scipy import stats

    random = design.random
    fitted = design.linear_predictor(fit.beta, fit.ranef)
    n_parameters = design.X.shape[1] + random.n_theta + 1
    names = list(design.fixed_terms)
    log_like = -0.5 * fit.deviance
    se = np.sqrt(np.diag(fit.vcov))
    t_stat = fit.beta / se
    half = stats.t.ppf(0.975, fit.df) * se
    coefs = pd.DataFrame(
        {
            "Estimate": fit.beta,
            "SE": se,
            "2.5_ci": fit.beta - half,
            "97.5_ci": fit.beta + half,
            "DF": fit.df,
            "T-stat": t_stat,
            "P-val": 2.0 * stats.t.sf(np.abs(t_stat), fit.df),
        },
        index=pd.Index(names),
    )[_COEF_COLUMNS]
    return FrequentistResult(
        coefs=coefs,
        ranef_var=_ranef_var(design, fit),
        ranef_corr=_ranef_corr(design, fit),
        ranef=by_factor(design, group_tables(design, None, fit.ranef)),
        fixef=by_factor(design, group_tables(design, fit.beta, fit.ranef)),
        logLike=log_like,
        AIC=-2.0 * log_like + 2.0 * n_parameters,
        BIC=-2.0 * log_like + np.log(design.n_obs) * n_parameters,
        REML=fit.REML,
        sigma=fit.sigma,
        theta=fit.theta,
        beta=fit.beta,
        vcov=pd.DataFrame(fit.vcov, index=names, columns=names),
        fitted=fitted,
        residuals=design.y - fitted,
        converged=fit.converged,
        singular=fit.singular,
        deviance=fit.deviance,
        n_obs=design.n_obs,
        n_groups={factor: len(levels) for factor, levels in design.factors.items()},
        formula=design.formula.text,
        df_method=fit.df_method,
        optimizer_message=fit.message,
        n_evaluations=fit.n_evaluations,
        fit_seconds=fit.seconds,
        design=design,
        reml=fit,
    )


def _ranef_var(design: Design, fit: RemlFit) -> pd.DataFrame:
    """Variance and SD of each (block, term) pair, then the residual."""
    groups, names, variances = [], [], []
    for block, covariance in zip(design.blocks, design.random.covariances(fit.theta, fit.sigma)):
        groups += [block.factor] * block.n_terms
        names += list(block.terms)
        variances += list(np.diag(covariance))
    groups.append("Residual")
    names.append("")
    variances.append(fit.sigma**2)
    variances = np.asarray(variances)
    return pd.DataFrame({"Name": names, "Var": variances, "Std": np.sqrt(variances)}, index=pd.Index(groups, name="group"))


def _ranef_corr(design: Design, fit: RemlFit) -> pd.DataFrame | None:
    """Within-block correlations, one row per pair of terms; None when no block has two terms."""
    groups, first, second, corr = [], [], [], []
    for block, cov in zip(design.blocks, design.random.covariances(fit.theta)):
        if block.n_terms < 2:
            continue
        sd = np.sqrt(np.diag(cov))
        for i in range(block.n_terms):
            for j in range(i + 1, block.n_terms):
                groups.append(block.factor)
                first.append(block.terms[i])
                second.append(block.terms[j])
                corr.append(cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan)
    if not groups:
        return None
    return pd.DataFrame({"IV1": first, "IV2": second, "Corr": corr}, index=pd.Index(groups, name="group"))


