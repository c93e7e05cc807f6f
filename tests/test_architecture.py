"""The package's structure: layers without cycles, and a start-up that loads only what it needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["pymc", "pytensor", "arviz", "arviz_stats", "arviz_plots", "matplotlib", "numba", "bambi"]


def test_layers_contract_is_kept():
    """import-linter: io > models > analysis > plots > results > engines > spec > datasets > errors."""
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / ".importlinter")) == 0


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded by ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_bayeslmm_loads_no_heavy_dependency():
    loaded = _modules_after("import bayeslmm")
    assert not loaded & set(HEAVY + ["pandas", "scipy", "xarray", "formulae"])


def test_command_line_help_loads_no_heavy_dependency():
    loaded = _modules_after("from bayeslmm.io.cli import build_parser; build_parser().format_help()")
    assert not loaded & set(HEAVY + ["pandas", "scipy", "xarray", "formulae"])


def test_importing_the_models_loads_no_heavy_dependency():
    """numba and the samplers load when a Bayesian fit first needs them, not when a model class is
    imported (REML fits, Lm and Lm2 never need them)."""
    loaded = _modules_after("from bayeslmm import Lmer, Lm, Lm2, compare, lrt, power, fit_many, load_dataset")
    assert not loaded & set(HEAVY + ["formulae", "nutpie"])


def test_reml_fit_loads_neither_numba_nor_a_sampler():
    code = (
        "from bayeslmm import Lmer, load_dataset\n"
        "m = Lmer('Reaction ~ Days + (Days | Subject)', load_dataset('sleepstudy'))\n"
        "m.fit_frequentist(); str(m.frequentist.coefs)"
    )
    assert not _modules_after(code) & set(HEAVY + ["nutpie"])


@pytest.mark.slow
def test_collapsed_fit_loads_neither_pymc_nor_arviz_nor_matplotlib():
    code = (
        "from bayeslmm import Lmer, load_dataset\n"
        "m = Lmer('Reaction ~ Days + (Days | Subject)', load_dataset('sleepstudy'))\n"
        "m.fit(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)\n"
        "str(m.coefs); str(m.summary())"
    )
    loaded = _modules_after(code)
    assert not loaded & {"pymc", "pytensor", "arviz", "arviz_stats", "arviz_plots", "matplotlib", "bambi"}


def test_no_import_cycles():
    """No module imports, directly or through others, a module that imports it (TYPE_CHECKING aside)."""
    import grimp

    graph = grimp.build_graph("bayeslmm", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported != "bayeslmm" and graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, cycles
