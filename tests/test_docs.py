"""The Sphinx site in docs/ builds without a single warning, and has the pages it promises.

``python -m sphinx -W --keep-going -b html docs <tmp>``: markdown pages through myst-parser, the API
reference from the docstrings (autodoc + napoleon). A docstring that renders with a warning fails
here, with Sphinx's message naming the object.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["index", "getting-started", "pymer4", "syntax", "glmm", "priors", "interpreting", "model", "pooling",
         "comparison", "many-fits", "plots", "cli", "api"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs_html")
    env = dict(os.environ, MPLBACKEND="Agg")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    return result, out, time.perf_counter() - started


def test_docs_build_without_warnings(site):
    result, _, seconds = site
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert seconds < 120, f"the docs build took {seconds:.0f} s; it should take well under a minute"


def test_docs_pages(site):
    result, out, _ = site
    assert result.returncode == 0
    for page in PAGES:
        assert (out / f"{page}.html").is_file(), f"docs/{page}.md was not built"
    api = (out / "api.html").read_text()
    for name in ["bayeslmm.Lmer", "bayeslmm.Lm2", "bayeslmm.lrt", "bayeslmm.Prior", "bayeslmm.load_dataset",
                 "bayeslmm.simulate_simpson", "bayeslmm.plots.plot_group_fits",
                 "bayeslmm.results.frequentist.FrequentistResult", "bayeslmm.DataError"]:
        assert f'id="{name}' in api, f"{name} is missing from the API reference"
    assert (out / "_images" / "group_fits.png").is_file(), "the plots gallery lost its images"


def test_docs_index_links_every_page():
    index = (DOCS / "index.md").read_text()
    for page in PAGES[1:]:
        assert f"({page}.md" in index, f"docs/index.md does not link {page}.md"
    assert "../README.md" in index and "../BENCHMARKS.md" in index
