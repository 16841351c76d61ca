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
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"          # notebooks are rendered from their saved outputs
nb_merge_streams = True
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "api/_template.md", "frontier/**/table.md", "**/scratch_run", "resnet_sparsity/table.md",
                    "resnet_sparsity_coupled/table.md",
                    "notebooks/build_notebooks.py", "**/.ipynb_checkpoints"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"     # types in the argument lists, signatures stay short
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autosummary_generate = False
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True             # NamedTuple attributes are documented once
suppress_warnings = ["myst.header"]   # the README fragments start below level 1

html_theme = "sphinx_book_theme"  # as optax's and flax's sites
html_title = f"sparsejax {release}"
html_theme_options = {"show_toc_level": 2, "home_page_in_toc": True, "use_download_button": False,
                      "use_fullscreen_button": False}

# One API page per public module (api/<module>.md): a summary table of what it exports
# (its __all__) and the entries, written here from the package itself so they cannot drift.
API_MODULES = {
    "Core": ["optimizers", "prox", "penalties", "registry", "transforms", "masking", "controller", "selection",
             "pruning", "patterns", "pattern_prox", "dst", "ste", "magnitudes", "rvsm", "activity", "lses", "records"],
    "Training": ["train", "gan", "dbn", "runloop"],
    "Analysis": ["metrics", "compaction", "structure", "sample_quality"],
    "Data and models": ["data", "models", "plotting"],
}


def _write_api_pages() -> None:
  import importlib
  import inspect
  here = os.path.dirname(os.path.abspath(__file__))
  os.makedirs(os.path.join(here, "api"), exist_ok=True)
  for modules in API_MODULES.values():
    for short in modules:
      name = f"sparsejax.{short}"
      module = importlib.import_module(name)
      entries = [(n, getattr(module, n)) for n in getattr(module, "__all__", [])]
      entries = [(n, obj) for n, obj in entries if inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj)]
      lines = [f"# `{name}`", "", "```{eval-rst}", f".. automodule:: {name}", "   :no-members:", "",
               f".. currentmodule:: {name}", "", ".. autosummary::", "   :nosignatures:", ""]
      lines += [f"   {n}" for n, _ in entries]
      lines.append("")
      for n, obj in entries:
        if inspect.isclass(obj):
          lines += [f".. autoclass:: {n}", "   :members:", ""]
        else:
          lines += [f".. autofunction:: {n}", ""]
      lines += ["```", ""]
      text = "\n".join(lines)
      path = os.path.join(here, "api", f"{short}.md")
      if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
          f.write(text)


_write_api_pages()
# no intersphinx and no remote assets: the build works offline
