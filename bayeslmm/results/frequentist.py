"""Frequentist results: lme4's fit of a model as pymer4-shaped tables.

:func:`fit_frequentist` runs the REML engine (:mod:`bayeslmm.engines.reml`, ``lmer``) for gaussian
models and the Laplace engine (:mod:`bayeslmm.engines.laplace`, ``glmer``) for binomial, Poisson and
negative binomial models, and returns a :class:`FrequentistResult`, whose tables have the same layout
as the Bayesian ones (same row and column order; :func:`~bayeslmm.results.summaries.group_tables`
builds both) and whose summary goes through the same :class:`~bayeslmm.results.report.SummaryParts` as
the Bayesian summary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayeslmm.engines.laplace import GlmmFit, fit_laplace
from bayeslmm.engines.reml import RemlFit, contrast_f_test, contrast_t_test, fit_reml
from bayeslmm.errors import ConvergenceWarning, UnsupportedSyntaxError
from bayeslmm.results import prediction
from bayeslmm.results.report import Summary, SummaryParts, layout_html, layout_text, significance_stars
from bayeslmm.results.summaries import by_factor, fitted_data, group_tables, pearson_residuals
from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.hypotheses import type3_hypotheses
from bayeslmm.spec.simulate import TrueParameters, simulate_response

__all__ = ["FrequentistResult", "fit_frequentist", "SINGULAR_MESSAGE", "AUX_DESCRIPTIONS"]

#: lme4's message for a fit on the boundary of the parameter space.
SINGULAR_MESSAGE = "boundary (singular) fit: see help('isSingular')"
_LMM_COLUMNS = ["Estimate", "SE", "2.5_ci", "97.5_ci", "DF", "T-stat", "P-val"]
_GLMM_COLUMNS = ["Estimate", "SE", "2.5_ci", "97.5_ci", "Z-stat", "P-val"]
#: What each family parameter is, for the summary's table of family parameters.
AUX_DESCRIPTIONS = {
    "dispersion": "the negative binomial's size k, Var(y) = mu + mu^2 / k (glmer.nb's theta, glmmTMB's sigma)",
}


@dataclass(repr=False, eq=False)
class FrequentistResult:
    """A fitted linear or generalized linear mixed model, with lme4/pymer4 names.

    Let ``n`` be the number of observations, ``p`` the number of fixed effects and ``m`` the number of
    covariance parameters ``theta``.

    Attributes
    ----------
    coefs : pandas.DataFrame, shape (p, 7) or (p, 6)
        Indexed by fixed term, on the link scale. Gaussian: ``Estimate``, ``SE``, ``2.5_ci``,
        ``97.5_ci``, ``DF``, ``T-stat``, ``P-val``; ``DF`` is Satterthwaite's approximation (lmerTest),
        the interval ``Estimate +- t(0.975, DF) SE``. Other families: ``Estimate``, ``SE``, ``2.5_ci``,
        ``97.5_ci``, ``Z-stat``, ``P-val``, Wald z tests and intervals ``Estimate +- z(0.975) SE`` (as
        ``summary(glmer)`` and pymer4). ``P-val`` is two-sided.
    ranef_var : pandas.DataFrame
        Index ``group``: the factor of each (block, term) pair in block order, then ``"Residual"`` for
        gaussian models (other families have no residual variance). Columns ``Name`` (term; ``""`` for
        the residual), ``Var``, ``Std``.
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
        Log-likelihood at the optimum (of the REML criterion when ``REML``; the full binomial, Poisson or
        negative binomial likelihood of a GLMM, as lme4's ``logLik`` of a Laplace fit), ``-2 logLike + 2 k``
        and ``-2 logLike + log(n) k`` with ``k = p + m`` plus one per family parameter (gaussian
        ``sigma``, negative binomial ``dispersion``).
    REML : bool
        False for every family but gaussian.
    sigma : float or None
        Residual standard deviation; None for families without one.
    aux : dict of str to float
        The family's parameters other than the mean: ``{"sigma": ...}`` for gaussian, ``{"dispersion":
        ...}`` for the negative binomial, empty for binomial and Poisson.
    family : Family
    nAGQ : int or None
        Quadrature nodes of a GLMM fit (1: Laplace approximation); None for a gaussian model.
    theta : ndarray, shape (m,)
        Relative covariance factors, lme4's layout (relative to ``sigma`` for gaussian models).
    beta : ndarray, shape (p,)
    vcov : pandas.DataFrame, shape (p, p)
    fitted : ndarray, shape (n,)
        The expected response at the conditional modes, ``g^-1(X beta + Z b + offset)`` (lme4's
        ``fitted``: a probability for binomial models).
    residuals : ndarray, shape (n,)
        Response residuals: observed response (a proportion for binomial models) minus ``fitted``.
    pearson_residuals : ndarray, shape (n,)
        ``(y - E y) / sd(y)`` at ``fitted`` (lme4's ``residuals(type = "pearson")``).
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
        How the tests were made: Satterthwaite's df, or Wald z tests.
    vcov_method : str
        How ``vcov`` was obtained.
    optimizer_message : str
    n_evaluations : int
    fit_seconds : float
    design : Design
    reml : RemlFit or None
        The REML engine's arrays, with the derivatives behind every Satterthwaite df (gaussian models).
    laplace : GlmmFit or None
        The Laplace engine's arrays (other families).
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
    sigma: float | None
    aux: dict
    family: Family
    nAGQ: int | None
    theta: np.ndarray
    beta: np.ndarray
    vcov: pd.DataFrame
    fitted: np.ndarray
    residuals: np.ndarray
    pearson_residuals: np.ndarray
    converged: bool
    singular: bool
    deviance: float
    n_obs: int
    n_groups: dict[str, int]
    formula: str
    df_method: str
    vcov_method: str
    optimizer_message: str
    n_evaluations: int
    fit_seconds: float
    design: Design = field(repr=False)
    reml: RemlFit | None = field(default=None, repr=False)
    laplace: GlmmFit | None = field(default=None, repr=False)

    @property
    def glmm(self) -> bool:
        """Whether this is a generalized linear mixed model (any family but gaussian)."""
        return self.nAGQ is not None

    @property
    def data(self) -> pd.DataFrame:
        """A copy of the rows used with ``fits`` (:attr:`fitted`), ``residuals`` and ``pearson_residuals``."""
        return fitted_data(self.design, self.fitted, self.pearson_residuals)

    def wald_interval(self, prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Confidence interval of every fixed effect: t on the Satterthwaite df (gaussian) or Wald z.

        Returns
        -------
        lower, upper : ndarray, shape (p,)
        """
        from scipy import stats

        quantile = stats.norm.ppf((1 + prob) / 2) if self.glmm else stats.t.ppf((1 + prob) / 2, self.coefs["DF"])
        half = np.asarray(quantile * self.coefs["SE"], dtype=float)
        estimate = self.coefs["Estimate"].to_numpy()
        return estimate - half, estimate + half

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
        """A test of each linear combination ``l' beta`` (a row of ``L``): t with Satterthwaite df, or Wald z.

        Parameters
        ----------
        L : ndarray, shape (r, p)
        index : pandas.Index, optional
            Row labels.

        Returns
        -------
        pandas.DataFrame, shape (r, 5) or (r, 4)
            Gaussian models: ``Estimate``, ``SE``, ``DF``, ``T-stat``, ``P-val`` (two-sided), as
            lmerTest's ``contest1D``. Other families: ``Estimate``, ``SE``, ``Z-stat``, ``P-val``, the
            Wald z test of ``summary(glmer)`` and ``emmeans`` for GLMMs.
        """
        L = np.atleast_2d(np.asarray(L, dtype=float))
        if self.glmm:
            from scipy import stats

            estimate = L @ self.beta
            se = np.sqrt(np.einsum("ri,ij,rj->r", L, self.vcov.to_numpy(), L))
            z = estimate / se
            return pd.DataFrame(
                {"Estimate": estimate, "SE": se, "Z-stat": z, "P-val": 2.0 * stats.norm.sf(np.abs(z))}, index=index
            )
        rows = [contrast_t_test(self.reml, l) for l in L]
        return pd.DataFrame(rows, columns=["Estimate", "SE", "DF", "T-stat", "P-val"], index=index)

    def wald_test(self, L: np.ndarray) -> dict[str, float]:
        """The Wald chi-square test of ``L beta = 0`` jointly (``car::Anova(type = 3)`` for a glmer fit).

        Parameters
        ----------
        L : ndarray, shape (r, p)
            Linearly independent rows.

        Returns
        -------
        dict
            ``Chisq`` (``(L beta)' (L V L')^{-1} (L beta)`` with ``V`` the fixed effects' covariance),
            ``Df`` (``r``), ``P-val`` (upper chi-square tail).

        Raises
        ------
        ValueError
            ``L`` of the wrong shape, not finite, or with linearly dependent rows.
        """
        from scipy import stats

        L = np.atleast_2d(np.asarray(L, dtype=float))
        p = len(self.beta)
        if L.ndim != 2 or L.shape[1] != p or not np.all(np.isfinite(L)):
            raise ValueError(
                f"wald_test: L must be a finite (r, {p}) matrix, one column per fixed effect {list(self.design.fixed_terms)}; "
                f"got shape {L.shape}"
            )
        if np.linalg.matrix_rank(L) < L.shape[0]:
            raise ValueError(f"wald_test: the {L.shape[0]} rows of L are linearly dependent; drop the redundant ones")
        estimate = L @ self.beta
        chisq = float(estimate @ np.linalg.solve(L @ self.vcov.to_numpy() @ L.T, estimate))
        return {"Chisq": chisq, "Df": float(L.shape[0]), "P-val": float(stats.chi2.sf(chisq, L.shape[0]))}

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

        Raises
        ------
        UnsupportedSyntaxError
            A GLMM: F tests with Satterthwaite df are for gaussian models.
        """
        if self.glmm:
            raise UnsupportedSyntaxError(
                f"anova(): the Type III F tests with Satterthwaite df are for gaussian models; for this "
                f"{self.family.name} model use the Wald z tests of coefs, test_contrasts(L) for a combination "
                "of coefficients, wald_test(L) for several jointly, or compare nested models with lrt"
            )
        rows = {term: contrast_f_test(self.reml, L) for term, L in type3_hypotheses(self.design).items()}
        table = pd.DataFrame.from_dict(rows, orient="index", columns=["SS", "MS", "NumDF", "DenomDF", "F-stat", "P-val"])
        table.index.name = "term"
        table["Sig"] = [significance_stars(p) for p in table["P-val"]]
        table.attrs.update({"type": "III", "df_method": "Satterthwaite", "REML": self.REML})
        return table

    def predict(
        self, data=None, use_rfx: bool = True, pred_type: str = "response", unseen: str = "population", offset=None
    ) -> np.ndarray:
        """Predictions of the frequentist fit, as lme4's ``predict(model, newdata, allow.new.levels=TRUE)``.

        Parameters
        ----------
        data : pandas.DataFrame or polars.DataFrame, optional
            New rows; the fitted rows when None.
        use_rfx : bool
            Add the conditional modes of the group effects (lme4's ``re.form = NULL``); False gives the
            population level (``re.form = NA``).
        pred_type : {"response", "link"}
            The expected response ``g^-1(eta)`` (a probability for binomial models, as lme4's
            ``type = "response"``) or the linear predictor (the same for a gaussian model).
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
        effects = self._modes if use_rfx and rows.design.blocks else None
        eta = rows.design.linear_predictor(self.beta, effects)
        return self.family.inverse_link(eta) if pred_type == "response" else eta

    @property
    def _modes(self) -> list[np.ndarray]:
        """The conditional modes of every block, shape (G, k), formula order."""
        return (self.reml or self.laplace).ranef

    def simulate(self, n: int, use_rfx: bool = True, random_seed: int | None = None) -> pd.DataFrame:
        """``n`` simulated responses per fitted row from the frequentist fit, as lme4's ``simulate``.

        With ``use_rfx`` the group effects are the conditional modes (``use.u = TRUE``); without,
        each simulation draws new group effects from ``N(0, Sigma_hat)`` (``use.u = FALSE``). The
        responses are then drawn from the family: ``N(mu, sigma_hat^2)``, or binomial (the number of
        successes out of the trials), Poisson or negative binomial counts.

        Returns
        -------
        pandas.DataFrame, shape (rows, n)
            Columns ``sim_1`` ... ``sim_n``.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive number of simulated data sets, got {n!r}")
        rng = np.random.default_rng(random_seed)
        parameters, effects = self.parameters(), self._modes if use_rfx else None
        out = np.column_stack([simulate_response(self.design, parameters, rng, self.family, effects) for _ in range(n)])
        return pd.DataFrame(out, index=self.design.data.index, columns=[f"sim_{i}" for i in range(1, n + 1)])

    def parameters(self) -> TrueParameters:
        """The estimates as the parameters of a simulation (the parametric bootstrap, power analysis)."""
        return TrueParameters.from_reml(self.design, self.beta, self.theta, self.sigma, self.aux)

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
        header = [self._title()] + self._family_lines() + [f"Formula: {self.formula}", criterion, self._counts()]
        tables = [("Random effects:", self._random_table(with_variance=True))]
        if self.glmm and self.aux:
            tables.append(("Family parameters:", self._aux_table()))
        title = "Fixed effects (Wald z tests):" if self.glmm else f"Fixed effects ({self.df_method} df):"
        tables.append((title, self._fixed_table()))
        return SummaryParts(header, tables, footer=self._notes())

    def summary(self) -> Summary:
        """lme4-style summary: criterion, random effects, fixed effects with their tests."""
        return Summary(self.summary_parts())

    def _repr_html_(self) -> str:
        return layout_html(self.summary_parts())

    def __repr__(self) -> str:
        # the short form of lme4's print(): criterion, random-effect SDs and fixed estimates
        criterion = "REML criterion" if self.REML else "logLik"
        value = self.deviance if self.REML else self.logLike
        fixed = pd.DataFrame({"Estimate": self.beta}, index=list(self.coefs.index))
        tables = [("Random effects:", self._random_table(with_variance=False))]
        if self.glmm and self.aux:
            tables.append(("Family parameters:", self._aux_table()))
        parts = SummaryParts(
            [self._title()] + self._family_lines() + [f"Formula: {self.formula}", f"{criterion}: {value:.4f}", self._counts()],
            tables + [("Fixed Effects:", fixed)],
            footer=self._notes(),
            formats={"Estimate": "{:.4f}".format},
        )
        return layout_text(parts)

    __str__ = __repr__

    def _title(self) -> str:
        if not self.glmm:
            method = "REML" if self.REML else "maximum likelihood"
            return f"Linear mixed model fit by {method} (lme4 algorithm, bayeslmm)"
        approximation = {0: "Laplace approximation, nAGQ = 0: fixed effects in PIRLS", 1: "Laplace approximation"}.get(
            self.nAGQ, f"adaptive Gauss-Hermite quadrature, nAGQ = {self.nAGQ}"
        )
        reference = "glmmTMB" if self.aux else "lme4"
        return f"Generalized linear mixed model fit by maximum likelihood ({approximation}; {reference} algorithm, bayeslmm)"

    def _family_lines(self) -> list[str]:
        if not self.glmm:
            return []
        lines = [f"Family: {self.family.name} ({self.family.link.name} link)"]
        if self.design.response_note:
            lines.append(f"Response: {self.design.response_note}")
        return lines

    def _n_parameters(self) -> int:
        return len(self.beta) + len(self.theta) + len(self.aux)

    def _df_resid(self) -> int:
        return self.n_obs - self._n_parameters()

    def _counts(self) -> str:
        groups = ", ".join(f"{factor}, {count}" for factor, count in self.n_groups.items())
        return f"Number of obs: {self.n_obs}, groups: {groups}"

    def _random_table(self, with_variance: bool) -> pd.DataFrame:
        """Groups / Name / (Variance) / Std.Dev. / Corr, correlations in the lower triangle (lme4's layout)."""
        rows = []
        covariances = self.design.random.covariances(self.theta, 1.0 if self.sigma is None else self.sigma)
        for block, covariance in zip(self.design.blocks, covariances):
            sd = np.sqrt(np.diag(covariance))
            for i, name in enumerate(block.terms):
                corr = [covariance[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan for j in range(i)]
                rows.append(
                    [block.factor if i == 0 else "", name]
                    + ([f"{covariance[i, i]:.4f}"] if with_variance else [])
                    + [f"{sd[i]:.4f}", " ".join(f"{c:5.2f}" for c in corr)]
                )
        if self.sigma is not None:
            rows.append(["Residual", ""] + ([f"{self.sigma**2:.4f}"] if with_variance else []) + [f"{self.sigma:.4f}", ""])
        columns = ["Groups", "Name"] + (["Variance"] if with_variance else []) + ["Std.Dev.", "Corr"]
        return pd.DataFrame(rows, columns=columns).set_index("Groups")

    def _aux_table(self) -> pd.DataFrame:
        """The family's parameters (the negative binomial's dispersion); :meth:`_notes` says what they are."""
        return pd.DataFrame({"Estimate": [f"{v:.4f}" for v in self.aux.values()]}, index=pd.Index(list(self.aux), name="Parameter"))

    def _notes(self) -> list[str]:
        """What the family's parameters are, then lme4's warnings."""
        notes = [f"{name}: {AUX_DESCRIPTIONS[name]}" for name in self.aux if self.glmm and name in AUX_DESCRIPTIONS]
        return notes + [f"Warning: {m}" for m in self.warnings]

    def _fixed_table(self) -> pd.DataFrame:
        if self.glmm:
            return pd.DataFrame(
                {
                    "Estimate": [f"{v:.4f}" for v in self.coefs["Estimate"]],
                    "Std. Error": [f"{v:.4f}" for v in self.coefs["SE"]],
                    "z value": [f"{v:.3f}" for v in self.coefs["Z-stat"]],
                    "Pr(>|z|)": [f"{v:.3g}" for v in self.coefs["P-val"]],
                },
                index=self.coefs.index,
            )
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


def fit_frequentist(
    design: Design, REML: bool | None = None, family: Family | None = None, nAGQ: int = 1
) -> FrequentistResult:
    """Fit a mixed model as lme4 does: ``lmer`` (REML or ML) for gaussian models, ``glmer`` otherwise.

    Parameters
    ----------
    design : Design
        From :func:`bayeslmm.spec.design.build_design`; needs at least one random-effects block.
    REML : bool, optional
        Gaussian models: optimise the REML criterion (True, the default, as lme4) or the likelihood
        (False). Other families are always fitted by maximum likelihood: None or False.
    family : Family, optional
        Gaussian (default), binomial, Poisson or negative binomial.
    nAGQ : int, default 1
        GLMMs: 1 for the Laplace approximation, more for adaptive Gauss-Hermite quadrature with that
        many nodes (a single scalar random effect only, as lme4), 0 for lme4's fast fit (the fixed
        effects estimated inside PIRLS; not for the negative binomial).

    Returns
    -------
    FrequentistResult

    Raises
    ------
    UnsupportedSyntaxError
        ``REML=True`` for a GLMM, ``nAGQ`` for a gaussian model, or ``nAGQ > 1`` with other random
        effects than one ``(1 | g)``.
    DataError
        No random effects, a rank-deficient fixed-effects matrix, too few observations, or a response
        the fixed effects reproduce exactly.

    Warns
    -----
    ConvergenceWarning
        The optimiser did not converge, or the fit is singular (lme4's "boundary (singular) fit").
    """
    family = get_family("gaussian") if family is None else family
    if family.name == "gaussian":
        if nAGQ != 1:
            raise UnsupportedSyntaxError(
                f"nAGQ={nAGQ!r}: quadrature is for generalized linear mixed models; a gaussian model's "
                "(RE)ML deviance is exact (leave nAGQ out)"
            )
        fit = fit_reml(design, REML=True if REML is None else bool(REML))
        result = _lmm_result(design, fit, family)
    else:
        if REML:
            raise UnsupportedSyntaxError(
                f"REML=True: a {family.name} mixed model has no REML criterion; it is fitted by maximum "
                "likelihood (Laplace approximation, as lme4's glmer). Leave REML out"
            )
        fit = fit_laplace(design, family, nAGQ)
        result = _glmm_result(design, fit, family)
    if fit.singular:
        warnings.warn(SINGULAR_MESSAGE, ConvergenceWarning, stacklevel=2)
    return result


def _lmm_result(design: Design, fit: RemlFit, family: Family) -> FrequentistResult:
    """The tables of a :class:`~bayeslmm.engines.reml.RemlFit`."""
    from scipy import stats

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
        index=pd.Index(list(design.fixed_terms)),
    )[_LMM_COLUMNS]
    fitted = design.linear_predictor(fit.beta, fit.ranef)
    aux = {"sigma": fit.sigma}
    return _result(
        design, fit, family, coefs, fitted, aux, REML=fit.REML, sigma=fit.sigma, nAGQ=None,
        df_method=fit.df_method, vcov_method="sigma^2 (RX'RX)^-1", reml=fit,
    )


def _glmm_result(design: Design, fit: GlmmFit, family: Family) -> FrequentistResult:
    """The tables of a :class:`~bayeslmm.engines.laplace.GlmmFit`."""
    from scipy import stats

    se = np.sqrt(np.diag(fit.vcov))
    z_stat = fit.beta / se
    half = stats.norm.ppf(0.975) * se
    coefs = pd.DataFrame(
        {
            "Estimate": fit.beta,
            "SE": se,
            "2.5_ci": fit.beta - half,
            "97.5_ci": fit.beta + half,
            "Z-stat": z_stat,
            "P-val": 2.0 * stats.norm.sf(np.abs(z_stat)),
        },
        index=pd.Index(list(design.fixed_terms)),
    )[_GLMM_COLUMNS]
    fitted = family.inverse_link(fit.eta)
    return _result(
        design, fit, family, coefs, fitted, dict(fit.aux), REML=False, sigma=None, nAGQ=fit.nAGQ,
        df_method="Wald z", vcov_method=fit.vcov_method, laplace=fit,
    )


def _result(
    design: Design, fit: RemlFit | GlmmFit, family: Family, coefs: pd.DataFrame, fitted: np.ndarray, aux: dict,
    **specific,
) -> FrequentistResult:
    """What both engines' results share: random-effect tables, fits, likelihoods."""
    names = list(design.fixed_terms)
    log_like = -0.5 * fit.deviance
    n_parameters = len(names) + design.random.n_theta + len(aux)
    observed = design.y if design.trials is None else design.y / design.trials
    sigma = specific["sigma"]
    return FrequentistResult(
        coefs=coefs,
        ranef_var=_ranef_var(design, fit.theta, sigma),
        ranef_corr=_ranef_corr(design, fit),
        ranef=by_factor(design, group_tables(design, None, fit.ranef)),
        fixef=by_factor(design, group_tables(design, fit.beta, fit.ranef)),
        logLike=log_like,
        AIC=-2.0 * log_like + 2.0 * n_parameters,
        BIC=-2.0 * log_like + np.log(design.n_obs) * n_parameters,
        aux=aux,
        family=family,
        theta=fit.theta,
        beta=fit.beta,
        vcov=pd.DataFrame(fit.vcov, index=names, columns=names),
        fitted=fitted,
        residuals=observed - fitted,
        pearson_residuals=pearson_residuals(design, family, fitted, aux),
        converged=fit.converged,
        singular=fit.singular,
        deviance=fit.deviance,
        n_obs=design.n_obs,
        n_groups={factor: len(levels) for factor, levels in design.factors.items()},
        formula=design.formula.text,
        optimizer_message=fit.message,
        n_evaluations=fit.n_evaluations,
        fit_seconds=fit.seconds,
        design=design,
        **specific,
    )


def _ranef_var(design: Design, theta: np.ndarray, sigma: float | None) -> pd.DataFrame:
    """Variance and SD of each (block, term) pair, then the residual (when there is one)."""
    groups, names, variances = [], [], []
    for block, covariance in zip(design.blocks, design.random.covariances(theta, 1.0 if sigma is None else sigma)):
        groups += [block.factor] * block.n_terms
        names += list(block.terms)
        variances += list(np.diag(covariance))
    if sigma is not None:
        groups.append("Residual")
        names.append("")
        variances.append(sigma**2)
    variances = np.asarray(variances)
    return pd.DataFrame({"Name": names, "Var": variances, "Std": np.sqrt(variances)}, index=pd.Index(groups, name="group"))


def _ranef_corr(design: Design, fit: RemlFit | GlmmFit) -> pd.DataFrame | None:
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


