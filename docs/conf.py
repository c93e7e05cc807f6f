"""Sphinx configuration: the bayeslmm documentation (markdown pages via MyST, API from docstrings).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (the test suite does this in
``tests/test_docs.py``, with warnings as errors).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not
os.environ.setdefault("MPLBACKEND", "Agg")

import bayeslmm  # noqa: E402

project = "bayeslmm"
author = "bayeslmm contributors"
copyright = "2026, bayeslmm contributors"
version = release = bayeslmm.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: GitHub-style anchors for "page.md#heading" links, and a few extensions for tables and notes.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# autodoc + napoleon (numpydoc-style docstrings)
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes" as a field list: no duplicates of documented properties
napoleon_use_rtype = False
napoleon_preprocess_types = False

html_theme = "alabaster"
html_title = f"bayeslmm {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Bayesian linear mixed models with lme4 formulas and pymer4-style results",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}


# Pages link to files outside docs/ (../README.md, ../BENCHMARKS.md, ../examples/...) with relative
# links, which work when the markdown is read on GitHub. Sphinx cannot resolve them as documents, so
# they become download links here (the file is copied into the built site), anchors dropped.
_OUTSIDE_LINK = re.compile(r"\]\(\.\./(?P<path>[^)#\s]+)(?:#[^)\s]*)?\)")


def _outside_links_as_downloads(app, docname, source):
    def replace(match):
        path = match.group("path")
        if (ROOT / path).is_file():
            return f"](path:../{path})"
        return match.group(0)  # let Sphinx report a link to a file that does not exist

    source[0] = _OUTSIDE_LINK.sub(replace, source[0])


_PROPERTY_DOCSTRINGS: dict[str, list[str]] = {}


def _remember_property_docstring(app, what, name, obj, options, lines):
    """Before napoleon: keep the docstring of a property as written."""
    if what in ("property", "attribute"):
        _PROPERTY_DOCSTRINGS[name] = list(lines)


def _restore_property_docstring(app, what, name, obj, options, lines):
    """After napoleon: put it back.

    napoleon reads the first line of a property's docstring as an inline ``type: description``, so
    "Fixed effects: ``Estimate`` (posterior mean), ..." would render as a type "Fixed effects". bayeslmm's
    property docstrings are plain sentences (the type comes from the annotation), so they are shown
    as written.
    """
    original = _PROPERTY_DOCSTRINGS.pop(name, None)
    if what in ("property", "attribute") and original is not None:
        lines[:] = original


def setup(app):
    app.connect("source-read", _outside_links_as_downloads)
    app.connect("autodoc-process-docstring", _remember_property_docstring, priority=400)  # napoleon: 500
    app.connect("autodoc-process-docstring", _restore_property_docstring, priority=600)
