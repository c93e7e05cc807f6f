"""Response families: how the linear predictor ``eta`` meets the data.

A family owns everything that depends on the distribution of the response:

- its link (:class:`Link`: ``g``, ``g^{-1}`` and ``d mu / d eta``);
- its auxiliary parameters (Gaussian ``sigma``, the negative binomial's dispersion) and their default
  priors, scaled to the data;
- which responses it accepts, and how they are encoded (:meth:`Family.encode_response`);
- the pointwise log-likelihood and replicated data in NumPy (for LOO and posterior predictive checks,
  without compiling anything), and its PyMC likelihood (imported only when a PyMC model is built);
- the scale of its default fixed-effect priors and what the engines may assume (whether one group per
  row is allowed, whether REML applies).

Every consumer asks the family instead of assuming a normal likelihood, and refuses a family it
cannot handle with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from bayeslmm.errors import DataError, UnsupportedSyntaxError
from bayeslmm.spec.distributions import Prior
from bayeslmm.spec.formula import is_cbind

__all__ = ["Link", "Family", "Gaussian", "get_family", "FAMILIES"]

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------- links
@dataclass(frozen=True)
class Link:
    """A link function ``eta = g(mu)``.

    Attributes
    ----------
    name : str
        ``"identity"``, ``"log"``, ``"logit"``, ``"probit"`` or ``"cloglog"``.
    """

    name: str

    def inverse(self, eta: np.ndarray) -> np.ndarray:
        """``mu = g^{-1}(eta)``, elementwise."""
        eta = np.asarray(eta, dtype=float)
        if self.name == "identity":
            return eta
        if self.name == "log":
            return np.exp(eta)
        if self.name == "logit":
            from scipy.special import expit

            return expit(eta)
        if self.name == "probit":
            from scipy.special import ndtr

            return ndtr(eta)
        if self.name == "cloglog":
            return -np.expm1(-np.exp(eta))
        raise ValueError(f"unknown link {self.name!r}")

    def mu_eta(self, eta: np.ndarray) -> np.ndarray:
        """``d mu / d eta``, elementwise (the weights of iteratively reweighted least squares)."""
        eta = np.asarray(eta, dtype=float)
        if self.name == "identity":
            return np.ones_like(eta)
        if self.name == "log":
            return np.exp(eta)
        if self.name == "logit":
            from scipy.special import expit

            p = expit(eta)
            return p * (1 - p)
        if self.name == "probit":
            return np.exp(-0.5 * eta * eta) / math.sqrt(2 * math.pi)
        if self.name == "cloglog":
            return np.exp(eta - np.exp(eta))
        raise ValueError(f"unknown link {self.name!r}")

    def inverse_tensor(self, eta):
        """``g^{-1}(eta)`` for a PyTensor tensor (the PyMC likelihoods)."""
        import pytensor.tensor as pt

        if self.name == "identity":
            return eta
        if self.name == "log":
            return pt.exp(eta)
        if self.name == "logit":
            return pt.sigmoid(eta)
        if self.name == "probit":
            return 0.5 * pt.erfc(-eta / math.sqrt(2.0))
        if self.name == "cloglog":
            return -pt.expm1(-pt.exp(eta))
        raise ValueError(f"unknown link {self.name!r}")

    def __call__(self, mu: np.ndarray) -> np.ndarray:
        """``eta = g(mu)``, elementwise."""
        mu = np.asarray(mu, dtype=float)
        if self.name == "identity":
            return mu
        if self.name == "log":
            return np.log(mu)
        if self.name == "logit":
            from scipy.special import logit

            return logit(mu)
        if self.name == "probit":
            from scipy.special import ndtri

            return ndtri(mu)
        if self.name == "cloglog":
            return np.log(-np.log1p(-mu))
        raise ValueError(f"unknown link {self.name!r}")


# ----------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """Base class of response families.

    Attributes
    ----------
    name : str
        The name users pass, as in R (``"gaussian"``).
    link : Link
    aux : tuple of str
        Names of the auxiliary parameters, e.g. ``("sigma",)``.
    allows_one_group_per_row : bool
        Whether a grouping factor may have as many levels as rows (observation-level random effects):
        false where a residual SD would be confounded with them.
    """

    name: str = ""
    link: Link = Link("identity")
    aux: tuple[str, ...] = ()
    allows_one_group_per_row: bool = True

    # -- data -------------------------------------------------------------------------------------
    def encode_response(
        self, raw: np.ndarray, frame: pd.DataFrame, name: str, trials: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, str]:
        """Check the response; return it as the floats the likelihood takes.

        Parameters
        ----------
        raw : ndarray, shape (n,)
            The response as formulae evaluated it (``frame[name]`` when it is a plain column).
        frame : pandas.DataFrame
            The rows used (to name offending rows and to read a categorical response's levels).
        name : str
            The response as written in the formula.
        trials : ndarray, shape (n,), optional
            Binomial trials (from ``cbind`` or ``weights=``); other families refuse them.

        Returns
        -------
        y : ndarray, shape (n,)
        trials : ndarray, shape (n,) or None
        note : str
            How the response was read, for the summary (e.g. which level is the success); "" if plain.

        Raises
        ------
        DataError
            Values the family cannot model, naming the offending rows.
        """
        raise NotImplementedError

    def fixed_prior_scale(self, y: np.ndarray) -> float:
        """Scale of the default fixed-effect priors on the link scale (``sd(y)`` for gaussian)."""
        return 1.0

    def intercept_prior_location(self, y: np.ndarray) -> float:
        """Mean of the default intercept prior (at the predictors' means): 0 on the link scale."""
        return 0.0

    def default_aux_priors(self, y: np.ndarray) -> dict[str, "Prior"]:
        """Default prior of each auxiliary parameter, scaled to the response."""
        return {}

    # -- likelihood ----------------------------------------------------------------------------------
    def log_likelihood(
        self, y: np.ndarray, mu: np.ndarray, aux: dict[str, np.ndarray], trials: np.ndarray | None = None
    ) -> np.ndarray:
        """Pointwise log-likelihood, shape ``mu.shape`` (draws, n); ``aux`` values have shape (draws,)."""
        raise NotImplementedError

    def random(
        self, mu: np.ndarray, aux: dict[str, np.ndarray], rng: np.random.Generator, trials: np.ndarray | None = None
    ) -> np.ndarray:
        """Replicated responses, shape ``mu.shape`` (draws, n), for posterior predictive checks."""
        raise NotImplementedError

    def variance(self, mu: np.ndarray, aux: dict[str, float], trials: np.ndarray | None = None) -> np.ndarray:
        """Variance of the response at mean ``mu`` (for Pearson residuals and GLM weights), shape ``mu.shape``.

        ``mu`` is (n,) or (draws, n); ``aux`` values are floats or per-draw arrays (draws,). For binomial
        models ``mu`` is the probability and the variance that of the number of successes.
        """
        raise NotImplementedError

    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """Map the linear predictor to the mean of the response."""
        return self.link.inverse(eta)

    def pymc_likelihood(self, eta, aux: dict, y: np.ndarray | None = None, trials=None, dims: str | None = "obs"):
        """The observed ``y`` given the linear predictor tensor ``eta`` in the PyMC model in context.

        With ``y=None``, the unnamed distribution instead (for ``pm.logp`` of weighted likelihoods).
        """
        raise UnsupportedSyntaxError(f"family {self.name!r} has no PyMC likelihood")

    def __str__(self) -> str:
        return f"{self.name} ({self.link.name} link)"


@dataclass(frozen=True)
class Gaussian(Family):
    """Normal response with identity link and residual standard deviation ``sigma``."""

    name: str = "gaussian"
    link: Link = Link("identity")
    aux: tuple[str, ...] = ("sigma",)
    allows_one_group_per_row: bool = False

    def encode_response(self, raw, frame, name, trials=None):
        if trials is not None:
            raise DataError(
                "weights= (or a cbind() response) gives binomial trials; a gaussian model has no trials. "
                "bayeslmm does not fit precision-weighted gaussian models: drop weights="
            )
        if name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name]):
            raise DataError(
                f"response {name!r} has dtype {frame[name].dtype}, but a gaussian model needs a "
                "numeric response; convert it with pandas.to_numeric first"
            )
        try:
            y = np.asarray(raw, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"response {name!r} is not numeric; a gaussian model needs numbers") from None
        if not np.all(np.isfinite(y)):
            bad = np.flatnonzero(~np.isfinite(y))
            raise DataError(
                f"response {name!r} has {len(bad)} infinite or undefined value(s) (rows "
                f"{_rows(frame, bad)}); remove those rows or choose a transformation that is finite on all of them"
            )
        if len(y) > 1 and np.ptp(y) == 0:
            raise DataError(
                f"response {name!r} is constant ({y[0]:g} on every row): there is no variation for a "
                "model to explain; check the column"
            )
        return y, None, ""

    def fixed_prior_scale(self, y: np.ndarray) -> float:
        return float(np.std(y)) or 1.0

    def intercept_prior_location(self, y: np.ndarray) -> float:
        return float(np.mean(y))

    def default_aux_priors(self, y: np.ndarray) -> dict[str, "Prior"]:
        return {"sigma": Prior("HalfStudentT", nu=4, sigma=self.fixed_prior_scale(y))}

    def log_likelihood(self, y, mu, aux, trials=None) -> np.ndarray:
        sigma = per_draw(aux["sigma"], mu)
        z = (y - mu) / sigma
        return -0.5 * (z * z + _LOG_2PI) - np.log(sigma)

    def random(self, mu, aux, rng, trials=None) -> np.ndarray:
        return rng.normal(mu, per_draw(aux["sigma"], mu))

    def variance(self, mu, aux, trials=None) -> np.ndarray:
        return np.broadcast_to(per_draw(aux["sigma"], mu) ** 2, np.shape(mu))

    def pymc_likelihood(self, eta, aux: dict, y: np.ndarray | None = None, trials=None, dims: str | None = "obs"):
        import pymc as pm

        if y is None:
            return pm.Normal.dist(mu=eta, sigma=aux["sigma"])
        return pm.Normal("y", mu=eta, sigma=aux["sigma"], observed=y, dims=dims)


