"""Names of the posterior variables and their dimensions, shared by every sampler and every reader.

==================  =============================  ==================================================
name                dims                           meaning
==================  =============================  ==================================================
``beta``            (fixed_term,)                  fixed effects, on the original scale of ``X``
``sigma`` etc.      ()                             the family's auxiliary parameters
``sd_b``            (b__term,)                     SDs of block ``b``'s group effects
``corr_b``          (b__term, b__term_)            their correlation matrix (blocks with k >= 2)
``ranef_b``         (b__level, b__term)            group deviations from the fixed effects
==================  =============================  ==================================================

``b`` is a block name such as ``Subject`` or ``Subject.1``.

Every Dataset a fit builds goes through :func:`dataset`, which keeps xarray from importing optional
array libraries (dask, sparse, and numba through them) that a fit of numpy arrays never needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayeslmm.spec.random_effects import RandomBlock

__all__ = ["var_names", "dataset"]


def _indexed(coords: Mapping[str, Any]) -> dict[str, pd.Index]:
    """Coordinates as pandas Indexes (numbers keep their dtype; text becomes object, as xarray stores it
    in an index anyway), for :func:`dataset`.

    xarray turns any other coordinate array into an index through a check for pydata-sparse arrays,
    which imports sparse (a dependency of Bambi) and with it numba: 0.5 s or more, and more again at
    exit, in a process that otherwise never loads numba (:mod:`bayeslmm.engines.native`).
    """
    return {name: values if isinstance(values, pd.Index) else pd.Index(values) for name, values in coords.items()}


def dataset(
    variables: Mapping[str, tuple[tuple[str, ...], np.ndarray]],
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A Dataset of numeric numpy arrays, built without xarray's checks for other array types.

    Parameters
    ----------
    variables : mapping of name to (dims, values)
        ``values`` is converted with :func:`numpy.asarray`; its shape must match ``dims``.
    coords : mapping of dimension name to labels, optional
        Labels of each dimension; kept as pandas Indexes (see ``_indexed``).
    attrs : mapping, optional

    Notes
    -----
    xarray converts each ``(dims, values)`` pair by checking whether ``values`` is a dask array, and the
    check imports ``dask.array`` whenever dask is installed; ``dask.array`` imports pydata-sparse and
    through it numba: 0.4 s or more, and more again at exit, in a fit that uses none of them. Variables
    made from numpy arrays on xarray's fast path skip the check and hold the same data.
    """
    data = {}
    for name, (dims, values) in variables.items():
        values = np.asarray(values)
        # xarray converts dates, and objects other than None (nutpie's divergence messages, whose
        # None it turns into NaN): those take its own conversion, dask check included
        if values.dtype.kind in "Mm" or (values.dtype.kind == "O" and any(v is not None for v in values.flat)):
            data[name] = (dims, values)
        else:
            data[name] = xr.Variable(dims, values, fastpath=True)
    return xr.Dataset(data, coords=_indexed(coords or {}), attrs=dict(attrs or {}))


def var_names(block: RandomBlock) -> dict[str, str]:
    """Posterior variable and dimension names of one block."""
    b = block.name
    return {
        "sd": f"sd_{b}",
        "corr": f"corr_{b}",
        "corr_chol": f"corr_chol_{b}",
        "z": f"z_{b}",
        "ranef": f"ranef_{b}",
        "level": f"{b}__level",
        "term": f"{b}__term",
        "term_": f"{b}__term_",
    }
