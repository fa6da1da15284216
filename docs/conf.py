"""Sphinx configuration for the greenflow documentation (``./dev docs`` builds it).

The pages are Markdown (MyST), so that they read like the README and their
```python blocks are runnable programs (``tests/test_docs_examples.py`` runs
every one). The reference parts come from the docstrings through autodoc, on
the public names only (``greenflow``, ``greenflow.tls``, ``greenflow.testing``).
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the greenflow in this checkout, even if another is installed
sys.path.insert(0, str(HERE / "_ext"))

import greenflow  # noqa: E402 - after the path is set

project = "greenflow"
author = "the greenflow authors"
copyright = "the greenflow authors"
release = greenflow.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings use Args: / Returns: / Raises: sections
    "myst_parser",
    "commandhelp",  # the command line page shows the real --help texts
]

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples"]
myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]  # the contract page lists calls as terms and definitions

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"greenflow {release}"