@dataclass(frozen=True)
class Binomial(Family):
    """Successes out of trials (0/1 responses have one trial each), with a logit, probit or cloglog link.

    The response may be 0/1 numbers, booleans, a column with two levels (the second level, in sorted or
    categorical order, is the success, as in R), ``cbind(successes, failures)`` in the formula, or a
    proportion with the trials given as ``weights=`` (as glmer: the response is then always a proportion
    in [0, 1], and successes = proportion x trials). ``log_likelihood`` is the full binomial density, log
    binomial coefficient included, as lme4's ``logLik``.
    """

    name: str = "binomial"
    link: Link = Link("logit")

    def encode_response(self, raw, frame, name, trials=None):
        column = frame[name] if name in frame.columns else None
        note = ""
        if column is not None and not pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            levels = _two_levels(column, name)
            y = (column.astype(object) == levels[1]).to_numpy(dtype=float)
            note = f"{name} == {levels[1]!r} is a success ({levels[0]!r} a failure)"
        else:
            try:
                y = np.asarray(raw, dtype=float).reshape(-1)
            except (TypeError, ValueError):
                raise DataError(f"response {name!r} is not numeric, boolean or two-level") from None
        _finite(y, frame, name)
        if trials is None:
            bad = np.flatnonzero((y != 0) & (y != 1))
            if bad.size:
                raise DataError(
                    f"binomial response {name!r} must be 0/1 (or boolean, or a two-level factor); rows "
                    f"{_rows(frame, bad)} hold {_values(y[bad])}. For counts of successes write "
                    "cbind(successes, failures) ~ ..., for proportions pass the trials as weights="
                )
            trials = np.ones_like(y)
        else:
            trials = np.asarray(trials, dtype=float)
            _counts(trials, frame, name, "trials (weights=)" if not is_cbind(name) else "trials")
            if not is_cbind(name):  # a proportion with weights=, as glmer: successes = proportion x trials
                bad = np.flatnonzero((y < 0) | (y > 1))
                if bad.size:
                    raise DataError(
                        f"with weights= (the trials), binomial response {name!r} is the proportion of "
                        f"successes and must lie in [0, 1]; rows {_rows(frame, bad)} hold {_values(y[bad])}. "
                        "For counts of successes write cbind(successes, failures) ~ ... instead"
                    )
                y = y * trials
                note = f"{name} is the proportion of successes out of weights= trials"
            _counts(y, frame, name, "successes" if is_cbind(name) else "successes (proportion x weights=)")
            bad = np.flatnonzero(y > trials + 1e-9)
            if bad.size:
                raise DataError(f"binomial response {name!r}: more successes than trials in rows {_rows(frame, bad)}")
            if np.any(trials <= 0):
                raise DataError(f"binomial response {name!r}: rows {_rows(frame, np.flatnonzero(trials <= 0))} have no trials")
            y = np.round(y)
        if np.all(y == 0) or np.all(y == trials):
            which = "a failure" if np.all(y == 0) else "a success"
            raise DataError(
                f"binomial response {name!r}: every trial is {which}, so there is nothing to model "
                "(the estimates would run to infinity); check the response"
            )
        return y, trials, note

    def default_aux_priors(self, y):
        return {}

    def log_likelihood(self, y, mu, aux, trials=None):
        from scipy.special import gammaln, xlog1py, xlogy

        n = np.ones_like(y) if trials is None else trials
        kernel = xlogy(y, mu) + xlog1py(n - y, -mu)
        if np.all(n == 1):  # 0/1 data: every binomial coefficient is 1 (saves most of the time)
            return kernel
        return gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1) + kernel

    def random(self, mu, aux, rng, trials=None):
        n = np.ones(np.shape(mu)[-1]) if trials is None else trials
        return rng.binomial(np.broadcast_to(n, np.shape(mu)).astype(np.int64), np.clip(mu, 0.0, 1.0)).astype(float)

    def variance(self, mu, aux, trials=None):
        n = 1.0 if trials is None else trials
        return n * mu * (1 - mu)

    def pymc_likelihood(self, eta, aux, y=None, trials=None, dims="obs"):
        import pymc as pm

        p = self.link.inverse_tensor(eta)
        n = np.ones(len(y)) if trials is None and y is not None else trials
        if y is None:
            return pm.Binomial.dist(n=n, p=p)
        return pm.Binomial("y", n=n.astype(np.int64), p=p, observed=y.astype(np.int64), dims=dims)


