"""Quick start: lme4's sleepstudy model, fitted with bayeslmm, summary printed.

Run with ``bash scripts/demo.sh`` (sets everything up first) or ``python examples/quickstart.py``.
"""

from bayeslmm import Lmer, load_dataset

sleep = load_dataset("sleepstudy")
model = Lmer("Reaction ~ Days + (Days | Subject)", sleep)
model.fit(random_seed=2026, summarize=True)

print("\nPer-subject coefficients (lme4's coef(), posterior means), first five subjects:")
print(model.fixef.head().round(2).to_string())
