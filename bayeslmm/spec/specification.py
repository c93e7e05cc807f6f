"""A model's specification as plain data: what another process needs to rebuild its design and priors.

A :class:`~bayeslmm.spec.design.Design` holds the formula engine's evaluators, which cannot be
pickled, and a worker process (local or on a Dask cluster) should not receive megabytes of model
matrices with every task anyway. A :class:`ModelSpec` is the formula text, the rows used, the family
and the ``priors=`` overrides (what :func:`bayeslmm.load` rebuilds a saved model from); the worker
builds the design and the priors from it once and keeps them with the object. In the process that
made it from a model, it carries that model's own design and priors, so nothing is rebuilt there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bayeslmm.spec.contrasts import build_coded_design
from bayeslmm.spec.design import Design
from bayeslmm.spec.families import Family, get_family
from bayeslmm.spec.formula import parse_formula
from bayeslmm.spec.priors import ModelPriors, default_priors

__all__ = ["ModelSpec"]


@dataclass(eq=False)
class ModelSpec:
    """Formula, data, family and prior overrides of a mixed model: picklable, rebuilt where it is used.

    Attributes
    ----------
    formula : str
        lme4 syntax, as the user wrote it.
    data : pandas.DataFrame
        The rows (and columns) the design is built from.
    family : Family
    priors : dict, optional
        The ``priors=`` overrides; the defaults are scaled to the data, as in :class:`~bayeslmm.Lmer`.
    weights, offset : ndarray, shape (n,), optional
        The ``weights=`` and ``offset=`` arguments, one per row of ``data``.
    factors : dict, optional
        ``factors=`` codings of categorical columns (see :class:`~bayeslmm.Lmer`); ``ordered`` too.
    ordered : bool
    resolved : ModelPriors, optional
        Priors to use as they are (e.g. a fitted model's, for its refits) instead of the defaults
        scaled to ``data`` and updated by ``priors``.
    """

    formula: str
    data: pd.DataFrame
    family: Family = field(default_factory=lambda: get_family("gaussian"))
    priors: dict | None = None
    weights: np.ndarray | None = None
    offset: np.ndarray | None = None
    factors: dict | None = None
    ordered: bool = False
    resolved: ModelPriors | None = None

    @classmethod
    def from_design(cls, design: Design, family: Family | None = None, priors: dict | None = None,
                    resolved: ModelPriors | None = None, factors: dict | None = None,
                    ordered: bool = False) -> "ModelSpec":
        """The specification of a built design (the rows it uses); the design itself is kept for use in
        this process."""
        spec = cls(
            formula=design.formula.text, data=design.data, family=family or get_family("gaussian"),
            priors=dict(priors) if priors else None, weights=design.weights, offset=design.offset_argument,
            factors=factors, ordered=ordered, resolved=resolved,
        )
        spec._design = design
        return spec

    @classmethod
    def from_model(cls, model: Any, resolved: bool = False) -> "ModelSpec":
        """The specification of a model (``Lmer``): its design, family, ``priors=``, ``factors=``; with
        ``resolved``, its resolved priors are used as they are (a refit keeps the fit's priors)."""
        arguments = model.init_arguments
        return cls.from_design(
            model.design, model.family, model.prior_overrides, resolved=model.model_priors if resolved else None,
            factors=arguments.get("factors"), ordered=bool(arguments.get("ordered", False)),
        )

    def design(self) -> Design:
        """The design, built on first use (warnings about the data were given when the model was made)."""
        if getattr(self, "_design", None) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._design = build_coded_design(
                    parse_formula(self.formula), self.data, self.family, self.factors, self.ordered,
                    weights=self.weights, offset=self.offset,
                )
        return self._design

    def model_priors(self) -> ModelPriors:
        """The resolved priors: :attr:`resolved`, or the defaults scaled to this data updated by :attr:`priors`."""
        if self.resolved is not None:
            return self.resolved
        if getattr(self, "_priors", None) is None:
            self._priors = default_priors(self.design(), self.priors, self.family)
        return self._priors

    def __getstate__(self) -> dict[str, Any]:
        # the built design holds formulae's evaluators (not picklable); the receiver rebuilds it
        return {name: value for name, value in self.__dict__.items() if name not in ("_design", "_priors")}