@dataclass(frozen=True)
class Poisson(Family):
    """Counts with a log link; ``offset(log(exposure))`` models rates."""

    name: str = "poisson"
    link: Link = Link("log")

    def encode_response(self, raw, frame, name, trials=None):
        if trials is not None:
            raise DataError("weights= gives binomial trials; a poisson model has none (use offset(log(exposure)) for exposure)")
        y = _numeric(raw, frame, name)
        _counts(y, frame, name, "counts")
        if np.all(y == 0):
            raise DataError(f"count response {name!r} is 0 on every row: there is nothing to model")
        return y, None, ""

    def log_likelihood(self, y, mu, aux, trials=None):
        from scipy.special import gammaln, xlogy

        return xlogy(y, mu) - mu - gammaln(y + 1)

    def random(self, mu, aux, rng, trials=None):
        return rng.poisson(mu).astype(float)

    def variance(self, mu, aux, trials=None):
        return np.asarray(mu, dtype=float)

    def pymc_likelihood(self, eta, aux, y=None, trials=None, dims="obs"):
        import pymc as pm

        mu = self.link.inverse_tensor(eta)
        if y is None:
            return pm.Poisson.dist(mu=mu)
        return pm.Poisson("y", mu=mu, observed=y.astype(np.int64), dims=dims)


