"""Sphinx configuration: the sparsejax documentation site (built offline, warnings as errors).

Build: `python -m sphinx -W -b html docs docs/_build/html` (also run by tests/test_docs.py).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import sparsejax  # noqa: E402

project = "sparsejax"
author = "The sparsejax Authors"
copyright = "2026, The sparsejax Authors"  # noqa: A001
release = sparsejax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"          # notebooks are rendered from their saved outputs
nb_merge_streams = True
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "frontier/**/table.md", "**/scratch_run", "resnet_sparsity/table.md",
                    "resnet_sparsity_coupled/table.md",
                    "notebooks/build_notebooks.py", "**/.ipynb_checkpoints"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"            # signatures stay readable; the docstrings give the types
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True             # NamedTuple attributes are documented once
suppress_warnings = ["myst.header"]   # the README fragments start below level 1

html_theme = "alabaster"
html_title = f"sparsejax {release}"
# no intersphinx and no remote assets: the build works offline
