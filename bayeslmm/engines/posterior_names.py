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

from bayeslmm.spec.random_effects import RandomBlock

__all__ = ["var_names"]


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