@dataclass(frozen=True)
class NegativeBinomial(Poisson):
    """Overdispersed counts (NB2, as lme4's ``glmer.nb`` and glmmTMB's ``nbinom2``), log link.

    ``Var(y) = mu + mu^2 / dispersion``: the auxiliary parameter ``dispersion`` is lme4's ``theta`` (the
    "size" of R's ``dnbinom``, PyMC's ``alpha``); large values approach the Poisson. Its default prior is
    ``Gamma(0.01, 0.01)``, brms's default for the same parameter.
    """

    name: str = "negbinomial"
    link: Link = Link("log")
    aux: tuple[str, ...] = ("dispersion",)

    def default_aux_priors(self, y):
        return {"dispersion": Prior("Gamma", alpha=0.01, beta=0.01)}

    def log_likelihood(self, y, mu, aux, trials=None):
        from scipy.special import gammaln, xlogy

        size = per_draw(aux["dispersion"], mu)
        return (
            gammaln(y + size) - gammaln(size) - gammaln(y + 1)
            + xlogy(size, size) - xlogy(size + y, size + mu) + xlogy(y, mu)
        )

    def random(self, mu, aux, rng, trials=None):
        size = per_draw(aux["dispersion"], mu)
        return rng.poisson(rng.gamma(size, mu / size)).astype(float)

    def variance(self, mu, aux, trials=None):
        return mu + mu**2 / per_draw(aux["dispersion"], mu)

    def pymc_likelihood(self, eta, aux, y=None, trials=None, dims="obs"):
        import pymc as pm

        mu = self.link.inverse_tensor(eta)
        if y is None:
            return pm.NegativeBinomial.dist(mu=mu, alpha=aux["dispersion"])
        return pm.NegativeBinomial("y", mu=mu, alpha=aux["dispersion"], observed=y.astype(np.int64), dims=dims)


