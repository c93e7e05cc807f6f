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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from bayeslmm.spec.random_effects import RandomBlock

__all__ = ["var_names", "indexed"]


def indexed(coords: Mapping[str, Any]) -> dict[str, pd.Index]:
    """Coordinates as pandas Indexes (numbers keep their dtype; text becomes object, as xarray stores it
    in an index anyway), for every Dataset a fit builds.

    xarray turns any other coordinate array into an index through a check for pydata-sparse arrays,
    which imports sparse (a dependency of Bambi) and with it numba: 0.5 s or more, and more again at
    exit, in a process that otherwise never loads numba (:mod:`bayeslmm.engines.native`).
    """
    return {name: values if isinstance(values, pd.Index) else pd.Index(values) for name, values in coords.items()}


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
