"""bayeslmm: Bayesian linear mixed models with lme4 formulas and pymer4-style results.

The package is layered; each layer imports only the ones below it (checked by an import-linter
contract in the tests):

==============================  ===============================================================
layer                           what it holds
==============================  ===============================================================
:mod:`bayeslmm.io`              saving and loading results, the command line
:mod:`bayeslmm.models`          the user-facing models: :class:`Lmer`, :class:`Lm`, :class:`Lm2`;
                                :func:`fit_many` (one model per response column)
:mod:`bayeslmm.analysis`        model comparison (LOO, ``lrt``), pooling tables, :func:`power`
:mod:`bayeslmm.plots`           the uncertainty pictures
:mod:`bayeslmm.results`         the fitted-model base, posterior summaries, reports
:mod:`bayeslmm.engines`         samplers and estimators: collapsed, PyMC, REML; the executor of
                                repeated fits (local processes or Dask)
:mod:`bayeslmm.spec`            formula, design and random effects, families, priors
:mod:`bayeslmm.errors`,         exceptions; the shipped data sets
:mod:`bayeslmm.datasets`
==============================  ===============================================================

``import bayeslmm`` loads none of the heavy dependencies: the names below are imported when first
used, so that the command line and scripts start fast.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types

from bayeslmm.errors import (
    BayeslmmError,
    ConvergenceWarning,
    DataError,
    FormulaError,
    NotFittedError,
    ParetoKWarning,
    PriorError,
    PriorSensitivityWarning,
    ResultFileError,
    UnsupportedSyntaxError,
)

__version__ = "0.2.0"

#: Public names and the module that defines each; imported on first access (PEP 562).
_LAZY = {
    "Lmer": "bayeslmm.models.lmer",
    "Lm": "bayeslmm.models.lm",
    "Lm2": "bayeslmm.models.lm2",
    "fit_many": "bayeslmm.models.many",
    "Prior": "bayeslmm.spec.priors",
    "load": "bayeslmm.io.storage",
    "lrt": "bayeslmm.analysis.comparison",
    "compare": "bayeslmm.analysis.comparison",
    "power": "bayeslmm.analysis.power",
    "load_dataset": "bayeslmm.datasets",
    "list_datasets": "bayeslmm.datasets",
    "simulate_simpson": "bayeslmm.datasets",
}

#: Module paths of bayeslmm 0.1, kept importable as aliases of the modules in their layers.
_MODULE_ALIASES = {
    "bayeslmm.comparison": "bayeslmm.analysis.comparison",
    "bayeslmm.pooling": "bayeslmm.analysis.pooling",
    "bayeslmm.frequentist": "bayeslmm.results.frequentist",
    "bayeslmm.formula": "bayeslmm.spec.formula",
    "bayeslmm.design": "bayeslmm.spec.design",
    "bayeslmm.priors": "bayeslmm.spec.priors",
    "bayeslmm.families": "bayeslmm.spec.families",
    "bayeslmm.model": "bayeslmm.engines.pymc_model",
    "bayeslmm.marginal": "bayeslmm.engines.collapsed",
    "bayeslmm.report": "bayeslmm.results.report",
    "bayeslmm.storage": "bayeslmm.io.storage",
    "bayeslmm.cli": "bayeslmm.io.cli",
    "bayeslmm.lmer": "bayeslmm.models.lmer",
}

__all__ = [
    "Lmer",
    "Lm",
    "Lm2",
    "fit_many",
    "Prior",
    "load",
    "lrt",
    "compare",
    "power",
    "load_dataset",
    "list_datasets",
    "simulate_simpson",
    "BayeslmmError",
    "ConvergenceWarning",
    "DataError",
    "FormulaError",
    "NotFittedError",
    "ParetoKWarning",
    "PriorError",
    "PriorSensitivityWarning",
    "ResultFileError",
    "UnsupportedSyntaxError",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    alias = _MODULE_ALIASES.get(f"{__name__}.{name}")
    if alias is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _AliasModule(types.ModuleType):
    """An old module path: its names are those of the module it moved to, then the package's own
    (``bayeslmm.pooling.Lm`` still works although ``Lm`` lives in :mod:`bayeslmm.models.lm`)."""

    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, f"Alias of {target} (bayeslmm 0.1's module path).")
        self.__target = target

    def __getattr__(self, attribute: str):
        module = importlib.import_module(self.__target)
        if hasattr(module, attribute):
            return getattr(module, attribute)
        if attribute in _LAZY:
            return __getattr__(attribute)
        raise AttributeError(f"module {self.__name__!r} (now {self.__target!r}) has no attribute {attribute!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(dir(importlib.import_module(self.__target))) | set(_LAZY))


class _AliasLoader(importlib.abc.Loader):
    """Load an old module path as an :class:`_AliasModule` of the module it moved to."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return _AliasModule(spec.name, self.target)

    def exec_module(self, module) -> None:
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the module paths of :data:`_MODULE_ALIASES` (``from bayeslmm.comparison import lrt``)."""

    def find_spec(self, fullname, path=None, target=None):
        alias = _MODULE_ALIASES.get(fullname)
        if alias is None or alias == fullname:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(alias))


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.append(_AliasFinder())
