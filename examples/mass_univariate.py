"""Mass-univariate mixed models: one model per electrode with bayeslmm.fit_many (docs/many-fits.md).

Simulated EEG amplitudes: 24 subjects x 2 conditions x 20 trials, 32 electrodes; the condition effect
is 1 microvolt at electrodes E01-E08 and 0 elsewhere; each subject has its own intercept (SD 2) and
condition effect (SD 0.5), trial noise SD 3. Run with ``python examples/mass_univariate.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from bayeslmm import fit_many


def simulate(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subjects, trials, electrodes = 24, 20, 32
    frame = pd.DataFrame(
        {
            "subject": np.repeat(np.arange(subjects), 2 * trials),
            "condition": np.tile(np.repeat(["control", "target"], trials), subjects),
        }
    )
    target = (frame["condition"] == "target").to_numpy()
    for e in range(1, electrodes + 1):
        intercept = rng.normal(0, 2, subjects)[frame["subject"]]
        slope = rng.normal(1.0 if e <= 8 else 0.0, 0.5, subjects)[frame["subject"]]
        frame[f"E{e:02d}"] = intercept + slope * target + rng.normal(0, 3, len(frame))
    return frame


if __name__ == "__main__":
    data = simulate()
    electrodes = [c for c in data.columns if c.startswith("E")]
    started = time.perf_counter()
    many = fit_many("~ condition + (condition | subject)", data, electrodes, random_seed=7)
    print(f"{len(electrodes)} fits of {len(data)} rows in {time.perf_counter() - started:.1f} s\n")
    print(many)
    effect = many.coefs.query("term == 'condition[target]'").set_index("response")
    excludes = (effect["2.5_ci"] > 0) | (effect["97.5_ci"] < 0)
    print("\nElectrodes whose 95% interval of the condition effect excludes 0:", ", ".join(effect.index[excludes]))
    for response, messages in many.warnings.items():
        print(f"{response}: {'; '.join(messages)}")
