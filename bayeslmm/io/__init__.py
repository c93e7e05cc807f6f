"""Input and output: saved results (:mod:`~bayeslmm.io.storage`) and the command line (:mod:`~bayeslmm.io.cli`)."""
