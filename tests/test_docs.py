"""The docs: docstring examples run, every public callable has a docstring, every python block of the
README and the docs site runs on its own, and the site builds offline with warnings as errors."""

import doctest
import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every module whose docstrings carry examples.
DOCTEST_MODULES = ["sparsejax.prox", "sparsejax.penalties", "sparsejax.registry", "sparsejax.transforms",
                   "sparsejax.optimizers", "sparsejax.masking", "sparsejax.pruning", "sparsejax.controller",
                   "sparsejax.selection", "sparsejax.rvsm", "sparsejax.records", "sparsejax.compaction"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0


def test_every_public_prox_and_transform_has_math_and_an_example():
  from sparsejax import registry
  for name in registry.names():
    doc = registry.get(name).prox.__doc__
    assert ".. math::" in doc and ">>>" in doc and "References:" in doc, name


def _public_modules():
  import sparsejax
  for info in pkgutil.walk_packages(sparsejax.__path__, "sparsejax."):
    if not any(part.startswith("_") for part in info.name.split(".")):
      yield info.name


def test_every_public_callable_has_a_docstring():
  """Like optax's docs coverage check: each public function, class and public method says what it is."""
  missing = []
  for name in _public_modules():
    module = importlib.import_module(name)
    for attr, obj in vars(module).items():
      if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
        continue
      if getattr(obj, "__module__", None) != name:
        continue
      doc = (obj.__doc__ or "").strip()
      if not doc or (inspect.isclass(obj) and doc.startswith(attr + "(")):  # a dataclass's generated signature
        missing.append(f"{name}.{attr}")
      if inspect.isclass(obj):
        missing += [f"{name}.{attr}.{m}" for m, f in vars(obj).items()
                    if not m.startswith("_") and inspect.isfunction(f) and not (f.__doc__ or "").strip()]
  assert not missing, f"public callables without a docstring: {missing}"


def _code_blocks():
  """(page, line, code) of every ```python block in README.md and the docs site, except those marked cluster."""
  pages = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
  for page in pages:
    text = page.read_text()
    for match in re.finditer(r"(<!--[^>]*-->\s*)?```python\n(.*?)```", text, re.S):
      if match.group(1) and "cluster" in match.group(1):
        continue
      yield pytest.param(match.group(2), id=f"{page.relative_to(ROOT)}:{text[:match.start()].count(chr(10)) + 1}")


def test_readme_and_docs_have_code_blocks_and_only_cluster_ones_are_skipped():
  blocks = list(_code_blocks())
  assert sum(b.id.startswith("README.md") for b in blocks) >= 2
  marked = [p for p in (ROOT / "docs").rglob("*.md") if "<!-- cluster" in p.read_text()]
  for page in marked:  # a cluster marker stands right before its block
    assert re.search(r"<!-- cluster[^>]*-->\s*```python", page.read_text()), page


@pytest.mark.integration
@pytest.mark.parametrize("code", list(_code_blocks()))
def test_code_block_runs_on_its_own(code, tmp_path):
  """Each block, pasted alone into a fresh interpreter (in an empty folder), runs without error."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]


@pytest.mark.integration
def test_sphinx_site_builds_offline_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_nb")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", str(ROOT / "docs"),
                        str(tmp_path / "html")], capture_output=True, text=True, env=env, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-4000:]
  for page in ("index", "api", "api/prox", "api/compaction", "getting_started", "training", "penalties", "methods",
               "architecture", "results", "notebooks/quickstart"):
    assert (tmp_path / "html" / f"{page}.html").exists(), page
  api = (tmp_path / "html" / "api" / "prox.html").read_text()
  assert "sparsejax.prox.tl1" in api and "math notranslate" in api and "autosummary" in api