#: The families by name; links other than the default are chosen with :func:`get_family` (``link=``).
FAMILIES: dict[str, Family] = {
    "gaussian": Gaussian(),
    "binomial": Binomial(),
    "poisson": Poisson(),
    "negbinomial": NegativeBinomial(),
}
#: The links each family accepts, the default first.
LINKS: dict[str, tuple[str, ...]] = {
    "gaussian": ("identity",),
    "binomial": ("logit", "probit", "cloglog"),
    "poisson": ("log",),
    "negbinomial": ("log",),
}
_ALIASES = {"bernoulli": "binomial", "negativebinomial": "negbinomial", "nbinom2": "negbinomial", "normal": "gaussian"}


def per_draw(values, mu: np.ndarray) -> np.ndarray:
    """An auxiliary parameter broadcast against ``mu``: per draw (draws,) gets an observation axis,
    per draw and row (draws, n) is used as it is."""
    values = np.asarray(values, dtype=float)
    return values if values.ndim == np.ndim(mu) else values[..., None]


def get_family(family: "str | Family", link: str | None = None) -> Family:
    """Look up a family by name (case-insensitive) and link, or pass a :class:`Family` through.

    Parameters
    ----------
    family : str or Family
        ``"gaussian"``, ``"binomial"``, ``"poisson"`` or ``"negbinomial"``; also R's spelling with the
        link, ``"binomial(link='probit')"``.
    link : str, optional
        The link; the family's default when None.

    Raises
    ------
    UnsupportedSyntaxError
        An unknown family or a link the family does not have.
    """
    if isinstance(family, Family):
        return family if link is None or link == family.link.name else replace(family, link=Link(link))
    if not isinstance(family, str):
        raise UnsupportedSyntaxError(f"family must be a name such as 'binomial', got {family!r}")
    name, spelled_link = _parse_family(family)
    link = link or spelled_link
    name = _ALIASES.get(name, name)
    if name not in FAMILIES:
        raise UnsupportedSyntaxError(f"family {family!r} is not supported; available: {', '.join(FAMILIES)}")
    base = FAMILIES[name]
    if link is None or link == base.link.name:
        return base
    if link not in LINKS[name]:
        raise UnsupportedSyntaxError(f"family {name!r} has links {', '.join(LINKS[name])}; got link={link!r}")
    return replace(base, link=Link(link))


def _parse_family(text: str) -> tuple[str, str | None]:
    """``"binomial(link = 'probit')"`` -> ("binomial", "probit"); ``"Poisson"`` -> ("poisson", None)."""
    compact = text.replace(" ", "").lower()
    if "(" not in compact:
        return compact, None
    name, rest = compact.split("(", 1)
    rest = rest.rstrip(")").replace("link=", "").strip("'\"")
    return name, rest or None


def _two_levels(column: pd.Series, name: str) -> list:
    """The two levels of a binary response column (categorical order, else sorted)."""
    values = column.dropna()
    if isinstance(column.dtype, pd.CategoricalDtype):
        levels = [level for level in column.cat.categories if (values == level).any()]
    else:
        levels = sorted(values.unique(), key=str)
    if len(levels) != 2:
        raise DataError(
            f"binomial response {name!r} has {len(levels)} distinct values ({_values(np.array(levels, dtype=object))}); "
            "it needs exactly two (the second is the success), or 0/1 numbers"
        )
    return levels


def _numeric(raw, frame: pd.DataFrame, name: str) -> np.ndarray:
    if name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name]):
        raise DataError(f"count response {name!r} has dtype {frame[name].dtype}; it must hold counts (0, 1, 2, ...)")
    y = np.asarray(raw, dtype=float).reshape(-1)
    _finite(y, frame, name)
    return y


def _finite(y: np.ndarray, frame: pd.DataFrame, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(y))
    if bad.size:
        raise DataError(f"response {name!r} has infinite or undefined values in rows {_rows(frame, bad)}")


def _counts(values: np.ndarray, frame: pd.DataFrame, name: str, what: str) -> None:
    """Refuse negative or non-integer counts, naming the rows."""
    bad = np.flatnonzero((values < 0) | (np.abs(values - np.round(values)) > 1e-8))
    if bad.size:
        raise DataError(
            f"{what} of {name!r} must be whole numbers >= 0; rows {_rows(frame, bad)} hold {_values(values[bad])}"
        )


def _values(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _rows(frame: pd.DataFrame, positions: np.ndarray, limit: int = 5) -> str:
    """Index labels of the offending rows, the first ``limit`` of them."""
    labels = [repr(label) for label in frame.index[positions[:limit]]]
    return ", ".join(labels) + (f" and {len(positions) - limit} more" if len(positions) > limit else "")

