"""Storage: ``model.save(path)`` and :func:`load`, which gives the model back without sampling again.

The file format is :mod:`bayeslmm.results.archive`; this module rebuilds the model object of the saved
class around what it reads.
"""

from __future__ import annotations

import os
import warnings

from bayeslmm.models.lm import Lm
from bayeslmm.models.lm2 import Lm2
from bayeslmm.models.lmer import Lmer
from bayeslmm.results.archive import (
    FORMAT_VERSION,
    SUFFIXES,
    check_save_path,
    read,
    save,
)
from bayeslmm.results.fitted import FittedModel

__all__ = ["save", "load", "check_save_path", "FORMAT_VERSION", "SUFFIXES"]

_CLASSES: dict[str, type[FittedModel]] = {"Lmer": Lmer, "Lm": Lm, "Lm2": Lm2}


def load(path: str | os.PathLike) -> FittedModel:
    """Load a model written by :meth:`Lmer.save <bayeslmm.Lmer.save>`, fitted, without sampling.

    Parameters
    ----------
    path : str or path-like
        A ``.zarr`` directory or ``.nc`` file.

    Returns
    -------
    Lmer, Lm or Lm2
        As saved: ``idata``, ``sampler`` and ``warnings`` restored, every table recomputed from the
        saved draws (equal to the original's).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ResultFileError
        ``path`` is not a bayeslmm result (or was written by a newer bayeslmm).

    Examples
    --------
    >>> model.save("sleep.zarr")  # doctest: +SKIP
    >>> same = bayeslmm.load("sleep.zarr")  # doctest: +SKIP
    """
    archive = read(path)
    cls = _CLASSES[archive.kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing-value warning was given when the model was built
        model = cls(archive.formula, archive.data, family=archive.family, priors=archive.priors, **archive.arguments)
    model.restore(archive.idata, archive.sampler, archive.warnings, n_dropped=archive.n_dropped)
    return model
