"""The user-facing models: :class:`~bayeslmm.models.lmer.Lmer` (partial pooling),
:class:`~bayeslmm.models.lm.Lm` (complete pooling) and :class:`~bayeslmm.models.lm2.Lm2` (no pooling), and
:func:`~bayeslmm.models.many.fit_many` (one Lmer per response column)."""
